"""resnet50_c3 through the real workers: counts, names, shapes, equality, weight exchange.

64 px with global pooling and batch 2: the same code paths as 224 px at a tenth of the cost.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench.runner import WorkerConfig, run_worker
from bench.spec import build_spec
from bench.weights import WeightBundle, random_bundle

ARGS = {"model": "resnet50_c3", "classes": 10, "input_size": 64, "pooling": "global"}
SPEC = build_spec(**{k: ARGS[k] for k in ("model", "classes", "input_size", "pooling")})
QUIET = WorkerConfig(quiet=True)
TWINBENCH = [sys.executable, "-m", "bench.cli"]


def max_rel(ref: np.ndarray, other: np.ndarray) -> float:
    """max |a - b| / max |ref|, as in tests/test_models.py."""
    return float(np.abs(ref.astype(np.float64) - other).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Both workers' forward pass on one random bundle (non-trivial BN statistics) and one batch."""
    path = tmp_path_factory.mktemp("c3") / "bundle.npz"
    random_bundle(SPEC, seed=11).save(path)
    x = np.random.default_rng(11).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    return {fw: run_worker(fw, "forward", {**ARGS, "weights": str(path)}, arrays={"x": x}, config=QUIET)
            for fw in ("tf", "torch")}


def test_both_count_the_spec_parameters(outputs):
    for fw in ("tf", "torch"):
        assert outputs[fw].result["params"] == SPEC.param_counts(), fw


def test_both_have_the_spec_layers_in_order(outputs):
    names = [layer.name for layer in SPEC.layers()]
    assert outputs["tf"].result["weighted_layers"] == names
    assert outputs["torch"].result["weighted_layers"] == names
    layers = outputs["tf"].result["layers"]
    # Activations, adds and concats carry stable names from the spec's prefixes.
    for name in ("2_c3_block_cv1_relu", "2_c3_block_m2_relu1", "2_c3_block_m2_add", "2_c3_block_m2_relu4",
                 "4_c3_block_m5_relu4", "4_c3_block_concat", "5_c3_block_cv3_relu"):
        assert name in layers, name
    assert not any(name.startswith(("activation_", "add_", "concatenate")) for name in layers)


def test_both_produce_the_spec_shapes(outputs):
    expected = {k: list(v) for k, v in SPEC.shapes().items() if k not in ("conv1", "logits")}
    assert expected["5"] == [2, 2, 2048]
    for fw in ("tf", "torch"):
        assert outputs[fw].result["shapes"] == expected, fw


def test_same_bundle_same_function_float32(outputs):
    tf_out, torch_out = outputs["tf"].arrays, outputs["torch"].arrays
    assert tf_out["logits"].shape == (2, 10) and tf_out["logits"].std() > 0
    assert not np.allclose(tf_out["logits"][0], tf_out["logits"][1])  # the two images differ
    for key in ("features", "logits", "probs"):
        assert max_rel(tf_out[key], torch_out[key]) <= 1e-5, key


def test_tf_bundle_torch_bundle_round_trip_is_bit_exact(tmp_path):
    keras_init, via_torch = tmp_path / "keras.npz", tmp_path / "torch.npz"
    run_worker("tf", "export", {**ARGS, "seed": 2, "out": str(keras_init)}, config=QUIET)
    run_worker("torch", "export", {**ARGS, "weights": str(keras_init), "out": str(via_torch)}, config=QUIET)
    first, second = WeightBundle.load(keras_init), WeightBundle.load(via_torch)
    first.check(SPEC)
    assert first.equal(second)
    assert list(first.arrays) == list(SPEC.weight_shapes())
    # Keras' own initialisers ran: kernels vary, BN variance starts at 1, no bias on cv convs.
    assert first.arrays["3_c3_block_m1_conv2/kernel"].std() > 0
    assert np.all(first.arrays["3_c3_block_cv2_bn/moving_variance"] == 1)
    assert "3_c3_block_cv2_conv/bias" not in first.arrays


@pytest.mark.slow  # ~27 s of CLI processes; the C3 mapping itself: the round-trip tests above
def test_cli_converts_resnet50_c3_through_pt_and_weights_h5(tmp_path):
    original = random_bundle(SPEC, seed=4)
    chain = [tmp_path / "a.npz", tmp_path / "b.pt", tmp_path / "c.weights.h5", tmp_path / "d.npz"]
    original.save(chain[0])
    opts = ["--model", "resnet50_c3", "--classes", "10", "--input-size", "64", "--pooling", "global", "--quiet"]
    for src, dst in zip(chain, chain[1:]):
        done = subprocess.run([*TWINBENCH, "weights", "convert", str(src), str(dst), *opts],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert WeightBundle.load(chain[-1]).equal(original)
    # The same .pt read as resnet50 is refused in one line, with nothing written.
    wrong = subprocess.run([*TWINBENCH, "weights", "convert", str(chain[1]), str(tmp_path / "e.npz"),
                            "--classes", "10", "--input-size", "64", "--pooling", "global", "--quiet"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr
    assert not (tmp_path / "e.npz").exists()
