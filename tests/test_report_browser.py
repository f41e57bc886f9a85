"""The HTML report in a real browser: headless Chromium renders it from disk, every figure decodes.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it). Part of
``make test``; skipped without chromium except in CI (``CI`` set), where a missing browser fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench.report import build_report

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

# Runs in the page once it has loaded: how many <img> there are and how many decoded.
PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement('pre');
  out.id = 'twinbench-probe';
  out.textContent = `IMAGES ${imgs.length} DECODED ${ok} WIDTHS ${imgs.map(i => i.naturalWidth).join(',')}`;
  document.body.appendChild(out);
});
</script>
"""

if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI: chromium is not installed (.ci/run installs it with apt-get install -y chromium)")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return build_report([FIXTURES / "repeat-a"], out)


def test_every_image_decodes_in_chromium(report, tmp_path):
    # A copy with the probe appended: the DOM dump then says how many images decoded.
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri(), profile=tmp_path / "profile1")
    match = re.search(r"IMAGES (\d+) DECODED (\d+) WIDTHS ([\d,]*)", dom.stdout)
    assert match, dom.stderr[-2000:]
    images, decoded = int(match[1]), int(match[2])
    expected = report.read_text().count("<img ")
    assert images == expected >= 8  # summary has none; training, parity, performance, residuals have them
    assert decoded == images, f"only {decoded} of {images} images decoded: widths {match[3]}"


def test_screenshot_shows_the_report(report, tmp_path):
    shot = tmp_path / "report.png"
    out = chromium(f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", report.as_uri(),
                   profile=tmp_path / "profile2")
    assert shot.is_file() and shot.stat().st_size > 50_000, out.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        # Not a blank page: many distinct colours (figures, tables, text).
        colours = im.convert("RGB").resize((320, 1000)).getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 500
    keep = Path(tempfile.gettempdir()) / "twinbench-report-screenshot.png"
    shutil.copy(shot, keep)  # for a person to look at
