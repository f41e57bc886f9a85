"""The same records give the same report: ``twinbench report`` on the committed fixture records
writes a ``report.md`` equal to a committed golden copy in ``tests/fixtures/report-golden/``:
``repeat-a.md`` from ``records/repeat-a`` alone, ``repeat-a+repeat-b.md`` from both repeats (with two
runs, the report's sections read mostly the latest run's records, so the single-run case is what
notices a change to repeat-a).

Accept a deliberate change to the report with::

    TWINBENCH_ACCEPT_GOLDEN=1 python -m pytest --framework none tests/test_report_golden.py
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures" / "records"
GOLDENS = TESTS / "fixtures" / "report-golden"
# The one line of report.md that depends on when it was written (bench.report.build_report's
# subtitle ends "; written YYYY-MM-DD HH:MM"); nothing else is normalised.
WRITTEN = re.compile(r"; written \d{4}-\d{2}-\d{2} \d{2}:\d{2}$", re.MULTILINE)


def _normalise(text: str) -> str:
    return WRITTEN.sub("; written <time>", text)


@pytest.mark.parametrize("runs", [("repeat-a",), ("repeat-a", "repeat-b")], ids=["repeat-a", "repeat-a+repeat-b"])
def test_the_same_records_give_the_same_report(tmp_path, runs):
    """Regenerates report.md from the fixture records and compares it line by line with the golden.

    Normalised (on both sides): only the subtitle's ``; written YYYY-MM-DD HH:MM`` timestamp, which
    becomes ``; written <time>``. Nothing in report.md is machine- or path-specific otherwise: the
    run names, commands and data paths it shows come from the committed records, not from this
    checkout (the records are passed by relative path, with the repository as working directory).
    """
    golden = GOLDENS / ("+".join(runs) + ".md")
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "bench.cli", "report", *(f"tests/fixtures/records/{name}" for name in runs),
         "-o", str(out), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    got = (out / "report.md").read_text()
    if os.environ.get("TWINBENCH_ACCEPT_GOLDEN") == "1":
        golden.write_text(got)
    want_lines = _normalise(golden.read_text()).splitlines()
    got_lines = _normalise(got).splitlines()
    if got_lines != want_lines:
        first = next((i for i, (w, g) in enumerate(zip(want_lines, got_lines)) if w != g),
                     min(len(want_lines), len(got_lines)))
        diff = list(difflib.unified_diff(want_lines, got_lines, fromfile=str(golden.relative_to(REPO)),
                                         tofile="regenerated report.md", lineterm="", n=1))
        shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
        raise AssertionError(
            f"report.md differs from the golden copy, first at line {first + 1} "
            f"(golden {len(want_lines)} lines, regenerated {len(got_lines)}):\n{shown}\n"
            "If the change is intended, rerun with TWINBENCH_ACCEPT_GOLDEN=1 and commit the golden.")
