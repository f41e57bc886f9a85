"""`twinbench parity`: the metric maths (framework-free), the aligned models passing every
default check, and each ablation failing the check it should at the block it should.

The worker runs use a 64 px input with global pooling, batch 2, float32, seed 0: one TF
reference, the aligned torch side, then each ablation alone (run_ablation_table). The first
failures asserted here were measured at this size (bench.ps.ABLATIONS records the 224 px
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
from bench import parity_metrics as pm
from bench import parity_spec as ps
from bench import parity_table
from bench.errors import UserError
from bench.spec import build_spec

SMALL = dict(input_size=64, pooling="global", batch=2, dtype="float32", seed=0)


# ---- metrics ---------------------------------------------------------------------------------------
def test_compare_reports_max_errors_and_where():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], dtype=np.float32)
    other = ref.copy()
    other[1, 0] = 2.5
    m = pm.compare(ref, other)
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
    cell = pm.judge_fixed(pm.compare(np.zeros((2, 2), np.float32), other), tol=1.0)
    assert not cell["ok"] and cell["reason"] == reason


def test_equal_nonfinite_masks_pass_and_zero_reference_is_handled():
    a = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert pm.judge_fixed(pm.compare(a, a.copy()), tol=0.0)["ok"]
    assert pm.compare(np.zeros(3), np.zeros(3))["max_rel"] == 0.0
    assert pm.compare(np.zeros(3), np.ones(3))["max_rel"] == math.inf


def test_group_and_parts_keep_small_kinds_visible():
    big = (np.full(4, 100.0), np.full(4, 100.0))
    small = (np.full(4, 1e-3), np.full(4, 1.1e-3))
    group = pm.compare_group({"big": big, "small": small})
    assert group["max_rel"] == pytest.approx(1e-4 / 100)  # one denominator for the group
    assert group["where"]["array"] == "small"
    parts = pm.compare_parts({"params": {"big": big}, "m": {"small": small}})
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
    fails = parity_table.failures(table, ["forward", "grad"])
    assert (fails[0]["check"], fails[0]["block"]) == ("forward", "3a")  # a gradient error flows back to stem
    assert parity_table.first_divergent(table, ["forward", "grad"]) == {"forward": "3a", "grad": "stem"}


def test_owners_and_trajectory_sample_cover_every_weight():
    spec = build_spec("resnet50", 10, 64, "global")
    owned = parity_table.weights_by_owner(spec)
    assert list(owned)[:2] == ["stem", "2a"] and list(owned)[-1] == "logits"
    assert sorted(k for keys in owned.values() for k in keys) == sorted(spec.weight_shapes())
    sample = ps.trajectory_sample(spec, per_tensor=64)
    assert len(sample["conv1/kernel"]) == 64 and sample["conv1/kernel"][-1] == 7 * 7 * 3 * 64 - 1
    assert len(sample["bn_conv1/gamma"]) == 64  # small tensors whole
    offsets = ps.sample_offsets(spec)
    assert offsets["conv1/bias"].start == offsets["conv1/kernel"].stop


def test_array_stats_give_normwise_error_and_cosine_as_numpy_does():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 50, 7))
    other = (ref + 1e-6 * rng.normal(size=ref.shape)).astype(np.float32)
    s = pm.array_stats(ref, other)
    d = ref - other.astype(np.float64)
    assert pm.norm_rel(s) == pytest.approx(np.linalg.norm(d) / np.linalg.norm(ref), rel=1e-9)
    o = other.astype(np.float64).ravel()
    cos = ref.ravel() @ o / (np.linalg.norm(ref) * np.linalg.norm(o))
    assert 1 - pm.cosine(s) == pytest.approx(1 - cos, rel=1e-4)  # 1 - cos ~ 1e-12: no cancellation
    assert s["max_abs"] == pytest.approx(np.abs(d).max()) and s["scale"] == pytest.approx(np.abs(ref).max())
    assert tuple(s["where"]["index"]) == np.unravel_index(np.argmax(np.abs(d)), d.shape)
    # A chunked pass (chunks smaller than the array) gives the same numbers.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pm, "CHUNK", 64)
        chunked = pm.array_stats(ref, other)
    assert chunked["where"] == s["where"] and chunked["d2"] == pytest.approx(s["d2"], rel=1e-12)
    assert pm.cosine(pm.array_stats(ref, -ref)) == pytest.approx(-1.0)
    assert pm.norm_rel(pm.array_stats(np.zeros(3), np.zeros(3))) == 0.0


def test_normwise_error_is_not_one_elements_error():
    """A ReLU derivative flipped by the last bit: one element of 10^5 off by its whole value.
    max_rel says 1, the normwise error of the tensor says 0.3%."""
    ref = np.ones(100_000)
    other = ref.copy()
    other[17] = 0.0
    s = pm.array_stats(ref, other)
    assert pm.group({"t": s})["max_rel"] == 1.0
    assert pm.norm_rel(s) == pytest.approx(1 / math.sqrt(100_000))


def _sides(x, a, b):
    """Cross, own TF, own torch stats for one array: a and b two float32 computations of x."""
    return ({"": {"t": pm.array_stats(a, b)}}, {"": {"t": pm.array_stats(x, a)}}, {"": {"t": pm.array_stats(x, b)}})


@pytest.mark.parametrize("metric", ["max_rel", "norm_rel"])
def test_calibrated_judge_passes_rounding_and_fails_a_small_bug(metric):
    rng = np.random.default_rng(1)
    x = rng.normal(size=4096)  # the exact value
    a = (x * (1 + 6e-8 * rng.normal(size=x.shape))).astype(np.float32)  # two ways to round it
    b = (x * (1 + 6e-8 * rng.normal(size=x.shape))).astype(np.float32)
    cell = pm.judge_calibrated(*_sides(x, a, b), metric)
    assert cell["ok"] and cell["ratio"] <= pm.K and cell["own_tf"] > 0 and cell["own_torch"] > 0
    assert cell["limit"] == pytest.approx(pm.K * max(cell["own_tf"], cell["own_torch"]))
    # A bug 20x float32's rounding (a relative 1e-6 on every element) fails, though far below
    # any fixed float32 tolerance in TOLERANCES.
    bug = (x * (1 + 1e-6)).astype(np.float32)
    cross, own_tf, _ = _sides(x, a, bug)
    own_torch = {"": {"t": pm.array_stats(x * (1 + 1e-6), bug)}}  # the bug's own float64 has it too
    cell = pm.judge_calibrated(cross, own_tf, own_torch, metric)
    assert not cell["ok"] and cell["ratio"] > 5 and "x own" in cell["reason"]
    assert cell["value"] < ps.TOLERANCES["float32"]["isolated"]


def test_calibrated_judge_floor_and_per_tensor_units():
    x = np.linspace(-1, 1, 64)
    exact = x.astype(np.float32)  # both sides exact: own errors 0, cross 0 -> the floor decides
    cell = pm.judge_calibrated(*_sides(exact.astype(np.float64), exact, exact), "norm_rel")
    assert cell["ok"] and cell["limit"] == pm.FLOOR
    off = exact.copy()
    off[3] = np.nextafter(off[3], np.float32(2))  # one ulp: below the floor in norm
    assert pm.judge_calibrated(*_sides(exact.astype(np.float64), exact, off), "norm_rel")["ok"]
    # Per tensor: a tensor with large own error does not loosen another's limit.
    rng = np.random.default_rng(2)
    noisy_x = rng.normal(size=256) * 1e-9  # e.g. a conv bias before BN: exact gradient ~0
    noisy_a, noisy_b = noisy_x + 1e-9 * rng.normal(size=256), noisy_x + 1e-9 * rng.normal(size=256)
    clean_a = (x * (1 + 1e-5)).astype(np.float32)  # 1e-5 off, own errors ~1e-8
    cross = {"": {"noisy": pm.array_stats(noisy_a, noisy_b), "clean": pm.array_stats(exact, clean_a)}}
    own_tf = {"": {"noisy": pm.array_stats(noisy_x, noisy_a), "clean": pm.array_stats(x, exact)}}
    own_torch = {"": {"noisy": pm.array_stats(noisy_x, noisy_b), "clean": pm.array_stats(x * (1 + 1e-5), clean_a)}}
    cell = pm.judge_calibrated(cross, own_tf, own_torch, "norm_rel")
    assert not cell["ok"] and cell["unit"] == "clean"
    # Without the noisy tensor's own error the clean one would decide alone: same verdict.
    assert cell["value"] == pytest.approx(pm.norm_rel(cross[""]["clean"]))


def test_cross_error_is_within_twice_the_larger_own_error():
    """The triangle inequality K = 2 rests on: |a - b| <= |a - x| + |x - b|, max-abs and norm."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        x = rng.normal(size=1000) * rng.uniform(1e-3, 1e3)
        a = x + rng.normal(size=x.shape) * rng.uniform(0, 1e-5) * np.abs(x).max()
        b = x + rng.normal(size=x.shape) * rng.uniform(0, 1e-5) * np.abs(x).max()
        for metric in ("max_rel", "norm_rel"):
            cell = pm.judge_calibrated(*_sides(x, a, b), metric, floor=0.0)
            assert cell["ratio"] <= 2.0 * (1 + 1e-6), (metric, cell["ratio"])


def test_build_table_calibrates_all_but_the_input_row():
    spec = build_spec("resnet50", 10, 64, "global")
    rng = np.random.default_rng(4)
    exact = rng.normal(size=(2, 15, 15, 64))
    ref = {"fwd/stem": exact.astype(np.float32)}
    other = {"fwd/stem": (exact * (1 + 1e-7)).astype(np.float32)}
    own = {"tf": {"fwd/stem": pm.array_stats(exact, ref["fwd/stem"])},
           "torch": {"fwd/stem": pm.array_stats(exact, other["fwd/stem"])}}
    inputs = (np.zeros((2, 64, 64, 3), np.float32), np.zeros((2, 64, 64, 3), np.float32))
    table = parity_table.build_table(spec, ref, other, ["input", "forward"], ps.TOLERANCES["float32"],
                                     inputs, own)["table"]
    assert table["stem"]["forward"]["judge"] == "calibrated" and table["stem"]["forward"]["ok"]
    assert table["stem"]["forward"]["fixed_tol"] == 1e-3
    assert table["input"]["input"]["judge"] == "fixed" and table["input"]["input"]["tol"] == 1e-4
    fixed = parity_table.build_table(spec, ref, other, ["forward"], ps.TOLERANCES["float32"])["table"]
    assert fixed["stem"]["forward"]["judge"] == "fixed" and fixed["stem"]["forward"]["limit"] == 1e-3


def test_one_ulp_moves_every_float_by_exactly_one_ulp():
    from bench.weights import WeightBundle
    bundle = WeightBundle({"w": np.linspace(-2, 2, 1001, dtype=np.float32), "n": np.arange(3)}, {"source": "t"})
    moved = parity.one_ulp(bundle, seed=0)
    w, m = bundle.arrays["w"], moved.arrays["w"]
    ulps = np.abs(m.view(np.int32).astype(np.int64) - w.view(np.int32).astype(np.int64))
    nonzero = w != 0
    assert np.all(ulps[nonzero] == 1) and m.dtype == np.float32
    assert 0.3 < np.mean(m > w) < 0.7  # up and down
    assert np.array_equal(moved.arrays["n"], bundle.arrays["n"])


def test_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="--checks speed: choose from forward, train, grad, step, trajectory"):
        ps.ParityConfig(checks=("speed",)).validate()
    with pytest.raises(UserError, match="--ablate decoder compares the data pipelines: it needs --manifest"):
        ps.ParityConfig(ablations=("decoder",)).validate()
    with pytest.raises(UserError, match="no such weight file"):
        ps.ParityConfig(weights=str(tmp_path / "nope.npz")).validate()
    with pytest.raises(UserError, match="at least 2 images"):
        ps.ParityConfig(batch=1).validate()


# ---- the real workers -------------------------------------------------------------------------------
NON_PIPELINE = tuple(n for n in ps.ABLATIONS if not ps.ABLATIONS[n].pipeline and n != "maxpool-pad")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """One TF reference; the aligned torch side with every default check; each ablation alone
    (maxpool-pad runs through the CLI test below)."""
    config = ps.ParityConfig(**SMALL, work_dir=str(tmp_path_factory.mktemp("parity")))
    from bench.runner import WorkerConfig
    return parity.run_ablation_table(config, WorkerConfig(quiet=True), NON_PIPELINE, stop_at_expected=True)


def test_default_parity_passes_every_check(table):
    base = table["results"]["baseline"]
    assert base["verdict"] == "pass", parity_table.format_table(base)
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
    # Every cell calibrated: both frameworks measured their own float32 error, and the aligned
    # port's cross error stays within K of the larger one (the triangle inequality's bound).
    assert base["judge"]["mode"] == "calibrated" and base["judge"]["torch_own"] == "candidate"
    cells = [c for r in rows for c in base["table"][r].values() if c]
    assert all(c["judge"] == "calibrated" for c in cells)
    assert all(c["own_tf"] > 0 and c["own_torch"] > 0 for c in cells if c["value"] > 0)
    assert max(c["ratio"] for c in cells) <= pm.K * pm.SLACK
    # Gradients by the normwise error per tensor; their limits far below the fixed 0.5.
    grad_iso = [base["table"][r]["grad-iso"] for r in rows if base["table"][r]["grad-iso"]]
    assert all(c["metric"] == "norm_rel" for c in grad_iso)
    assert np.median([c["limit"] for c in grad_iso]) < 1e-4
    json.dumps(base, allow_nan=False)  # regression tracking reads it: strict JSON


@pytest.mark.parametrize("name, check, block", [
    ("bn-eps", "isolated", "2a"),  # stem BN sees variances ~1e4: eps 1e-5 vs 1e-3 is invisible there
    ("bn-momentum", "bn", "stem"),  # outputs identical; only the moving statistics differ
    ("bn-variance", "bn", "stem"),  # n/(n-1) with n = 2*32*32 at 64 px (at 224 px the stem is too wide)
    ("adam-eps", "adam", "stem"),
    ("stride-3x3", "isolated", "3a"),  # 2a has stride 1: v1 and v1.5 agree there
    # Backward only: forward and BN statistics as aligned, so only a gradient check can fail.
    ("bn-var-detached", "grad-iso", "stem"),
    ("bn-stats-detached", "grad-iso", "stem"),
    ("bn-frozen-affine", "grad-iso", "stem"),
])
def test_each_ablation_fails_its_check_at_its_block(table, name, check, block):
    summary = table["ablations"][name]
    first = summary["first_failure"]
    assert (first["check"], first["block"]) == (check, block), first
    assert summary["detected"]


def test_backward_only_ablations_leave_every_forward_cell_passing(table):
    for name in ("bn-var-detached", "bn-stats-detached", "bn-frozen-affine"):
        result = table["results"][name]
        for column in ("isolated", "forward", "train-iso", "train", "bn"):
            assert all(result["table"][r][column]["ok"] for r in result["rows"] if result["table"][r].get(column)), \
                (name, column)
        # Judged with the aligned port's own errors (the table runs no float64 pass per ablation).
        assert result["judge"]["torch_own"] == "aligned baseline"
        stem = result["table"]["stem"]["grad-iso"]
        assert stem["ratio"] > 100, (name, stem)


def test_sgd_is_the_control_for_adam_eps(table):
    result = table["results"]["adam-eps"]
    assert all(result["table"][r]["sgd"]["ok"] for r in result["rows"] if result["table"][r]["sgd"])
    assert not all(result["table"][r]["adam"]["ok"] for r in result["rows"] if result["table"][r]["adam"])


def test_cli_exit_1_names_first_block_and_check(tmp_path):
    """maxpool-pad (torchvision's padded stem pool): isolated stem output 16x16 instead of 15x15;
    isolated blocks after it still pass, chained ones cannot even be compared."""
    out = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "parity", "--input-size", "64", "--pooling", "global",
                           "--checks", "forward", "--ablate", "maxpool-pad", "--no-calibrate", "--fixed-tolerances",
                           "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("twinbench: error: parity failed: first divergent block stem, check isolated: shape")
    result = json.loads(out.read_text())
    assert result["verdict"] == "fail" and result["ablation"] == {"maxpool-pad": ps.ABLATIONS["maxpool-pad"].description}
    assert result["table"]["2a"]["isolated"]["ok"] and not result["table"]["2a"]["forward"]["shape_ok"]
    assert result["judge"]["mode"] == "fixed" and result["table"]["2a"]["isolated"]["limit"] == 1e-5
    assert "FAIL: first divergent block stem, check isolated" in proc.stdout


# ---- the keras-torch arm: the seed's Keras code on Keras' torch backend ----------------------------------
def test_keras_torch_float64_agrees_with_tf_as_tf_with_the_port(tmp_path):
    """The same Keras code on another backend, in float64: every default check as tight as the
    fixed float64 table demands. Fails without tf_impl.tape.exact_float64 (Keras' torch backend
    would normalise in float32: bn_conv1 1.5e-7 off)."""
    # 64 px: at 32 px stage 5's maps are 1x1 and training-mode BN over 2 values per channel is so
    # ill-conditioned that even float64 drifts to 3e-8 there (measured; both backends alike). No
    # calibration: float64 needs no unsaturated softmax to be judged, and it saves a worker.
    config = ps.ParityConfig(**{**SMALL, "dtype": "float64"}, arms=("tf", "keras-torch"), calibrate=False,
                             work_dir=str(tmp_path))
    from bench.runner import WorkerConfig
    result = parity.run_parity(config, WorkerConfig(quiet=True))
    assert result["verdict"] == "pass", parity_table.format_table(result)
    assert result["arms"] == {"reference": "tf", "candidate": "keras-torch"}
    assert result["float64_promotion_patched"] == {"reference": False, "candidate": True}
    worst = parity_table.summarize(result)["worst"]
    assert worst["forward"] < 1e-12 and worst["grad"] < 1e-10 and worst["adam"] < 1e-14
    assert "kt reference" not in parity_table.format_table(result) and "TF reference vs kt" in \
        parity_table.format_table(result)


def test_parity_arms_are_checked():
    with pytest.raises(UserError, match="--arms torch,tf: choose one of"):
        ps.ParityConfig(arms=("torch", "tf")).validate()
    with pytest.raises(UserError, match="the candidate is not the port"):
        ps.ParityConfig(arms=("tf", "keras-torch"), ablations=("bn-eps",)).validate()
    assert "input" not in ps.ParityConfig(arms=("keras-torch", "torch"), manifest="m.json").columns()


@pytest.mark.slow
@pytest.mark.parametrize("arms", [("tf", "keras-torch"), ("keras-torch", "torch")])
def test_keras_torch_float32_passes_every_calibrated_check(tmp_path, arms):
    """float32, calibrated: keras-torch as the candidate against TF, and as the reference of the
    port (then the keras-torch side runs TF's reference role on torch)."""
    config = ps.ParityConfig(**SMALL, checks=tuple(ps.CHECK_GROUPS), steps=3, arms=arms, work_dir=str(tmp_path))
    from bench.runner import WorkerConfig
    result = parity.run_parity(config, WorkerConfig(quiet=True))
    assert result["verdict"] == "pass", parity_table.format_table(result)
    assert result["judge"]["mode"] == "calibrated"
    cells = [c for r in result["rows"] for c in result["table"][r].values() if c]
    assert all(c["own_tf"] > 0 and c["own_torch"] > 0 for c in cells if c["value"] > 0)
    assert max(c["ratio"] for c in cells) <= pm.K * pm.SLACK


# ---- slow: float64, the trajectory, real images ---------------------------------------------------------
@pytest.mark.slow
def test_float64_parity_is_tight_everywhere(tmp_path):
    config = ps.ParityConfig(**{**SMALL, "dtype": "float64"}, work_dir=str(tmp_path))
    from bench.runner import WorkerConfig
    result = parity.run_parity(config, WorkerConfig(quiet=True))
    assert result["verdict"] == "pass", parity_table.format_table(result)
    worst = parity_table.summarize(result)["worst"]
    # float64 pins every check, gradients included (float32 gradients cannot: ReLU flips).
    assert worst["grad"] < 1e-10 and worst["grad-iso"] < 1e-11 and worst["adam"] < 1e-14


@pytest.mark.slow
def test_trajectory_curve_and_bn_momentum_divergence(tmp_path):
    from bench.runner import WorkerConfig
    config = ps.ParityConfig(**{**SMALL, "dtype": "float64"}, checks=("trajectory",), steps=3,
                                 work_dir=str(tmp_path))
    table = parity.run_ablation_table(config, WorkerConfig(quiet=True), ("bn-momentum",))
    base = table["results"]["baseline"]
    assert base["verdict"] == "pass", parity_table.format_table(base)
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
    from bench.dataset import build_manifest
    from bench.runner import WorkerConfig
    data = demo.write_demo(tmp_path / "demo", seed=0, counts={"Bananaquit": 6, "Black Skimmer": 6,
                                                              "Black Throated Bushtiti": 6, "Cockatoo": 6})
    build_manifest(data).save(tmp_path / "manifest.json")
    config = ps.ParityConfig(**SMALL, checks=("forward",), manifest=str(tmp_path / "manifest.json"),
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


@pytest.mark.slow
def test_float32_trajectory_is_judged_against_its_chaos_baseline(tmp_path):
    from bench.runner import WorkerConfig
    config = ps.ParityConfig(**SMALL, checks=("trajectory",), steps=3, work_dir=str(tmp_path))
    result = parity.run_parity(config, WorkerConfig(quiet=True))
    assert result["verdict"] == "pass", parity_table.format_table(result)
    cells = [result["table"][r]["traj"] for r in result["rows"] if result["table"][r]["traj"]]
    assert all(c["judge"] == "calibrated" and c["metric"] == "norm_rel" for c in cells)
    assert all(c["own_tf"] > 0 and c["own_torch"] > 0 for c in cells)  # one ulp moved every trajectory
    curve = result["trajectory"]
    assert len(curve["chaos_tf"]["param_rel"]) == 3 and len(curve["chaos_torch"]["param_rel"]) == 3
    assert (tmp_path / "chaos.npz").is_file()


@pytest.mark.slow
def test_resnet50_c3_passes_every_check_and_its_ablations_fail(tmp_path):
    """resnet50_c3 at 64 px: every check group, calibrated; the backward-only ablation fails a
    gradient check at the stem, bn-eps a forward check."""
    from bench.runner import WorkerConfig
    # 10 steps: over 3, the one-ulp chaos baseline has not caught up with per-step rounding yet
    # (measured here: fc1000's trajectory 2.05 x its own at step 3; docs/parity.md).
    config = ps.ParityConfig(**SMALL, model="resnet50_c3", checks=tuple(ps.CHECK_GROUPS), steps=10,
                                 work_dir=str(tmp_path))
    table = parity.run_ablation_table(config, WorkerConfig(quiet=True), ("bn-eps", "bn-var-detached", "adam-eps"))
    base = table["results"]["baseline"]
    assert base["verdict"] == "pass", parity_table.format_table(base)
    assert "traj" in base["columns"] and base["judge"]["mode"] == "calibrated"
    first = table["ablations"]["bn-var-detached"]["first_failure"]
    assert (first["check"], first["block"]) == ("grad-iso", "stem")
    assert table["ablations"]["bn-eps"]["first_failure"]["check"] == "isolated"
    assert table["ablations"]["adam-eps"]["first_failure"]["check"] == "adam"
    assert table["verdict"] == "pass"
