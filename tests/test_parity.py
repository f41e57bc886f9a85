"""`twinbench parity`: the metric maths (framework-free), the aligned models passing every
default check, and each ablation failing the check it should at the block it should.

The worker runs use a 64 px input with global pooling, batch 2, float32, seed 0: one TF
reference, the aligned torch side, then each ablation alone (run_ablation_table). The first
failures asserted here were measured at this size (bench.parity.ABLATIONS records the 224 px
ones; only bn-variance's block moves with the size: its n/(n-1) grows as maps shrink).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bench import parity
from bench.errors import UserError
from bench.spec import build_spec

SMALL = dict(input_size=64, pooling="global", batch=2, dtype="float32", seed=0)


# ---- metrics ---------------------------------------------------------------------------------------
def test_compare_reports_max_errors_and_where():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], dtype=np.float32)
    other = ref.copy()
    other[1, 0] = 2.5
    m = parity.compare(ref, other)
    assert m["shape_ok"] and m["dtype_ok"] and m["nonfinite_ok"]
    assert m["max_abs"] == pytest.approx(0.5)
    assert m["max_rel"] == pytest.approx(0.5 / 4.0)  # max|a-b| / max|ref|, not elementwise
    assert m["where"]["index"] == [1, 0] and m["where"]["ref"] == 2.0 and m["where"]["other"] == 2.5


@pytest.mark.parametrize("other, reason", [
    (np.zeros((2, 3), np.float32), "shape (2, 3) != reference (2, 2)"),
    (np.zeros((2, 2), np.float64), "dtype float64 != reference float32"),
    (np.array([[np.nan, 0], [0, 0]], np.float32), "NaN positions differ"),
    (np.array([[np.inf, 0], [0, 0]], np.float32), "+inf positions differ"),
    (np.array([[-np.inf, 0], [0, 0]], np.float32), "-inf positions differ"),
])
def test_compare_fails_on_shape_dtype_and_nonfinite_masks(other, reason):
    cell = parity.judge(parity.compare(np.zeros((2, 2), np.float32), other), tol=1.0)
    assert not cell["ok"] and cell["reason"] == reason


def test_equal_nonfinite_masks_pass_and_zero_reference_is_handled():
    a = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert parity.judge(parity.compare(a, a.copy()), tol=0.0)["ok"]
    assert parity.compare(np.zeros(3), np.zeros(3))["max_rel"] == 0.0
    assert parity.compare(np.zeros(3), np.ones(3))["max_rel"] == math.inf


def test_group_and_parts_keep_small_kinds_visible():
    big = (np.full(4, 100.0), np.full(4, 100.0))
    small = (np.full(4, 1e-3), np.full(4, 1.1e-3))
    group = parity.compare_group({"big": big, "small": small})
    assert group["max_rel"] == pytest.approx(1e-4 / 100)  # one denominator for the group
    assert group["where"]["array"] == "small"
    parts = parity.compare_parts({"params": {"big": big}, "m": {"small": small}})
    assert parts["max_rel"] == pytest.approx(0.1) and parts["worst_part"] == "m"  # each kind its own
    assert parts["parts"] == {"params": 0.0, "m": pytest.approx(0.1)}


def test_first_failure_is_check_major_then_network_order():
    def cell(ok):
        return {"ok": ok, "max_rel": 0.0 if ok else 1.0, "tol": 0.5, "reason": None if ok else "x",
                "shape_ok": True, "dtype_ok": True, "nonfinite_ok": True}
    table = {"rows": ["stem", "2a", "3a"], "table": {
        "stem": {"forward": cell(True), "grad": cell(False)},
        "2a": {"forward": cell(True), "grad": cell(False)},
        "3a": {"forward": cell(False), "grad": cell(False)}}}
    fails = parity.failures(table, ["forward", "grad"])
    assert (fails[0]["check"], fails[0]["block"]) == ("forward", "3a")  # a gradient error flows back to stem
    assert parity.first_divergent(table, ["forward", "grad"]) == {"forward": "3a", "grad": "stem"}


def test_owners_and_trajectory_sample_cover_every_weight():
    spec = build_spec("resnet50", 10, 64, "global")
    owned = parity.weights_by_owner(spec)
    assert list(owned)[:2] == ["stem", "2a"] and list(owned)[-1] == "logits"
    assert sorted(k for keys in owned.values() for k in keys) == sorted(spec.weight_shapes())
    sample = parity.trajectory_sample(spec, per_tensor=64)
    assert len(sample["conv1/kernel"]) == 64 and sample["conv1/kernel"][-1] == 7 * 7 * 3 * 64 - 1
    assert len(sample["bn_conv1/gamma"]) == 64  # small tensors whole
    offsets = parity.sample_offsets(spec)
    assert offsets["conv1/bias"].start == offsets["conv1/kernel"].stop


def test_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="--checks speed: choose from forward, train, grad, step, trajectory"):
        parity.ParityConfig(checks=("speed",)).validate()
    with pytest.raises(UserError, match="--ablate decoder compares the data pipelines: it needs --manifest"):
        parity.ParityConfig(ablations=("decoder",)).validate()
    with pytest.raises(UserError, match="no such weight file"):
        parity.ParityConfig(weights=str(tmp_path / "nope.npz")).validate()
    with pytest.raises(UserError, match="at least 2 images"):
        parity.ParityConfig(batch=1).validate()


# ---- the real workers -------------------------------------------------------------------------------
NON_PIPELINE = tuple(n for n in parity.ABLATIONS if not parity.ABLATIONS[n].pipeline and n != "maxpool-pad")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """One TF reference; the aligned torch side with every default check; each ablation alone
    (maxpool-pad runs through the CLI test below)."""
    config = parity.ParityConfig(**SMALL, work_dir=str(tmp_path_factory.mktemp("parity")))
    from bench.runner import WorkerConfig
    return parity.run_ablation_table(config, WorkerConfig(quiet=True), NON_PIPELINE, stop_at_expected=True)


def test_default_parity_passes_every_check(table):
    base = table["results"]["baseline"]
    assert base["verdict"] == "pass", parity.format_table(base)
    assert base["columns"] == ["isolated", "forward", "train-iso", "train", "bn", "grad-iso", "grad", "adam", "sgd"]
    rows = base["rows"]
    assert rows[0] == "stem" and rows[-4:] == ["pool", "logits", "probs", "loss"] and len(rows) == 21
    # Keras recovers the logits from its softmax output: its loss is the exact cross-entropy.
    assert base["loss"]["keras_logits_recovered"]
    assert base["loss"]["torch"] == pytest.approx(base["loss"]["tf"], rel=1e-5)
    # Calibration left the probabilities far from one-hot, so the checks say something.
    assert base["calibration"]["max_prob"] < 0.5
    # KerasAdam = Keras' Adam and SGD = SGD, from identical gradients: a few float32 ulps.
    for column in ("adam", "sgd"):
        worst = max(base["table"][r][column]["max_rel"] for r in rows if base["table"][r][column])
        assert worst < 5e-7, column
    # Isolated blocks agree far more tightly than the chained network.
    iso = max(base["table"][r]["isolated"]["max_rel"] for r in rows if base["table"][r]["isolated"])
    chained = max(base["table"][r]["forward"]["max_rel"] for r in rows if base["table"][r]["forward"])
    assert iso < 1e-5 and chained > 3 * iso
    json.dumps(base, allow_nan=False)  # regression tracking reads it: strict JSON


@pytest.mark.parametrize("name, check, block", [
    ("bn-eps", "isolated", "2a"),  # stem BN sees variances ~1e4: eps 1e-5 vs 1e-3 is invisible there
    ("bn-momentum", "bn", "stem"),  # outputs identical; only the moving statistics differ
    ("bn-variance", "bn", "stem"),  # n/(n-1) with n = 2*32*32 at 64 px (at 224 px the stem is too wide)
    ("adam-eps", "adam", "stem"),
    ("stride-3x3", "isolated", "3a"),  # 2a has stride 1: v1 and v1.5 agree there
])
def test_each_ablation_fails_its_check_at_its_block(table, name, check, block):
    summary = table["ablations"][name]
    first = summary["first_failure"]
    assert (first["check"], first["block"]) == (check, block), first
    assert summary["detected"]


def test_sgd_is_the_control_for_adam_eps(table):
    result = table["results"]["adam-eps"]
    assert all(result["table"][r]["sgd"]["ok"] for r in result["rows"] if result["table"][r]["sgd"])
    assert not all(result["table"][r]["adam"]["ok"] for r in result["rows"] if result["table"][r]["adam"])


def test_cli_exit_1_names_first_block_and_check(tmp_path):
    """maxpool-pad (torchvision's padded stem pool): isolated stem output 16x16 instead of 15x15;
    isolated blocks after it still pass, chained ones cannot even be compared."""
    out = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "parity", "--input-size", "64", "--pooling", "global",
                           "--checks", "forward", "--ablate", "maxpool-pad", "--no-calibrate", "--json", str(out),
                           "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("twinbench: error: parity failed: first divergent block stem, check isolated: shape")
    result = json.loads(out.read_text())
    assert result["verdict"] == "fail" and result["ablation"] == {"maxpool-pad": parity.ABLATIONS["maxpool-pad"].description}
    assert result["table"]["2a"]["isolated"]["ok"] and not result["table"]["2a"]["forward"]["shape_ok"]
    assert "FAIL: first divergent block stem, check isolated" in proc.stdout


# ---- slow: float64, the trajectory, real images ---------------------------------------------------------
@pytest.mark.slow
def test_float64_parity_is_tight_everywhere(tmp_path):
    config = parity.ParityConfig(**{**SMALL, "dtype": "float64"}, work_dir=str(tmp_path))
    from bench.runner import WorkerConfig
    result = parity.run_parity(config, WorkerConfig(quiet=True))
    assert result["verdict"] == "pass", parity.format_table(result)
    worst = parity.summarize(result)["worst"]
    # float64 pins every check, gradients included (float32 gradients cannot: ReLU flips).
    assert worst["grad"] < 1e-10 and worst["grad-iso"] < 1e-11 and worst["adam"] < 1e-14


@pytest.mark.slow
def test_trajectory_curve_and_bn_momentum_divergence(tmp_path):
    from bench.runner import WorkerConfig
    config = parity.ParityConfig(**{**SMALL, "dtype": "float64"}, checks=("trajectory",), steps=3,
                                 work_dir=str(tmp_path))
    table = parity.run_ablation_table(config, WorkerConfig(quiet=True), ("bn-momentum",))
    base = table["results"]["baseline"]
    assert base["verdict"] == "pass", parity.format_table(base)
    curve = base["trajectory"]
    assert curve["steps"] == 3 and len(curve["param_rel"]) == 3 and curve["agree_steps"] == 3
    assert max(curve["loss_rel"]) < 1e-10 and max(curve["bn_rel"]) < 1e-12
    assert curve["loss_tf"][0] != curve["loss_tf"][2]  # it trains
    # BN momentum 0.1 leaves the loss alone (training mode uses batch statistics) but moves the
    # moving statistics ten times faster.
    ablated = table["results"]["bn-momentum"]["trajectory"]
    assert max(ablated["loss_rel"]) < 1e-10 and min(ablated["bn_rel"]) > 1e-4


@pytest.mark.slow
def test_manifest_batch_and_pipeline_ablations(tmp_path):
    """Real (demo) JPEGs at 64 px: both pipelines give bit-identical batches; TF's fast IDCT and
    torchvision's antialiased resize each fail the input row, and only it."""
    from bench import demo
    from bench.manifest import build_manifest
    from bench.runner import WorkerConfig
    data = demo.write_demo(tmp_path / "demo", seed=0, counts={"Bananaquit": 6, "Black Skimmer": 6,
                                                              "Black Throated Bushtiti": 6, "Cockatoo": 6})
    build_manifest(data).save(tmp_path / "manifest.json")
    config = parity.ParityConfig(**SMALL, checks=("forward",), manifest=str(tmp_path / "manifest.json"),
                                 work_dir=str(tmp_path / "work"))
    table = parity.run_ablation_table(config, WorkerConfig(quiet=True), ("decoder", "resize-antialias"))
    base = table["results"]["baseline"]
    assert base["verdict"] == "pass" and base["rows"][0] == "input"
    assert base["table"]["input"]["input"]["max_abs"] == 0.0  # accurate decoders: bit for bit
    assert base["inputs"]["source"] == "manifest" and len(base["inputs"]["files"]) == 2
    for name in ("decoder", "resize-antialias"):
        result = table["results"][name]
        assert (result["first_failure"]["check"], result["first_failure"]["block"]) == ("input", "input")
        assert len(result["failures"]) == 1  # the models read the same (aligned) batch
    assert table["verdict"] == "pass"
