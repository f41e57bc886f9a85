"""`twinbench data check`: both pipelines in their real workers, every input format, compared
image by image; and the verdict logic on planted differences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.cli import main
from bench.datacheck import ACCURATE_TOLERANCE, summarize
from bench.dataset import SPLITS, PipelineOptions, build_manifest, load_manifest
from tests.data_fixtures import make_format_zoo


@pytest.fixture(scope="module")
def zoo_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    files = make_format_zoo(root / "data")
    out = root / "manifest.json"
    assert main(["manifest", str(root / "data"), "-o", str(out), "--validation-split", "0.3", "--seed", "4"]) == 0
    return out, files


def run_check(manifest_path, tmp_path, *extra):
    out = tmp_path / "check.json"
    code = main(["data", "check", str(manifest_path), "--json", str(out), "--quiet", "--threads", "1",
                 "--batch-size", "5", "--workers", "1", *extra])
    return code, json.loads(out.read_text())


def test_every_format_identical_in_both_pipelines(zoo_manifest, tmp_path):
    """Accurate decoder at a size that scales some images up and others down, with caffe
    preprocessing: every image of every format within tolerance, labels equal. The seed decoder
    differs on JPEGs only. (One run: each check starts both workers.)"""
    manifest_path, files = zoo_manifest
    code, report = run_check(manifest_path, tmp_path, "--image-size", "45", "--decoder", "both",
                             "--preprocessing", "caffe")
    assert code == 0 and report["ok"] and report["pipeline"]["preprocessing"] == "caffe"
    manifest = load_manifest(manifest_path)
    jpeg = {e.path for e in manifest.files if (manifest.root / e.path).read_bytes().startswith(b"\xff\xd8\xff")}
    assert len(jpeg) >= 6 and len(manifest.files) - len(jpeg) >= 10
    seen = 0
    for split in SPLITS:
        acc, seed = report["decoders"]["accurate"][split], report["decoders"]["seed"][split]
        assert acc["label_mismatches"] == 0 and seed["label_mismatches"] == 0
        assert acc["max_abs"] <= ACCURATE_TOLERANCE
        for path, gap in seed["per_image_max_abs"].items():
            assert (gap >= 1.0) if path in jpeg else (gap == acc["per_image_max_abs"][path])
            seen += 1
    assert seen == len(files)


def planted(manifest, gap: float, *, bad_label: bool = False):
    tf_arrays, torch_arrays = {}, {}
    for split in SPLITS:
        n, labels = len(manifest.entries(split)), manifest.labels(split)
        tf_arrays[f"labels_accurate_{split}"] = labels.copy()
        torch_arrays[f"labels_{split}"] = labels.copy()
        for k in ("max", "mean", "frac"):
            torch_arrays[f"{k}_accurate_{split}"] = np.zeros(n)
    torch_arrays["max_accurate_validation"][0] = gap
    if bad_label:
        torch_arrays["labels_training"][1] = (torch_arrays["labels_training"][1] + 1) % manifest.num_classes
    return summarize(manifest, PipelineOptions(), ("accurate",), tf_arrays, torch_arrays)


def test_verdict_fails_past_tolerance_or_on_a_label(zoo_manifest):
    manifest = load_manifest(zoo_manifest[0])
    assert planted(manifest, 0.004)["ok"]
    report = planted(manifest, 0.02)
    assert not report["ok"]
    assert report["decoders"]["accurate"]["validation"]["over_tolerance"] == [manifest.entries("validation")[0].path]
    report = planted(manifest, 0.0, bad_label=True)
    assert not report["ok"] and report["decoders"]["accurate"]["training"]["label_mismatches"] == 1


def test_check_refuses_a_changed_data_folder(tmp_path, capsys):
    root = tmp_path / "data"
    make_format_zoo(root)
    out = tmp_path / "m.json"
    build_manifest(root, validation_split=0.3, seed=4).save(out)
    (root / "cats" / "rgb.bmp").unlink()
    assert main(["data", "check", str(out), "--quiet"]) == 1  # before any worker starts
    err = capsys.readouterr().err
    assert "cats/rgb.bmp" in err and "missing" in err
