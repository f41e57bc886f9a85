"""Residual ratios ||F(x)|| / ||shortcut(x)||: both workers, one bundle, the same numbers.

The TF side reads each residual add's two inputs from a sub-model, the torch side calls the
blocks' ``branches``: two independent readings of the same quantity, so their agreement checks
both (and that F and the shortcut are not swapped: the ratio is not symmetric)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.dataset import build_manifest
from bench.residuals import measure_stages, summarise, unit_summaries, validation_images
from bench.runner import WorkerConfig
from bench.spec import build_spec
from bench.weights import random_bundle
from tests.data_fixtures import make_class_folder

QUIET = WorkerConfig(quiet=True)


def test_summary_of_per_image_norms():
    s = summarise("2a", "2a", np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    assert s["ratios"] == [0.5, 1.0, 1.5, 2.0]
    assert s["ratio_median"] == 1.25 and s["ratio_q1"] == 0.875 and s["ratio_q3"] == 1.625
    assert s["ratio_mean"] == 1.25 and s["branch_norm_mean"] == 2.5 and s["shortcut_norm_mean"] == 2.0


def test_unit_summaries_feed_batches_and_join_each_units_images_in_model_order():
    x_all = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) + 1  # images 1..5
    fed = []

    def unit_norms(x):
        fed.append(len(x))
        per_image = x.reshape(len(x))
        return {"2a": ("2a", per_image, np.full(len(x), 2.0)), "3a_m0": ("3a", 2 * per_image, per_image)}

    units = unit_summaries(x_all, unit_norms, batch=2)
    assert fed == [2, 2, 1]
    assert [(u["unit"], u["block"]) for u in units] == [("2a", "2a"), ("3a_m0", "3a")]
    assert units[0]["ratios"] == [0.5, 1.0, 1.5, 2.0, 2.5] and units[1]["ratios"] == [2.0] * 5


def test_validation_images_are_the_given_batch_or_the_sides_own_decoding_of_the_manifest(tmp_path):
    x = np.zeros((2, 4, 4, 3), np.float32)
    calls = []

    def load_images(manifest, split, indices, options):
        calls.append((len(manifest.labels(split)), split, list(indices), options.image_size))
        return np.ones((len(indices), options.image_size, options.image_size, 3), np.float32), None

    assert validation_images({}, {"x": x}, load_images) is x and calls == []
    build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5, seed=1) \
        .save(tmp_path / "manifest.json")
    args = {"manifest": str(tmp_path / "manifest.json"), "indices": [0, 2], "pipeline": {"image_size": 8}}
    got = validation_images(args, {}, load_images)
    assert got.shape == (2, 8, 8, 3) and calls == [(3, "validation", [0, 2], 8)]


@pytest.mark.parametrize("model", ["resnet50", pytest.param("resnet50_c3", marks=pytest.mark.slow)])
def test_both_frameworks_measure_the_same_ratios(tmp_path, model):
    """Both frameworks, two weight sets in one worker each (as twinbench run's before and after):
    the same ratios on both sides for each set, and each set its own."""
    spec = build_spec(model, 4, 64, "global")
    paths = {stage: tmp_path / f"{stage}.npz" for stage in ("before", "after")}
    for seed, path in enumerate(paths.values(), 3):
        random_bundle(spec, seed=seed).save(path)
    x = np.random.default_rng(3).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    margs = {"model": model, "classes": 4, "input_size": 64, "pooling": "global"}
    stages = measure_stages(margs, {stage: {"tf": p, "torch": p} for stage, p in paths.items()}, x=x, config=QUIET)
    before, after = ([u["ratios"] for u in stages[s]["tf"]["units"]] for s in paths)
    assert not np.allclose(before, after, rtol=1e-3)  # each stage measured its own weights
    for stage in paths:
        _check_same_ratios(spec, model, stages[stage], str(paths[stage]))


def _check_same_ratios(spec, model, out, path):
    tf_units, torch_units = out["tf"]["units"], out["torch"]["units"]
    assert out["tf"]["weights"] == out["torch"]["weights"] == path
    expected = 16  # 3 + 4 + 6 + 3 residual units in both models
    assert len(tf_units) == len(torch_units) == expected
    assert [u["unit"] for u in tf_units] == [u["unit"] for u in torch_units]
    if model == "resnet50":
        assert [u["unit"] for u in tf_units] == [b.id for b in spec.blocks]
    else:
        assert tf_units[0]["unit"] == "2_c3_block_m0" and tf_units[-1]["block"] == "5"
    for a, b in zip(tf_units, torch_units):
        assert len(a["ratios"]) == 3
        np.testing.assert_allclose(a["ratios"], b["ratios"], rtol=1e-4)
        assert a["branch_norm_mean"] != pytest.approx(a["shortcut_norm_mean"], rel=1e-3)
