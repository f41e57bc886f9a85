"""bench.benchmark and bench.measure without a framework: statistics, the timing rules, FLOPs and MFU, the
pytest-benchmark storage format (read back by pytest-benchmark itself, and by
``pytest --benchmark-compare/--benchmark-compare-fail``), and failures recorded, never hidden."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest

from bench import benchmark as bb
from bench import measure as bm
from bench.errors import UserError, WorkerError

pytest_benchmark_stats = pytest.importorskip("pytest_benchmark.stats")


# ---- statistics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [[0.5], [3.0, 1.0], [5.0, 1.0, 2.0, 4.0, 3.0], [1.0, 9.0, 2.0, 2.5, 3.0, 7.0],
                                  [0.9, 1.1, 1.0, 1.2, 0.95, 3.0, 1.05]])
def test_summarize_matches_pytest_benchmark_stats(data):
    ours = bm.summarize(data)
    theirs = pytest_benchmark_stats.Stats()
    for x in data:
        theirs.update(x)
    for field in pytest_benchmark_stats.Stats.fields:
        expected = getattr(theirs, field)
        assert ours[field] == (pytest.approx(expected) if isinstance(expected, float) else expected), field


def test_throughput_is_total_images_over_total_time_not_a_mean_of_rates():
    # Windows of 1 s and 3 s, 12 images each: 12 and 4 img/s. The mean of the rates (8) is wrong;
    # 24 images in 4 s is 6 img/s.
    stats = bm.throughput_stats([1.0, 3.0], 12)
    assert stats["overall"] == pytest.approx(6.0)
    assert stats["windows"] == [12.0, 4.0]


# ---- the timing loop -----------------------------------------------------------------------------
class FakeDevice:
    """A clock that advances only when a step runs, and a log of every sync and clock read."""

    def __init__(self, first_step_s: float, step_s: float):
        self.now, self.calls, self.events = 0.0, 0, []
        self.first, self.per_step = first_step_s, step_s

    def step(self):
        self.calls += 1
        self.now += self.first if self.calls == 1 else self.per_step
        self.events.append("step")
        return self.calls

    def sync(self, out):
        self.events.append("sync")

    def clock(self):
        self.events.append("clock")
        return self.now


def test_warmup_is_timed_apart_and_excluded_from_throughput():
    dev = FakeDevice(first_step_s=30.0, step_s=0.5)  # a 30 s compile, then 0.5 s steps
    t = bm.time_steps(dev.step, dev.sync, warmup=3, repeats=5, steps=4, batch=8, clock=dev.clock)
    assert t["first_step_s"] == pytest.approx(30.0)
    assert t["warmup_s"] == pytest.approx(31.0)
    assert t["window_s"] == [pytest.approx(2.0)] * 5
    assert t["throughput"]["median"] == pytest.approx(16.0)  # 8 images / 0.5 s, compile excluded
    assert dev.calls == 3 + 5 * 4


def test_every_clock_read_follows_a_sync():
    dev = FakeDevice(first_step_s=1.0, step_s=1.0)
    bm.time_steps(dev.step, dev.sync, warmup=2, repeats=5, steps=3, batch=1, clock=dev.clock)
    reads = [i for i, e in enumerate(dev.events) if e == "clock"]
    assert len(reads) == 2 + 2 * 5 + 1
    assert all(dev.events[i - 1] == "sync" for i in reads)
    # ...and inside a window the steps run back to back, unsynced (as training does).
    assert "step,step,step" in ",".join(dev.events)


@pytest.mark.parametrize("kwargs, message", [({"repeats": 4}, "at least 5"), ({"warmup": 0}, "warm-up"),
                                             ({"steps": 0}, "at least one step")])
def test_too_few_repeats_or_no_warmup_is_refused(kwargs, message):
    dev = FakeDevice(1.0, 1.0)
    args = {"warmup": 1, "repeats": 5, "steps": 1, **kwargs}
    with pytest.raises(UserError, match=message):
        bm.time_steps(dev.step, dev.sync, batch=1, clock=dev.clock, **args)


def test_memory_is_a_separate_loop_after_the_reset():
    events = []
    mem = bm.measure_memory(lambda: events.append("step"), lambda out: None, steps=2,
                            reset=lambda: events.append("reset") or True,
                            read=lambda: events.append("read") or {"peak_bytes": 5})
    assert events == ["reset", "step", "step", "read"]
    assert mem == {"peak_bytes": 5, "reset": True, "steps": 2}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_reset_forgets_an_earlier_peak():
    assert bm.reset_peak_rss() is True  # the peak of tests that ran before in this process
    before = bm.read_peak_rss()["peak_bytes"]
    # Fresh pages from the kernel (an anonymous mapping), not memory an earlier test freed that
    # malloc kept resident (a bytearray reused it, and RSS did not grow: order-dependent failure).
    block = mmap.mmap(-1, 256 * 2**20)
    for offset in range(0, len(block), 4096):  # touch every page: RSS really grows
        block[offset] = 1
    grown = bm.read_peak_rss()["peak_bytes"]
    block.close()
    assert grown >= before + 200 * 2**20
    assert bm.reset_peak_rss() is True
    assert bm.read_peak_rss()["peak_bytes"] < grown - 200 * 2**20


# ---- the row and peak control flow both workers share -----------------------------------------------
class FakeBatch:
    def __init__(self, n: int):
        self.shape = (n, 8, 8, 3)


class FakeModel:
    pass


class FakeBackend:
    """A framework for ``bm.measure_row`` / ``bm.measure_peak``: logs every hook it is asked for;
    ``fail_in`` names the hook that raises ``error``."""

    framework, label = "torch", "cpu fake"

    def __init__(self, *, gpu: bool = False, skip: str | None = None, fail_in: str | None = None,
                 error: Exception | None = None, batch_fed: int | None = None):
        self.gpu, self.skip, self.fail_in, self.error, self.batch_fed = gpu, skip, fail_in, error, batch_fed
        self.events: list = []
        self.model_alive_at_cleanup = None

    def _hook(self, name, *detail):
        self.events.append((name, *detail))
        if name == self.fail_in:
            raise type(self.error)(*self.error.args)  # a fresh one: a stored traceback would keep the model

    def sync(self, out):
        self.events.append(("sync", out))

    def skip_reason(self, row):
        return self.skip

    def check_precision(self, precision):
        return None if self.gpu or precision not in bm.GPU_ONLY_PRECISIONS else "needs a GPU"

    def use_tf32(self, enabled):
        self.events.append(("tf32", enabled))

    def prepare(self, row):
        self._hook("prepare")

    def synthetic_batch(self, row):
        self._hook("synthetic_batch")
        return FakeBatch(row["batch"]), "labels"

    def pipeline_batches(self, row):
        self._hook("pipeline_batches")
        return lambda: self.events.append(("batch",)) or (FakeBatch(self.batch_fed or row["batch"]), "labels")

    def memory_in_use(self):
        return 123

    def build_model(self, row):
        self._hook("build_model")
        model = FakeModel()
        self.model = weakref.ref(model)
        return model, "fake model"

    def make_step(self, model, row, batches):
        self._hook("make_step")
        return lambda: (model, batches(), self._hook("step"))[2]

    def memory_counters(self):
        return (lambda: self._hook("reset") or True), (lambda: {"kind": "fake", "peak_bytes": 456})

    def is_oom(self, exc):
        return "out of memory" in str(exc)

    def cleanup(self, row):
        self.model_alive_at_cleanup = self.model() is not None if hasattr(self, "model") else None
        self.events.append(("cleanup",))

    def matmul_step(self, precision, n):
        self.events.append(("matmul", precision, n))
        return lambda: n

    def threads(self):
        return {"intra_op": 2, "inter_op": 1}

    def versions(self):
        return {"fake": "1.0"}

    def environment(self):
        return {"framework": "torch", "device": self.label}


def fake_row(**changes) -> dict:
    row = {"framework": "torch", "model": "ours", "mode": "train", "input": "synthetic", "batch": 4,
           "input_size": 32, "pooling": "global", "classes": 10, "arch": "resnet50", "precision": "fp32",
           "layout": "nhwc", "compile": "eager", "warmup": 2, "repeats": 5, "steps": 3, "memory_steps": 2,
           "device": "cpu", **changes}
    row["id"] = bm.row_id(row)
    return row


def test_measure_row_builds_after_the_inputs_times_then_measures_memory_and_frees_the_model():
    backend = FakeBackend()
    out = bm.measure_row(fake_row(), backend)
    names = [e[0] for e in backend.events if e[0] != "sync"]
    assert names == ["prepare", "synthetic_batch", "build_model", "make_step", *["step"] * (2 + 5 * 3), "reset",
                     "step", "step", "cleanup"]
    assert out["status"] == "ok" and out["batch_used"] == 4 == out["timing"]["batch"]
    assert out["device"] == "cpu fake" and out["model_label_full"] == "fake model"
    assert out["memory"] == {"kind": "fake", "peak_bytes": 456, "reset": True, "steps": 2, "before_model_bytes": 123}
    assert out["threads"] == {"intra_op": 2, "inter_op": 1} and out["versions"] == {"fake": "1.0"}
    assert "first_batch_s" not in out and len(out["step_s"]) == 5
    assert backend.model_alive_at_cleanup is False  # dropped before the backend frees memory


def test_measure_row_times_the_first_pipeline_batch_between_syncs_and_records_the_batch_fed():
    backend = FakeBackend(batch_fed=3)
    out = bm.measure_row(fake_row(input="pipeline", manifest="m.json"), backend)
    first = backend.events.index(("batch",))
    assert backend.events[first - 1] == ("sync", None)
    after = backend.events[first + 1]
    assert after[0] == "sync" and after[1][0].shape[0] == 3  # synced on the batch itself (TF fetches it)
    assert out["first_batch_s"] >= 0 and out["batch_used"] == 3 and out["batch"] == 4


def test_measure_row_skips_without_touching_the_device():
    backend = FakeBackend(skip="fp16 needs a GPU")
    out = bm.measure_row(fake_row(precision="fp16"), backend)
    assert out["status"] == "skipped" and out["error"] == "fp16 needs a GPU" and backend.events == []


@pytest.mark.parametrize("fail_in", ["synthetic_batch", "build_model", "step"])
def test_out_of_memory_anywhere_is_a_failed_row_and_the_backend_still_cleans_up(fail_in):
    backend = FakeBackend(fail_in=fail_in, error=RuntimeError("CUDA out of memory. Tried to allocate 9 GiB"))
    out = bm.measure_row(fake_row(batch=4096), backend)
    assert out["status"] == "failed" and out["oom"] is True and out["batch"] == 4096 and "batch_used" not in out
    assert out["error"].startswith("out of memory at batch 4096 on cpu fake (torch: CUDA out of memory.")
    assert out["device"] == "cpu fake" and backend.events[-1] == ("cleanup",)
    assert backend.model_alive_at_cleanup in (None, False)


def test_an_error_that_is_not_out_of_memory_propagates_after_the_cleanup():
    backend = FakeBackend(fail_in="make_step", error=ValueError("bad shape"))
    with pytest.raises(ValueError, match="bad shape"):
        bm.measure_row(fake_row(), backend)
    assert backend.events[-1] == ("cleanup",)


@pytest.mark.parametrize("gpu, size, expected_n, tf32", [(False, 0, 2048, [False, False, False]),
                                                         (True, 64, 64, [False, True, False, False])])
def test_measure_peak_per_dtype_with_tf32_only_for_tf32_and_off_afterwards(gpu, size, expected_n, tf32):
    backend = FakeBackend(gpu=gpu)
    messages = []
    peaks = bm.measure_peak(("fp32", "tf32", "bf16"), backend, size, messages.append)
    assert set(peaks) == ({"fp32", "tf32", "bf16"} if gpu else {"fp32", "bf16"})
    assert all(v > 0 for v in peaks.values()) and len(messages) == len(peaks)
    assert {e[2] for e in backend.events if e[0] == "matmul"} == {expected_n}
    assert [e[1] for e in backend.events if e[0] == "tf32"] == tf32


def test_the_bench_row_task_measures_the_peak_before_the_model_only_when_asked():
    backend = FakeBackend()
    out = bm.bench_task({"row": fake_row(), "peak": {"size": 32}}, backend, lambda message: None)
    names = [e[0] for e in backend.events]
    assert names.index("matmul") < names.index("build_model")
    assert set(out["peak"]) == {"fp32", "bf16"} and out["row"]["status"] == "ok"
    assert out["env"] == {"framework": "torch", "device": "cpu fake"}
    again = FakeBackend()
    assert bm.bench_task({"row": fake_row()}, again, lambda message: None)["peak"] is None
    assert not any(e[0] == "matmul" for e in again.events)


# ---- FLOPs and MFU -------------------------------------------------------------------------------
def test_reference_flops_follow_the_known_counts():
    # torchvision documents resnet50 at 4.09 GFLOPS (multiply-adds); ResNet v1 (keras.applications,
    # stride on the 1x1) costs less, and ours, with its unpadded 55x55 stem, less again.
    tv = bm.reference_forward_flops("torchvision", 224, 1000)
    keras = bm.reference_forward_flops("keras", 224, 1000)
    ours = bm.forward_flops("torch", "ours", 224, 1000, "avg7")
    assert tv / 2 == pytest.approx(4.09e9, rel=0.003)
    assert ours < keras < tv
    assert keras / 2 == pytest.approx(3.86e9, rel=0.01)
    assert bm.step_flops_per_image("tf", "reference", "train", 224, 1000, "global") == 3 * keras


def test_mfu_divides_by_the_best_peak_of_the_matching_dtype():
    rows = [{"status": "ok", "framework": "torch", "precision": "bf16", "images_per_s": 10.0,
             "flops_per_image": 1e9},
            {"status": "failed", "framework": "tf", "precision": "fp32"}]
    peaks = {"torch": {"fp32": 100e9, "bf16": 200e9}, "tf": {"fp32": 150e9, "bf16": 400e9}}
    bm.add_mfu(rows, peaks)
    assert rows[0]["peak_dtype"] == "bf16"
    assert rows[0]["mfu"] == pytest.approx(10 * 1e9 / 400e9)  # the machine's peak: TF's bf16 matmul
    assert rows[0]["mfu_own_peak"] == pytest.approx(10 * 1e9 / 200e9)
    assert "mfu" not in rows[1]
    assert bm.mfu(1.0, 1.0, None) is None


def test_mfu_above_one_warns_that_the_peak_was_measured_low():
    row = {"status": "ok", "framework": "torch", "model": "ours", "mode": "train", "input": "synthetic",
           "batch": 8, "input_size": 224, "precision": "fp32", "layout": "nhwc", "compile": "eager",
           "images_per_s": 10.0, "flops_per_image": 1e9}
    rows = [dict(row), dict(row, mode="infer", images_per_s=50.0)]
    bm.add_mfu(rows, {"torch": {"fp32": 30e9}})  # infer: 50 GFLOP/s on a 30 GFLOP/s "peak"
    (note,) = bb.mfu_notes(rows)
    assert note.startswith("MFU above 100% in 1 row(s) (worst 167%: torch ours infer") and "quiet" in note
    assert bb.mfu_notes(rows[:1]) == []


def test_ratios_compare_ours_with_the_reference_per_image_and_per_flop():
    def row(model, ips, flops, input_kind="synthetic"):
        r = {"framework": "torch", "model": model, "mode": "train", "input": input_kind, "batch": 8,
             "input_size": 224, "precision": "fp32", "layout": "nhwc", "compile": "eager", "status": "ok",
             "images_per_s": ips, "flops_per_image": flops}
        r["id"] = bm.row_id(r)
        return r

    rows = [row("ours", 9.0, 22e9), row("reference", 10.0, 24e9), row("ours", 8.7, 22e9, "pipeline")]
    by_kind = {q["kind"]: q for q in bm.ratios(rows)}
    assert by_kind["ours/reference"]["throughput"] == pytest.approx(0.9)
    assert by_kind["ours/reference"]["per_flop"] == pytest.approx(0.9 * 22 / 24)
    assert by_kind["end-to-end/compute-only"]["throughput"] == pytest.approx(8.7 / 9.0)


def test_keras_on_torch_is_set_against_each_framework_by_median_with_a_quartile_band():
    def row(fw, median, q1, q3, precision="fp32", model="ours", layout="nhwc", comp="eager"):
        r = {"framework": fw, "model": model, "mode": "train", "input": "synthetic", "batch": 8, "input_size": 224,
             "precision": precision, "layout": layout, "compile": comp, "status": "ok",
             "timing": {"throughput": {"median": median, "q1": q1, "q3": q3, "windows": [median] * 5}}}
        r["id"] = bm.row_id(r)
        return r

    rows = [row("tf", 4.0, 3.8, 4.2), row("torch", 6.0, 5.9, 6.1), row("keras-torch", 5.0, 4.9, 5.2),
            row("keras-torch", 9.0, 8.0, 10.0, "bf16"), row("keras-torch", 7.0, 7.0, 7.0, model="reference"),
            # Other settings of the port: not the NHWC eager row keras-torch is set against.
            row("torch", 3.0, 3.0, 3.0, layout="nchw"), row("torch", 12.0, 12.0, 12.0, comp="jit")]
    ratios = bm.arm_ratios(rows)
    by_kind = {q["kind"]: q for q in ratios}
    assert len(ratios) == 2 and set(by_kind) == {"keras-torch/tf", "keras-torch/torch"}  # bf16: no partner
    q = by_kind["keras-torch/torch"]
    assert q["ratio"] == pytest.approx(5.0 / 6.0) and q["low"] == pytest.approx(4.9 / 6.1)
    assert q["high"] == pytest.approx(5.2 / 5.9) and q["images_per_s"] == [5.0, 6.0]
    assert by_kind["keras-torch/tf"]["ratio"] == pytest.approx(1.25)


def _profile(**ms):
    ops = [{"name": k.replace("_", "::", 1), "self_ms": v, "calls": 10} for k, v in ms.items()]
    return {"tool": "torch.profiler", "clock": "cpu", "steps": 1, "total_ms": sum(ms.values()), "ops": ops}


def test_op_gaps_rank_the_ops_where_the_slower_step_spends_more():
    arm = _profile(aten_convolution=500.0, aten_copy=300.0, aten_mul=120.0, aten_mm=5.0)
    other = _profile(aten_convolution=480.0, aten_mul=20.0, aten_mm=7.0, aten_batch_norm=60.0)
    gaps = bm.op_gaps(arm, other)
    assert gaps["total_ms"] == [925.0, 567.0] and gaps["clock"] == "cpu"
    assert [o["name"] for o in gaps["ops"]] == ["aten::copy", "aten::mul", "aten::convolution"]  # excess > 0 only
    copy = gaps["ops"][0]
    assert copy["excess_ms"] == 300.0 and copy["listed"] == [True, False] and copy["calls"] == [10, None]
    assert gaps["ops"][1]["ms"] == [120.0, 20.0]
    # Nothing to compare: a side without a profile, a skipped one, or clocks that differ.
    assert bm.op_gaps(arm, None) is None and bm.op_gaps(arm, {"skipped": "no profiler"}) is None
    assert bm.op_gaps(arm, {**other, "clock": "device"}) is None


def test_plan_profiles_the_torch_backed_rows_only_beside_keras_on_torch():
    rows, _ = bb.plan(bb.Settings(frameworks=("tf", "torch", "keras-torch"), precisions=("fp32",)))
    flagged = {(r["framework"], r["model"]) for r in rows if r.get("op_profile")}
    assert flagged == {("torch", "ours"), ("keras-torch", "ours")}
    rows, _ = bb.plan(bb.Settings(frameworks=("tf", "torch"), precisions=("fp32",)))
    assert not any(r.get("op_profile") for r in rows)  # no arm to explain: no profiling cost


def test_plan_gives_keras_on_torch_nhwc_eager_rows_only():
    rows, notes = bb.plan(bb.Settings(frameworks=("torch", "keras-torch"), precisions=("fp32",)))
    kt = [r for r in rows if r["framework"] == "keras-torch"]
    assert kt and all(r["layout"] == "nhwc" and r["compile"] == "eager" for r in kt)
    assert any(r["framework"] == "torch" and r["compile"] == "jit" for r in rows)
    assert any("keras-torch nchw and jit left out" in n for n in notes)


# ---- the matrix ----------------------------------------------------------------------------------
def test_plan_pairs_ours_with_the_reference_and_leaves_out_tf_nchw():
    rows, notes = bb.plan(bb.Settings(precisions=("fp32",), compiles=("eager",), inputs=("synthetic", "pipeline"),
                                      manifest="m.json"))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert not any(r["framework"] == "tf" and r["layout"] == "nchw" for r in rows)
    assert any("tf nchw" in n for n in notes)
    synthetic = [r for r in rows if r["input"] == "synthetic"]
    for a, b in zip(synthetic[::2], synthetic[1::2]):  # ours and its reference run back to back
        assert (a["model"], b["model"]) == ("ours", "reference")
        assert {k: v for k, v in a.items() if k not in ("model", "id", "pooling")} == \
            {k: v for k, v in b.items() if k not in ("model", "id", "pooling")}
    pipeline = [r for r in rows if r["input"] == "pipeline"]
    assert pipeline and all(r["model"] == "ours" and r["mode"] == "train" for r in pipeline)
    with pytest.raises(UserError, match="--data"):
        bb.plan(bb.Settings(inputs=("pipeline",)))


# ---- failures are recorded, never hidden -----------------------------------------------------------
def test_a_crashed_worker_is_a_failed_row_with_its_batch_and_the_rest_still_run():
    rows, _ = bb.plan(bb.QUICK.with_(frameworks=("torch",), models=("ours",)))
    seen = []

    def runner(fw, task, args, **kw):
        seen.append(args["row"]["mode"])
        if args["row"]["mode"] == "train":
            raise WorkerError("PyTorch worker (bench_row) was killed by SIGKILL (out of memory?); last output:\n...")
        row = args["row"]
        timing = {"first_step_s": 1.0, "warmup_s": 1.0, "warmup_steps": 1, "repeats": 5, "steps": 1, "batch": 8,
                  "window_s": [0.5] * 5, "throughput": bm.throughput_stats([0.5] * 5, 8)}
        result = bm.finish_row(row, timing, {"kind": "cpu", "peak_bytes": 1}, batch_used=8, device="cpu")
        return type("R", (), {"result": {"row": result, "peak": {"fp32": 1e9}, "env": {"threads": {}}}})()

    results, peaks, _ = bb.run_rows(rows, config=None, peak_size=64, runner=runner)
    assert seen == ["train", "infer"]
    failed, ok = results
    assert failed["status"] == "failed" and "SIGKILL (out of memory?)" in failed["error"]
    assert failed["batch"] == 8 and "batch_used" not in failed  # no smaller batch was tried
    assert ok["status"] == "ok" and ok["mfu"] == pytest.approx(16 * ok["flops_per_image"] / 1e9)
    assert peaks == {"torch": {"fp32": 1e9}}


def test_out_of_memory_in_a_real_worker_fails_the_command_and_keeps_the_batch(tmp_path, repo_root):
    """An allocation far beyond the machine: the worker reports OOM, the row records the batch
    asked for, the command exits 1 with one line, and the record is still written."""
    batch = 2 ** 40
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "bench", "--quick", "--frameworks", "torch", "--models", "ours",
         "--modes", "infer", "--batch", str(batch), "--input-size", "32", "--peak-size", "64", "--quiet",
         "--out", str(tmp_path), "--storage", str(tmp_path / "store")],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"out of memory at batch {batch}" in proc.stderr and "never retries a smaller batch" in proc.stderr
    assert "Traceback" not in proc.stderr
    record = json.loads(next(tmp_path.glob("bench-*/bench.json")).read_text())
    (row,) = record["rows"]
    assert row["status"] == "failed" and row["oom"] is True and row["batch"] == batch
    assert record["peaks"]["torch"]["fp32"] > 0  # measured before the model, in the same worker
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.json"))


# ---- pytest-benchmark storage --------------------------------------------------------------------
def _record(median_step_s: float) -> dict:
    row = {"framework": "tf", "model": "ours", "mode": "train", "input": "synthetic", "batch": 8,
           "input_size": 64, "pooling": "global", "classes": 1000, "precision": "fp32", "layout": "nhwc",
           "compile": "eager", "warmup": 1, "repeats": 5, "steps": 2, "memory_steps": 1, "device": "auto"}
    row["id"] = bm.row_id(row)
    windows = [2 * median_step_s * f for f in (0.98, 1.0, 1.01, 0.99, 1.03)]
    timing = {"first_step_s": 3.0, "warmup_s": 3.0, "warmup_steps": 1, "repeats": 5, "steps": 2, "batch": 8,
              "window_s": windows, "throughput": bm.throughput_stats(windows, 16)}
    done = bm.finish_row(row, timing, {"kind": "cpu peak RSS (VmHWM)", "peak_bytes": 2**30}, batch_used=8,
                         device="cpu")
    failed = bm.failed_row({**row, "model": "reference", "id": "x"}, "out of memory", oom=True)
    return {"rows": [done, failed], "commit": {"id": "abc", "time": None, "dirty": False, "branch": "main"}}


def test_storage_round_trips_through_pytest_benchmarks_own_loader(tmp_path):
    from pytest_benchmark.logger import Logger
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import get_machine_id

    first = bb.save_storage(tmp_path, "twinbench", bb.storage_json(_record(0.1)))
    second = bb.save_storage(f"file://{tmp_path}", "twinbench", bb.storage_json(_record(0.2)))
    assert (first.name, second.name) == ("0001_twinbench.json", "0002_twinbench.json")
    assert first.parent.name == get_machine_id()
    storage = FileStorage(tmp_path, logger=Logger(Logger.QUIET), default_machine_id=get_machine_id())
    loaded = list(storage.load_benchmarks("0001"))
    assert len(loaded) == 1  # the failed row is not a benchmark
    bench = loaded[0]
    assert bench["fullname"] == "twinbench::tf/ours/train/synthetic/b8/64px/fp32/nhwc/eager"
    assert bench["median"] == pytest.approx(0.1) and bench["iterations"] == 2 and bench["rounds"] == 5
    assert bench["extra_info"]["images_per_s"] == pytest.approx(80.0)
    payload = json.loads(first.read_text())
    assert set(payload) >= {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert payload["machine_info"]["python_version"] and payload["commit_info"]["id"] == "abc"


def test_compare_flags_a_slower_run_with_pytest_benchmarks_checks(tmp_path):
    bb.save_storage(tmp_path, "base", bb.storage_json(_record(0.10)))
    _, stored = bb.load_stored(tmp_path, "0001")
    same, failures = bb.compare(bb.storage_json(_record(0.102)), stored, ["median:5%"])
    assert failures == [] and same[0]["change"] == pytest.approx(0.02)
    _, failures = bb.compare(bb.storage_json(_record(0.12)), stored, ["median:5%"])
    assert len(failures) == 1 and "PercentageRegressionCheck" in failures[0]
    with pytest.raises(UserError, match="FIELD:PERCENT"):
        bb.compare(bb.storage_json(_record(0.12)), stored, ["speed:fast"])
    with pytest.raises(UserError, match="no stored benchmark run"):
        bb.load_stored(tmp_path / "empty", None)


@pytest.mark.parametrize("stored_median, regressed", [(1e-7, True), (10.0, False)])
def test_pytest_benchmark_compare_reads_our_stored_files(tmp_path, stored_median, regressed):
    """``pytest --benchmark-compare/--benchmark-compare-fail`` against a file twinbench wrote."""
    (tmp_path / "test_step.py").write_text(textwrap.dedent("""
        import time

        def test_step(benchmark):
            benchmark.pedantic(time.sleep, args=(0.002,), rounds=5, iterations=1)
    """))
    entry = bb.pytest_benchmark_entry(name="test_step", fullname="test_step.py::test_step", group=None,
                                      data=[stored_median] * 5, iterations=1)
    payload = bb.storage_json({"rows": [], "commit": {}})
    payload["benchmarks"] = [entry]
    bb.save_storage(tmp_path / "store", "twinbench", payload)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_step.py", "-c", os.devnull, "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", f"--benchmark-storage=file://{tmp_path / 'store'}",
         "--benchmark-compare=0001", "--benchmark-compare-fail=median:5%"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "0001_twinbench" in out  # pytest-benchmark loaded our file and compared against it
    assert ("Performance has regressed" in out) is regressed
    assert (proc.returncode != 0) is regressed, out


def test_keras_on_torch_rows_run_in_their_worker_beside_the_port(tmp_path, repo_root):
    """A real bench row of the seed's Keras model on Keras' torch backend and one of our port, and
    the ratio between them in the record and the printed table."""
    out = subprocess.run([sys.executable, "-m", "bench.cli", "bench", "--frameworks", "torch,keras-torch",
                          "--models", "ours", "--modes", "train", "--batch", "2", "--input-size", "32",
                          "--pooling", "global", "--classes", "4", "--precision", "fp32", "--layout", "nhwc",
                          "--compile", "eager", "--warmup", "1", "--repeats", "5", "--steps", "1",
                          "--memory-steps", "1", "--peak-size", "64", "--no-save", "--out", str(tmp_path), "--quiet"],
                         cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(next(tmp_path.glob("bench-*/bench.json")).read_text())
    rows = {r["framework"]: r for r in record["rows"]}
    assert rows["keras-torch"]["status"] == "ok" and rows["keras-torch"]["images_per_s"] > 0
    assert rows["keras-torch"]["compile_label"] == "Keras eager" and "keras-torch" in record["environments"]
    assert record["environments"]["keras-torch"]["versions"]["backend"] == "torch"
    (ratio,) = record["arm_ratios"]
    assert ratio["kind"] == "keras-torch/torch" and ratio["low"] <= ratio["ratio"] <= ratio["high"]
    assert "keras-torch/torch train b2 32px fp32" in out.stdout
    # One profiled step of each torch-backed arm, and where the two differ.
    for fw in ("torch", "keras-torch"):
        prof = rows[fw]["op_profile"]
        assert prof["clock"] == "cpu" and prof["total_ms"] == pytest.approx(sum(o["self_ms"] for o in prof["ops"]))
        assert [o["self_ms"] for o in prof["ops"]] == sorted((o["self_ms"] for o in prof["ops"]), reverse=True)
        assert any("convolution" in o["name"] for o in prof["ops"]), prof["ops"]
    gaps = ratio["op_gaps"]
    assert gaps["total_ms"] == [rows["keras-torch"]["op_profile"]["total_ms"], rows["torch"]["op_profile"]["total_ms"]]
    excess = [o["excess_ms"] for o in gaps["ops"]]
    assert excess == sorted(excess, reverse=True) and all(e > 0 for e in excess)


# ---- the bench package stays framework-free ------------------------------------------------------
def test_bench_benchmark_and_gpu_check_import_no_framework_and_no_numpy(repo_root):
    code = ("import sys, bench.benchmark, bench.measure, torch_impl.gpu_check; "
            "print(sorted(m for m in ('numpy', 'torch', 'tensorflow', 'keras', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    cli = subprocess.run([sys.executable, "-c", "import sys, bench.cli; bench.cli.build_parser(); "
                          "print('torch_impl.gpu_check' in sys.modules, 'torch' in sys.modules)"],
                         cwd=repo_root, capture_output=True, text=True, check=True)
    assert cli.stdout.strip() == "False False"


def test_cli_lists_the_quick_matrix_and_rejects_bad_input(repo_root):
    def bench(*argv):
        return subprocess.run([sys.executable, "-m", "bench.cli", "bench", *argv], cwd=repo_root,
                              capture_output=True, text=True, timeout=60)

    listed = bench("--quick", "--list")
    assert listed.returncode == 0
    assert len(listed.stdout.split()) == 8 and "twinbench::torch/reference/infer/synthetic/b8/64px" in listed.stdout
    for argv, message in ((("--repeats", "3"), "at least 5"), (("--precision", "fp64"), "subset of"),
                          (("--data", "/nonexistent.json"), "no such manifest")):
        bad = bench(*argv, "--list")
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


# ---- the GPU check script ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_only_site(tmp_path_factory) -> Path:
    """This venv's site-packages without numpy, TensorFlow, Keras, pandas and the twinbench install:
    what the lent GPU machine has (PyTorch alone). torchvision then fails to import (it needs numpy)."""
    import site

    real = Path(site.getsitepackages()[0])
    out = tmp_path_factory.mktemp("torch-only-site")
    for entry in real.iterdir():
        if not entry.name.lower().startswith(("numpy", "tensorflow", "keras", "tf_keras", "pandas", "twinbench",
                                              "__editable__", "_twinbench")):
            (out / entry.name).symlink_to(entry)
    return out


def test_gpu_check_smoke_runs_from_the_source_tree_with_torch_alone(tmp_path, repo_root, torch_only_site):
    """``python3 torch_impl/gpu_check.py --smoke`` from another folder, with no site processing (no .pth,
    so no editable install) and only torch importable: it runs the rows, skips TF32 on the CPU,
    falls back to its torchvision copy, and writes $OUT/gpu_check.json."""
    # A checkout that ran ``make gpu-vendor`` has Keras in .gpu-vendor/site: name an empty folder instead.
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(torch_only_site), "OUT": str(tmp_path),
           "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), "TWINBENCH_GPU_VENDOR": str(tmp_path / "no-vendor")}
    proc = subprocess.run([sys.executable, "-S", str(repo_root / "torch_impl" / "gpu_check.py"), "--smoke", "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    assert payload["format"] == "twinbench.gpu-check" and payload["smoke"] is True
    assert payload["versions"]["torchvision"] is None and payload["versions"]["torch"]
    status = {(r["framework"], r["model"], r["mode"], r["precision"]): r["status"] for r in payload["rows"]}
    assert status == {("torch", "ours", "train", "fp32"): "ok", ("torch", "reference", "train", "fp32"): "ok",
                      ("torch", "ours", "infer", "bf16"): "ok", ("torch", "reference", "infer", "bf16"): "ok",
                      ("torch", "ours", "train", "tf32"): "skipped", ("torch", "reference", "train", "tf32"): "skipped",
                      # No Keras in a torch-only site: the arm's rows say what to do instead of failing.
                      ("keras-torch", "ours", "train", "fp32"): "skipped",
                      ("keras-torch", "ours", "infer", "bf16"): "skipped",
                      ("keras-torch", "ours", "train", "tf32"): "skipped"}
    kt = [r for r in payload["rows"] if r["framework"] == "keras-torch"]
    assert all("make gpu-vendor" in r["error"] for r in kt[:2]), kt
    ok = [r for r in payload["rows"] if r["status"] == "ok"]
    assert all(r["batch_used"] == 2 and r["mfu"] > 0 and r["memory"]["reset"] for r in ok)
    assert "copy" in next(r for r in ok if r["model"] == "reference")["model_label_full"]
    assert {q["kind"] for q in payload["ratios"]} == {"ours/reference"} and len(payload["ratios"]) == 2
    assert "ours/torchvision train fp32 eager: throughput" in proc.stdout


@pytest.mark.slow
def test_gpu_check_smoke_measures_the_keras_torch_arm_in_its_own_process(tmp_path, repo_root):
    """The keras-torch rows of ``gpu_check --smoke``: each in a child with Keras on the torch backend
    that imports neither TensorFlow nor our torch model; beside the port's rows, with a ratio."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(repo_root / "torch_impl" / "gpu_check.py"), "--smoke", "--quiet",
                           "--budget-s", "900", "--out", str(tmp_path / "g.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "g.json").read_text())
    kt = {(r["mode"], r["precision"]): r for r in payload["rows"] if r["framework"] == "keras-torch"}
    assert kt[("train", "fp32")]["status"] == "ok" and kt[("infer", "bf16")]["status"] == "ok"
    assert kt[("train", "tf32")]["status"] == "skipped"  # TF32 is CUDA's
    assert all(r["imported"] == {"tensorflow": False, "torch_impl.model": False}
               for r in kt.values() if r["status"] == "ok")
    assert all(r["memory"]["peak_bytes"] > 0 and r["mfu"] > 0 for r in kt.values() if r["status"] == "ok")
    assert {(q["kind"], q["mode"], q["precision"]) for q in payload["arm_ratios"]} == {
        ("keras-torch/torch", "train", "fp32"), ("keras-torch/torch", "infer", "bf16")}


def test_gpu_check_plans_the_anchor_settings_first_and_keeps_to_its_budget():
    from torch_impl import gpu_check

    rows = gpu_check.make_rows(gpu_check.settings(smoke=False, batch=None))
    assert {(r["batch"], r["input_size"], r["layout"]) for r in rows} == {(256, 224, "nhwc"), (8, 224, "nhwc")}
    # Per setting: our torch model, torchvision's, then the Keras model on the torch backend (eager only).
    assert [(r["framework"], r["model"]) for r in rows[:3]] == [("torch", "ours"), ("torch", "reference"),
                                                                ("keras-torch", "ours")]
    assert [(r["mode"], r["precision"], r["compile"]) for r in rows[:6:3]] == [("train", "tf32", "eager"),
                                                                             ("train", "bf16", "eager")]
    assert {r["compile"] for r in rows} == {"eager", "jit"} and {r["precision"] for r in rows} >= {"fp32", "tf32", "bf16"}
    assert {r["compile"] for r in rows if r["framework"] == "keras-torch"} == {"eager"}
    seed = [(r["framework"], r["precision"]) for r in rows if r["batch"] == 8]
    assert seed == [(fw, p) for p in ("fp32", "tf32", "bf16") for fw in ("torch", "torch", "keras-torch")]
    # The eager rows of both batches come before any torch.compile row (the budget skips from the end).
    first_jit = next(i for i, r in enumerate(rows) if r["compile"] == "jit")
    assert all(r["compile"] == "eager" for r in rows[:first_jit]) and rows[first_jit - 1]["batch"] == 8
    assert [r["framework"] for r in gpu_check.make_rows(gpu_check.settings(smoke=True, batch=None), ("torch",))] \
        == ["torch"] * 6
    # A compile row is estimated from its eager twin's steps plus the compile allowance.
    eager = {**rows[3], "status": "ok", "step_s": [0.1] * 5}
    jit = next(r for r in rows if r["compile"] == "jit" and r["mode"] == "train" and r["model"] == "ours")
    steps = jit["warmup"] + jit["repeats"] * jit["steps"] + jit["memory_steps"]
    assert gpu_check.estimate_s(jit, [eager]) == pytest.approx(steps * 0.1 * 1.5 + 200 + 2)
    anchors = gpu_check.anchor_ratios([{**rows[0], "status": "ok", "images_per_s": 1876.0}])
    assert anchors[0]["anchor"] == "tf32" and anchors[0]["ratio"] == pytest.approx(2.0)
