"""Both ResNet-50s, through their real workers: counts, names, shapes, equality, weight exchange;
and the third arm, the seed's Keras model on Keras 3's torch backend (``keras-torch``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.runner import WorkerConfig, run_worker
from bench.spec import build_spec
from bench.weights import WeightBundle, random_bundle, write_legacy_h5
from tests.test_spec import seed_weighted_names

SPEC = build_spec()
QUIET = WorkerConfig(quiet=True)
TWINBENCH = [sys.executable, "-m", "bench.cli"]


def max_rel(ref: np.ndarray, other: np.ndarray) -> float:
    """max |a - b| / max |ref|: the issue's metric."""
    return float(np.abs(ref.astype(np.float64) - other).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A random bundle (non-trivial BN statistics) whose head is scaled so the softmax is not
    saturated, and a batch of raw 0..255 images: the probabilities then carry information."""
    root = tmp_path_factory.mktemp("models")
    bundle = random_bundle(SPEC, seed=7)
    x = np.random.default_rng(7).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    path = root / "bundle.npz"
    bundle.save(path)
    probe = run_worker("torch", "forward", {"weights": str(path)}, arrays={"x": x}, config=QUIET)
    bundle.arrays["fc1000/kernel"] *= np.float32(4.0 / probe.arrays["logits"].std())
    bundle.save(path)
    return path, x


@pytest.fixture(scope="module")
def outputs(calibrated):
    path, x = calibrated
    return {fw: run_worker(fw, "forward", {"weights": str(path)}, arrays={"x": x}, config=QUIET)
            for fw in ("tf", "torch", "keras-torch")}


def test_both_count_the_seed_parameters(outputs):
    for fw in ("tf", "torch", "keras-torch"):
        assert outputs[fw].result["params"] == {"total": 25_636_712, "trainable": 25_583_592,
                                                "non_trainable": 53_120}, fw


def test_both_have_the_seed_layer_names(outputs):
    assert sorted(outputs["tf"].result["weighted_layers"]) == sorted(seed_weighted_names())
    # torch: every weighted module maps back to a canonical name, in the seed's order.
    assert outputs["torch"].result["weighted_layers"] == seed_weighted_names()
    # Keras on torch: the same Keras code, so the same layers in the same order.
    assert outputs["keras-torch"].result["layers"] == outputs["tf"].result["layers"]
    layers = outputs["tf"].result["layers"]
    assert layers[:6] == ["input_layer", "zero_padding2d", "conv1", "bn_conv1", "activation", "max_pooling2d"]
    assert layers[-3:] == ["avg_pool", "flatten", "fc1000"]


def test_both_produce_the_spec_shapes(outputs):
    expected = {k: list(v) for k, v in SPEC.shapes().items() if k not in ("conv1", "logits")}
    for fw in ("tf", "torch", "keras-torch"):
        assert outputs[fw].result["shapes"] == expected, fw


def test_same_bundle_same_function_float32(outputs):
    tf_out, torch_out = outputs["tf"].arrays, outputs["torch"].arrays
    probs = tf_out["probs"]
    assert probs.max() < 0.999 and probs.max(axis=1).min() > 1.5 / 1000  # not saturated, not uniform
    for key in ("features", "logits", "probs"):
        assert max_rel(tf_out[key], torch_out[key]) <= 1e-5, key


def test_keras_on_torch_is_the_same_function_float32(outputs):
    """The seed's Keras model on the torch backend against TF and against our port, one bundle:
    within the same 1e-5 as TF vs the port (measured here: features 5e-7 against the port)."""
    assert outputs["keras-torch"].result["backend"] == "torch" and outputs["tf"].result["backend"] == "tensorflow"
    kt = outputs["keras-torch"].arrays
    for ref in ("tf", "torch"):
        for key in ("features", "logits", "probs"):
            assert max_rel(outputs[ref].arrays[key], kt[key]) <= 1e-5, (ref, key)


def test_a_deliberate_difference_is_detected(calibrated, outputs):
    # torch's default BN epsilon (1e-5) instead of Keras' 1e-3: the equality test must fail.
    path, x = calibrated
    eps = run_worker("torch", "forward", {"weights": str(path), "align": {"bn_eps": 1e-5}},
                     arrays={"x": x}, config=QUIET)
    assert max_rel(outputs["tf"].arrays["logits"], eps.arrays["logits"]) > 1e-4


def test_tf_torch_tf_round_trip_is_bit_exact(tmp_path):
    keras_init = tmp_path / "keras.npz"
    via_torch = tmp_path / "torch.npz"
    back = tmp_path / "back.npz"
    args = {"classes": 4, "input_size": 64, "pooling": "global", "seed": 1}
    run_worker("tf", "export", {**args, "out": str(keras_init)}, config=QUIET)
    run_worker("torch", "export", {**args, "weights": str(keras_init), "out": str(via_torch)}, config=QUIET)
    run_worker("tf", "export", {**args, "weights": str(via_torch), "out": str(back)}, config=QUIET)
    first, second, third = (WeightBundle.load(p) for p in (keras_init, via_torch, back))
    assert first.equal(second) and first.equal(third)
    # Keras' own initialisers ran (not zeros): conv kernels vary, BN variance starts at 1.
    assert first.arrays["conv1/kernel"].std() > 0 and np.all(first.arrays["bn_conv1/moving_variance"] == 1)


def test_convert_through_pt_weights_h5_and_legacy_h5(tmp_path):
    small = build_spec(classes=4, input_size=64, pooling="global")
    original = random_bundle(small, seed=5)
    legacy = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    write_legacy_h5(original, legacy, small, weight_style="keras1")
    opts = ["--classes", "4", "--input-size", "64", "--pooling", "global", "--quiet"]
    chain = [legacy, tmp_path / "a.npz", tmp_path / "b.pt", tmp_path / "c.weights.h5", tmp_path / "d.npz"]
    for src, dst in zip(chain, chain[1:]):
        done = subprocess.run([*TWINBENCH, "weights", "convert", str(src), str(dst), *opts],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"wrote {dst}" in done.stdout
    assert WeightBundle.load(chain[-1]).equal(original)


def test_convert_refuses_a_mismatched_file_and_writes_nothing(tmp_path):
    legacy = tmp_path / "imagenet.h5"
    write_legacy_h5(random_bundle(SPEC, seed=2), legacy, SPEC)
    dst = tmp_path / "out.pt"
    done = subprocess.run([*TWINBENCH, "weights", "convert", str(legacy), str(dst), "--classes", "4", "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "fc1000" in done.stderr and "Traceback" not in done.stderr
    assert not dst.exists()


def test_convert_will_not_overwrite_without_force(tmp_path):
    src, dst = tmp_path / "a.npz", tmp_path / "b.npz"
    random_bundle(build_spec(classes=4, input_size=64, pooling="global")).save(src)
    dst.write_text("mine")
    done = subprocess.run([*TWINBENCH, "weights", "convert", str(src), str(dst)], capture_output=True, text=True)
    assert done.returncode == 2 and "--force" in done.stderr and dst.read_text() == "mine"


def test_cli_help_and_info():
    done = subprocess.run([*TWINBENCH, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "weights" in done.stdout and "info" in done.stdout
    info = subprocess.run([*TWINBENCH, "info"], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "tensorflow 2." in info.stdout and "torch 2." in info.stdout and "threads intra" in info.stdout
