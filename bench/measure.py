"""Worker-side measurement, shared by ``tf_impl.benchmark``, ``torch_impl.benchmark`` and
``torch_impl/gpu_check.py``: the matrix's vocabulary, the timing loop, statistics, peak memory,
FLOPs and MFU, one row and the matmul peak (:func:`measure_row`, :func:`measure_peak`).

Framework-free and numpy-free at import (the GPU check runs where only PyTorch is installed).
The measurement rules are in docs/benchmark.md.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from bench.errors import UserError
from bench.quartiles import quartiles
from bench.spec import build_spec, resnet50_blocks

MODELS = ("ours", "reference")
MODES = ("train", "infer")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
GPU_ONLY_PRECISIONS = ("tf32", "fp16")
LAYOUTS = ("nhwc", "nchw")
COMPILES = ("eager", "jit")
MIN_REPEATS = 5  # the floor: median and IQR need at least five windows to mean anything

# What each axis value is, per framework (printed and stored with every row).
REFERENCE_MODELS = {"torch": "torchvision.models.resnet50", "tf": "keras.applications.ResNet50",
                    "keras-torch": "keras.applications.ResNet50 (torch backend)"}
COMPILE_LABELS = {("torch", "eager"): "eager", ("torch", "jit"): "torch.compile",
                  ("tf", "eager"): "tf.function", ("tf", "jit"): "tf.function+XLA",
                  ("keras-torch", "eager"): "Keras eager"}
LAYOUT_LABELS = {("torch", "nhwc"): "channels_last", ("torch", "nchw"): "NCHW",
                 ("tf", "nhwc"): "NHWC", ("tf", "nchw"): "NCHW", ("keras-torch", "nhwc"): "NHWC"}
# Peak-matmul dtype that bounds each precision (MFU divides by the matching peak).
PEAK_DTYPE = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}

# Targets from the issue, printed beside the measured ratios.
TARGET_OURS_VS_REFERENCE = 0.97
TARGET_END_TO_END = 0.95

# ---- statistics ---------------------------------------------------------------------------------
def summarize(data: Sequence[float]) -> dict[str, Any]:
    """pytest-benchmark's stats fields for ``data`` (seconds per step, one value per round)."""
    if not data:
        raise ValueError("no data to summarize")
    xs = sorted(data)
    n = len(xs)
    mean = statistics.fmean(xs)
    stddev = statistics.stdev(xs) if n > 1 else 0.0
    q1, _, q3 = quartiles(xs, "pytest-benchmark")  # stored IQRs mean what pytest-benchmark's do
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    total = math.fsum(xs)
    iqr_out = sum(1 for x in xs if x < low or x > high)
    std_out = sum(1 for x in xs if x < mean - stddev or x > mean + stddev)
    return {
        "min": xs[0], "max": xs[-1], "mean": mean, "stddev": stddev, "rounds": n,
        "median": statistics.median(xs), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": iqr_out, "stddev_outliers": std_out, "outliers": f"{std_out};{iqr_out}",
        "ld15iqr": next(x for x in xs if x >= low), "hd15iqr": next(x for x in reversed(xs) if x <= high),
        "ops": n / total if total else 0.0, "total": total,
    }


def throughput_stats(window_s: Sequence[float], images_per_window: int) -> dict[str, float]:
    """Images per second per window (images / synced window time); median and IQR over windows,
    and the overall figure: all images over all timed seconds."""
    rates = [images_per_window / t for t in window_s]
    q1, _, q3 = quartiles(rates, "pytest-benchmark")
    return {"median": statistics.median(rates), "q1": q1, "q3": q3, "iqr": q3 - q1,
            "min": min(rates), "max": max(rates),
            "overall": images_per_window * len(window_s) / math.fsum(window_s), "windows": rates}


# ---- the timing loop ------------------------------------------------------------------------------
Sync = Callable[[Any], None]


def time_steps(step: Callable[[], Any], sync: Sync, *, warmup: int, repeats: int, steps: int,
               batch: int, clock: Callable[[], float] = time.perf_counter,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Warm up, then time ``repeats`` windows of ``steps`` steps each.

    ``sync(last_output)`` runs before EVERY clock read: a device may still be working on steps
    the host already queued, and an unsynced clock times the queueing, not the work. Inside a
    window the steps run back to back (no sync), as in training. Warm-up is timed on its own:
    the first step (tracing, compilation) and the whole warm-up, never part of throughput.
    """
    if repeats < MIN_REPEATS:
        raise UserError(f"repeats={repeats}: at least {MIN_REPEATS} timed windows are needed for a median and IQR")
    if warmup < 1:
        raise UserError(f"warmup={warmup}: at least one warm-up step (the first one traces/compiles)")
    if steps < 1:
        raise UserError(f"steps={steps}: a window needs at least one step")
    sync(None)
    start = clock()
    out = step()
    sync(out)
    first = clock() - start
    for _ in range(warmup - 1):
        out = step()
    sync(out)
    warm = clock() - start
    windows: list[float] = []
    for r in range(repeats):
        sync(None)
        t0 = clock()
        for _ in range(steps):
            out = step()
        sync(out)
        windows.append(clock() - t0)
        if progress:
            progress(f"window {r + 1}/{repeats}: {batch * steps / windows[-1]:.1f} img/s")
    return {"first_step_s": first, "warmup_s": warm, "warmup_steps": warmup, "repeats": repeats,
            "steps": steps, "batch": batch, "window_s": windows,
            "throughput": throughput_stats(windows, batch * steps)}


def measure_memory(step: Callable[[], Any], sync: Sync, *, steps: int, reset: Callable[[], bool],
                   read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A separate loop after resetting the peak counters: the peak of steady-state steps only."""
    sync(None)
    reset_ok = reset()
    for _ in range(steps):
        out = step()
        sync(out)
    return {**read(), "reset": reset_ok, "steps": steps}


# ---- CPU memory: peak RSS ----------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS: ``echo 5 > /proc/self/clear_refs``
    (Linux >= 4.0). Returns whether the reset took (VmHWM now equals VmRSS, within a page or so);
    where it cannot, the peak read afterwards is the whole process lifetime's, and says so."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def read_peak_rss() -> dict[str, Any]:
    """Peak RSS in bytes: VmHWM where /proc has it, else getrusage's ru_maxrss (never reset)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return {"kind": "cpu peak RSS (VmHWM)", "peak_bytes": hwm * 1024,
                "current_bytes": (_status_kib("VmRSS") or 0) * 1024}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return {"kind": "cpu peak RSS (ru_maxrss, lifetime)", "peak_bytes": maxrss * scale, "current_bytes": None}


def oom_message(framework: str, batch: int, device: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (f"out of memory at batch {batch} on {device} ({framework}: {first}); "
            f"twinbench never retries a smaller batch: pass a smaller --batch yourself")


# ---- FLOPs and MFU --------------------------------------------------------------------------------
def reference_forward_flops(kind: str, input_size: int, classes: int) -> int:
    """Forward FLOPs (2 x MACs of convs and dense) per image of a framework's own ResNet-50.

    - ``keras``: ``keras.applications.ResNet50``: ResNet v1 like ours (stride on the first 1x1),
      but its stem pads the max pool (ZeroPadding2D(1)): 56x56 after the stem where ours has 55x55.
    - ``torchvision``: ResNet v1.5: stride on the 3x3, so each conv_block's first 1x1 runs at the
      input resolution; padded max pool (56x56); no conv biases (biases are not counted anyway).
    """
    if kind not in ("keras", "torchvision"):
        raise ValueError(f"unknown reference {kind!r}")
    s = (input_size + 6 - 7) // 2 + 1  # 7x7/2 conv with 3 pixels of padding, in both
    flops = 2 * s * s * 7 * 7 * 3 * 64
    s = (s + 2 - 3) // 2 + 1  # 3x3/2 max pool with 1 pixel of padding, in both
    for block in resnet50_blocks():
        stride = block.strides if block.kind == "conv_block" else 1
        out = (s - 1) // stride + 1
        f1, f2, f3 = block.filters
        first = s if kind == "torchvision" else out
        flops += 2 * first * first * block.in_channels * f1 + 2 * out * out * 9 * f1 * f2 + 2 * out * out * f2 * f3
        if block.kind == "conv_block":
            flops += 2 * out * out * block.in_channels * f3
        s = out
    return flops + 2 * 2048 * classes


def forward_flops(framework: str, model: str, input_size: int, classes: int, pooling: str,
                  arch: str = "resnet50") -> int:
    """Forward FLOPs per image of a row's model: ours from ``bench.spec``, references as above."""
    if model == "ours":
        return build_spec(arch, classes, input_size, pooling).forward_flops()
    return reference_forward_flops("torchvision" if framework == "torch" else "keras", input_size, classes)


def step_flops_per_image(framework: str, model: str, mode: str, input_size: int, classes: int,
                         pooling: str, arch: str = "resnet50") -> int:
    """Inference: the forward FLOPs; training: forward + backward, 3 x forward (the convention of
    ``bench.spec.train_flops``: the backward pass costs two forwards, data and weight gradients)."""
    fwd = forward_flops(framework, model, input_size, classes, pooling, arch)
    return 3 * fwd if mode == "train" else fwd


def mfu(images_per_s: float, flops_per_image: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the measured matmul peak of the same dtype."""
    if not peak_flops_per_s:
        return None
    return images_per_s * flops_per_image / peak_flops_per_s


def matmul_flops(n: int) -> int:
    return 2 * n ** 3


# ---- rows -----------------------------------------------------------------------------------------
def row_id(row: dict[str, Any]) -> str:
    """The stable name of a configuration: pytest-benchmark's ``fullname`` and compare's key."""
    model = row["model"] if row.get("arch", "resnet50") == "resnet50" or row["model"] != "ours" \
        else f"ours-{row['arch']}"
    return (f"twinbench::{row['framework']}/{model}/{row['mode']}/{row['input']}/b{row['batch']}/"
            f"{row['input_size']}px/{row['precision']}/{row['layout']}/{row['compile']}")


def new_row(*, framework: str, model: str, mode: str, input_kind: str, batch: int, input_size: int, pooling: str,
            classes: int, arch: str, precision: str, layout: str, comp: str, warmup: int, repeats: int, steps: int,
            memory_steps: int, device: str, manifest: str | None = None) -> dict[str, Any]:
    """One planned configuration, with its :func:`row_id`. ``pooling`` is our model's head: the
    references always pool globally. ``manifest``: end-to-end rows only."""
    row = {"framework": framework, "model": model, "mode": mode, "input": input_kind, "batch": batch,
           "input_size": input_size, "pooling": pooling if model == "ours" else "global", "classes": classes,
           "arch": arch, "precision": precision, "layout": layout, "compile": comp, "warmup": warmup,
           "repeats": repeats, "steps": steps, "memory_steps": memory_steps, "device": device}
    if manifest is not None:
        row["manifest"] = manifest
    row["id"] = row_id(row)
    return row


def skipped_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return {**row, "status": "skipped", "error": reason}


def finish_row(row: dict[str, Any], timing: dict[str, Any], memory: dict[str, Any], *, batch_used: int,
               device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A measured row: the configuration, what was fed, timing, throughput, FLOPs and memory."""
    flops = step_flops_per_image(row["framework"], row["model"], row["mode"], row["input_size"],
                                 row["classes"], row["pooling"], row.get("arch", "resnet50"))
    tp = timing["throughput"]
    return {**row, "status": "ok", "error": None, "batch_used": batch_used, "device": device,
            "compile_label": COMPILE_LABELS[(row["framework"], row["compile"])],
            "layout_label": LAYOUT_LABELS[(row["framework"], row["layout"])],
            "model_label": "ours" if row["model"] == "ours" else REFERENCE_MODELS[row["framework"]],
            "timing": timing, "images_per_s": tp["median"], "images_per_s_iqr": tp["iqr"],
            "step_s": [t / timing["steps"] for t in timing["window_s"]],
            "flops_per_image": flops, "achieved_flops_per_s": tp["median"] * flops,
            "memory": memory, **(extra or {})}


def failed_row(row: dict[str, Any], error: str, *, oom: bool = False, **extra: Any) -> dict[str, Any]:
    # The batch asked for stays the batch recorded: nothing is retried smaller.
    return {**row, "status": "failed", "error": error, "oom": oom, **extra}


# ---- one row and the matmul peak, shared by both workers ------------------------------------------
class Backend(Protocol):
    """What a framework supplies to :func:`measure_row` and :func:`measure_peak`, bound to one
    device (``tf_impl.benchmark.Backend``, ``torch_impl.benchmark.Backend``)."""

    framework: str
    label: str  # the device as recorded ("cpu x86_64", "cuda:0 NVIDIA H100 ...")
    gpu: bool
    sync: Sync

    def skip_reason(self, row: dict[str, Any]) -> str | None:
        """Why this row cannot run here (a GPU-only precision on the CPU, ...); None: it can."""

    def check_precision(self, precision: str) -> str | None: ...

    def use_tf32(self, enabled: bool) -> None:
        """TF32 on or off where it exists (a GPU); a no-op on the CPU."""

    def prepare(self, row: dict[str, Any]) -> None:
        """Process-wide switches the row needs (TF32, cuDNN autotuning)."""

    def synthetic_batch(self, row: dict[str, Any]) -> tuple[Any, Any]:
        """A device-resident (images, labels) batch: compute-only rows."""

    def pipeline_batches(self, row: dict[str, Any]) -> Callable[[], tuple[Any, Any]]:
        """Full batches from the manifest's training pipeline, endlessly: end-to-end rows."""

    def memory_in_use(self) -> int | None: ...

    def build_model(self, row: dict[str, Any]) -> tuple[Any, str]:
        """(model on the device in the row's layout, its full label)."""

    def make_step(self, model: Any, row: dict[str, Any], batches: Callable[[], tuple[Any, Any]]) -> Callable[[], Any]: ...

    def memory_counters(self) -> tuple[Callable[[], bool], Callable[[], dict[str, Any]]]: ...

    def is_oom(self, exc: BaseException) -> bool: ...

    def cleanup(self, row: dict[str, Any]) -> None:
        """Free what the row left (compiled graphs, cached blocks) once its model is dropped."""

    def op_profile(self, step: Callable[[], Any]) -> dict[str, Any]:
        """One warm step's time by op (``{"skipped": why}`` where the framework has no profiler)."""

    def matmul_step(self, precision: str, n: int) -> Callable[[], Any]:
        """An n x n @ n x n product of two device-resident operands in ``precision``'s dtype."""

    def threads(self) -> dict[str, int]: ...

    def versions(self) -> dict[str, Any]: ...

    def environment(self) -> dict[str, Any]:
        """The worker's framework, device, threads, versions and oneDNN switch, stored per run."""


def bench_task(args: dict[str, Any], backend: Backend, progress: Callable[[str], None]) -> dict[str, Any]:
    """The workers' ``bench_row`` task: the matmul peak first where ``args['peak']`` asks for it
    (before any model exists), then the row ``args['row']``."""
    peak = None
    if args.get("peak") is not None:
        peak = measure_peak(PRECISIONS, backend, int(args["peak"].get("size", 0)), progress)
    row = measure_row(args["row"], backend, progress)
    return {"row": row, "peak": peak, "env": backend.environment()}


def measure_row(row: dict[str, Any], backend: Backend,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure one configuration: warm-up, timed windows, then the memory loop. A row that cannot
    run here is skipped; out of memory is a failed row at the batch asked for."""
    reason = backend.skip_reason(row)
    if reason:
        return skipped_row(row, reason)
    backend.prepare(row)
    sync = backend.sync
    model = step = None
    extra: dict[str, Any] = {}
    try:
        if row["input"] == "pipeline":
            batches = backend.pipeline_batches(row)
            sync(None)
            t0 = time.perf_counter()
            first = batches()
            sync(first)  # TF without sync_devices waits by fetching the batch; torch's sync ignores it
            extra["first_batch_s"] = time.perf_counter() - t0
        else:
            x, y = backend.synthetic_batch(row)
            batches = lambda: (x, y)  # noqa: E731  (already on the device: compute-only)
            first = (x, y)
        batch_used = int(first[0].shape[0])
        before_model = backend.memory_in_use()
        # after the inputs: a batch that cannot fit fails before a model is built
        model, model_label = backend.build_model(row)
        step = backend.make_step(model, row, batches)
        timing = time_steps(step, sync, warmup=row["warmup"], repeats=row["repeats"], steps=row["steps"],
                            batch=batch_used, progress=progress)
        reset, read = backend.memory_counters()
        memory = measure_memory(step, sync, steps=row["memory_steps"], reset=reset, read=read)
        memory["before_model_bytes"] = before_model
        if row.get("op_profile"):  # after the timed windows and the memory loop: the step is warm
            extra["op_profile"] = backend.op_profile(step)
    except Exception as exc:
        if not backend.is_oom(exc):
            raise
        return failed_row(row, oom_message(backend.framework, row["batch"], backend.label, exc), oom=True,
                          device=backend.label)
    finally:
        # One process may run many rows (torch_impl/gpu_check.py): drop this row's model and step (with
        # its optimizer and compiled graph) before the backend frees memory, so the next row's
        # allocator peak holds only its own.
        del model, step
        backend.cleanup(row)
    extra.update(threads=backend.threads(), versions=backend.versions(), model_label_full=model_label)
    return finish_row(row, timing, memory, batch_used=batch_used, device=backend.label, extra=extra)


def measure_peak(dtypes: Sequence[str], backend: Backend, size: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """FLOP/s of a large square matmul per dtype (median of synced windows): the measured ceiling
    MFU divides by. fp32 runs with TF32 off, tf32 with it on (GPU); dtypes the device lacks are
    left out."""
    n = size or (8192 if backend.gpu else 2048)
    sync = backend.sync
    out: dict[str, float] = {}
    for name in dtypes:
        if backend.check_precision(name):
            continue
        backend.use_tf32(name == "tf32")
        step = backend.matmul_step(name, n)
        sync(step())
        t0 = time.perf_counter()
        sync(step())
        one = max(time.perf_counter() - t0, 1e-6)
        steps = max(1, min(50, int(0.2 / one)))  # windows of about 0.2 s
        timing = time_steps(step, sync, warmup=2, repeats=MIN_REPEATS, steps=steps, batch=1)
        out[name] = matmul_flops(n) * timing["throughput"]["median"]
        if progress:
            progress(f"peak {name}: {out[name] / 1e9:,.0f} GFLOP/s ({n}x{n} matmul)")
    backend.use_tf32(False)
    return out


def add_mfu(rows: list[dict[str, Any]], peaks: dict[str, dict[str, float]]) -> None:
    """MFU of every measured row, against the machine's peak for its dtype: the best matmul rate
    either framework reached in this run (each framework's own peak is stored too)."""
    machine = machine_peaks(peaks)
    for row in rows:
        if row.get("status") != "ok":
            continue
        dtype = PEAK_DTYPE[row["precision"]]
        peak = machine.get(dtype)
        own = peaks.get(row["framework"], {}).get(dtype)
        row["peak_dtype"] = dtype
        row["peak_flops_per_s"] = peak
        row["mfu"] = mfu(row["images_per_s"], row["flops_per_image"], peak)
        row["mfu_own_peak"] = mfu(row["images_per_s"], row["flops_per_image"], own)


def machine_peaks(peaks: dict[str, dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for per_fw in peaks.values():
        for dtype, value in per_fw.items():
            if value and value > out.get(dtype, 0.0):
                out[dtype] = value
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours / reference (throughput and per FLOP) for every configuration with both measured, and
    end-to-end / compute-only for every pipeline row."""
    ok = {r["id"]: r for r in rows if r.get("status") == "ok"}
    out = []
    for r in ok.values():
        if r["model"] != "ours":
            continue
        if r["input"] == "synthetic":
            ref = ok.get(row_id({**r, "model": "reference"}))
            if ref:
                tp = r["images_per_s"] / ref["images_per_s"]
                out.append({"kind": "ours/reference", "id": r["id"], "framework": r["framework"],
                            "mode": r["mode"], "throughput": tp,
                            "per_flop": tp * r["flops_per_image"] / ref["flops_per_image"],
                            "target": TARGET_OURS_VS_REFERENCE, "ours": r["images_per_s"],
                            "reference": ref["images_per_s"]})
        else:
            compute = ok.get(row_id({**r, "input": "synthetic"}))
            if compute:
                out.append({"kind": "end-to-end/compute-only", "id": r["id"], "framework": r["framework"],
                            "mode": r["mode"], "throughput": r["images_per_s"] / compute["images_per_s"],
                            "target": TARGET_END_TO_END, "ours": r["images_per_s"],
                            "reference": compute["images_per_s"]})
    return out


def arm_ratios(rows: list[dict[str, Any]], arm: str = "keras-torch") -> list[dict[str, Any]]:
    """``arm`` / each other framework, our model, the same mode, input, batch, size and precision:
    the ratio of median throughputs and a band from the quartiles (Q1/Q3 .. Q3/Q1: the ratio of
    any typical window of one to any typical window of the other)."""
    ok = [r for r in rows if r.get("status") == "ok" and r["model"] == "ours" and r["input"] == "synthetic"]
    # The same layout and compile too: keras-torch is NHWC eager, so torch's NCHW or torch.compile
    # rows are other settings, not other frameworks.
    key = ("mode", "batch", "input_size", "precision", "layout", "compile")
    out = []
    for a in (r for r in ok if r["framework"] == arm):
        for b in (r for r in ok if r["framework"] != arm and all(r[k] == a[k] for k in key)):
            ta, tb = a["timing"]["throughput"], b["timing"]["throughput"]
            out.append({"kind": f"{arm}/{b['framework']}", "id": a["id"], "other_id": b["id"],
                        **{k: a[k] for k in key}, "ratio": ta["median"] / tb["median"],
                        "low": ta["q1"] / tb["q3"], "high": ta["q3"] / tb["q1"],
                        "windows": [len(ta["windows"]), len(tb["windows"])],
                        "images_per_s": [ta["median"], tb["median"]]})
            gaps = op_gaps(a.get("op_profile"), b.get("op_profile"))
            if gaps:
                out[-1]["op_gaps"] = gaps
    return out


def op_gaps(arm: dict[str, Any] | None, other: dict[str, Any] | None, top: int = 8) -> dict[str, Any] | None:
    """Where one step of ``arm`` spends more time than one of ``other`` (two op profiles of the same
    configuration, ``op_profile`` of a row): the ops by excess self time, largest first. An op that
    only one side called counts 0 on the other (``listed`` says which)."""
    if not arm or not other or "ops" not in arm or "ops" not in other or arm.get("clock") != other.get("clock"):
        return None
    theirs = {o["name"]: o for o in other["ops"]}
    ours = {o["name"]: o for o in arm["ops"]}
    rows = []
    for name in dict.fromkeys([*ours, *theirs]):
        a, b = ours.get(name), theirs.get(name)
        rows.append({"name": name, "ms": [a["self_ms"] if a else 0.0, b["self_ms"] if b else 0.0],
                     "calls": [a["calls"] if a else None, b["calls"] if b else None],
                     "listed": [a is not None, b is not None]})
        rows[-1]["excess_ms"] = rows[-1]["ms"][0] - rows[-1]["ms"][1]
    rows.sort(key=lambda r: r["excess_ms"], reverse=True)
    return {"clock": arm["clock"], "total_ms": [arm["total_ms"], other["total_ms"]],
            "ops": [r for r in rows if r["excess_ms"] > 0][:top]}


def describe(row: dict[str, Any]) -> str:
    return (f"{row['framework']} {row['model']} {row['mode']} {row['input']} batch {row['batch']} "
            f"{row['input_size']}px {row['precision']} {row['layout']} {row['compile']}")
