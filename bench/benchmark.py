"""Throughput and memory of both frameworks, measured fairly, against their own ResNet-50s and the
machine's measured peak.

    twinbench bench --quick             # the subset `make run` uses: 64 px, fp32, eager (< 2 min, 2 cores)
    twinbench bench                     # the CPU matrix at 224 px, batch 8 (long: every jit row compiles)
    twinbench bench --batch 8,32 --precision fp32,bf16 --layout nhwc,nchw --compile eager,jit
    twinbench bench --precision fp32,tf32,bf16,fp16 --batch 256     # on a GPU
    twinbench bench --data runs/demo/manifest.json                  # adds the end-to-end rows
    twinbench bench --compare 0001 --compare-fail median:5%         # gate on a stored run

The command: plan the matrix, run each row in its own worker (``bench.measure`` measures it
there), print the table and ratios, store the record and pytest-benchmark's run file. The matrix
and the measurement rules are in docs/benchmark.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bench.errors import CheckFailed, UserError
from bench.frameworks import ARMS, FRAMEWORKS, KERAS_TORCH
from bench.measure import (COMPILE_LABELS, arm_ratios, COMPILES, LAYOUT_LABELS, LAYOUTS, MIN_REPEATS, MODELS, MODES,
                           PRECISIONS, REFERENCE_MODELS, add_mfu, describe, failed_row, machine_peaks, new_row, ratios,
                           summarize)
from bench.options import add_executor_options, add_worker_options, csv_choices, positive_int, worker_config
from bench.profiles import PROFILES
from bench.spec import build_spec


@dataclass(frozen=True)
class Settings:
    """One benchmark run's matrix and loop sizes. Defaults: the CPU matrix at the seed's size."""

    frameworks: tuple[str, ...] = FRAMEWORKS
    models: tuple[str, ...] = MODELS
    modes: tuple[str, ...] = MODES
    batches: tuple[int, ...] = (8,)  # the seed's batch
    precisions: tuple[str, ...] = ("fp32", "bf16")  # add tf32,fp16 on a GPU
    layouts: tuple[str, ...] = LAYOUTS
    compiles: tuple[str, ...] = COMPILES
    inputs: tuple[str, ...] = ("synthetic",)  # "pipeline" needs a manifest
    input_size: int = 224
    pooling: str = "avg7"  # ours; the references always pool globally (equal at 224 px)
    classes: int = 1000  # the seed keeps the 1000-way ImageNet head
    arch: str = "resnet50"  # our model's bench.spec architecture; the references are ResNet-50s
    warmup: int = 3  # steps before timing: tracing/compile, oneDNN/cuDNN autotuning, caches
    repeats: int = 5  # timed windows
    steps: int = 5  # steps per window
    memory_steps: int = 3  # steps of the separate memory loop
    device: str = "auto"  # auto: the first GPU if the framework sees one, else the CPU
    manifest: str | None = None
    peak_size: int = 0  # matmul side for the machine peak; 0: 2048 on CPU, 8192 on GPU

    def with_(self, **changes: Any) -> "Settings":
        return Settings(**{**self.__dict__, **changes})


QUICK = Settings(**PROFILES["quick"].bench)  # make run's subset (bench.profiles)


def plan(settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows to run, and notes on combinations left out (and why).

    Ours and the reference of one configuration run back to back, so drift (thermal, other load)
    hits both sides of a ratio alike.
    """
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    if "pipeline" in settings.inputs and not settings.manifest:
        raise UserError("end-to-end rows need a manifest: pass --data MANIFEST (twinbench manifest writes one)")
    if "nchw" in settings.layouts and "tf" in settings.frameworks:
        notes.append("tf nchw left out: Keras on CPU convolves NHWC only and our Keras model is NHWC")
    if KERAS_TORCH in settings.frameworks and ("nchw" in settings.layouts or "jit" in settings.compiles):
        notes.append(f"{KERAS_TORCH} nchw and jit left out: the Keras model is NHWC, and Keras' jit_compile on "
                     "the torch backend is not measured")
    for fw in settings.frameworks:
        for input_kind in settings.inputs:
            for mode in settings.modes:
                if input_kind == "pipeline" and mode != "train":
                    continue  # end-to-end is a training figure (the target)
                for batch in settings.batches:
                    for precision in settings.precisions:
                        for layout in settings.layouts:
                            if fw in ("tf", KERAS_TORCH) and layout == "nchw":
                                continue
                            for comp in settings.compiles:
                                if fw == KERAS_TORCH and comp != "eager":
                                    continue
                                for model in settings.models:
                                    if input_kind == "pipeline" and model != "ours":
                                        continue
                                    rows.append(new_row(
                                        framework=fw, model=model, mode=mode, input_kind=input_kind, batch=batch,
                                        input_size=settings.input_size, pooling=settings.pooling,
                                        classes=settings.classes, arch=settings.arch, precision=precision,
                                        layout=layout, comp=comp, warmup=settings.warmup, repeats=settings.repeats,
                                        steps=settings.steps, memory_steps=settings.memory_steps,
                                        device=settings.device,
                                        manifest=settings.manifest if input_kind == "pipeline" else None))
    if KERAS_TORCH in settings.frameworks:
        # Where the zero-code port's step goes, beside the port's: one profiled step after the timing
        # (bench.measure.op_gaps; torch.profiler, so the two torch-backed arms).
        for row in rows:
            if row["framework"] in ("torch", KERAS_TORCH) and row["model"] == "ours" and row["input"] == "synthetic":
                row["op_profile"] = True
    return rows, notes


def mfu_notes(rows: list[dict[str, Any]]) -> list[str]:
    """A warning where an MFU exceeds 100%: the matmul peak it divides by was measured low
    (seen here when other work shared the cores while the peak ran), so no MFU of the run is
    trustworthy."""
    over = [r for r in rows if (r.get("mfu") or 0) > 1.0]
    if not over:
        return []
    worst = max(over, key=lambda r: r["mfu"])
    return [f"MFU above 100% in {len(over)} row(s) (worst {worst['mfu']:.0%}: {describe(worst)}): the matmul peak "
            f"was measured low, probably while other work shared the machine; rerun on a quiet machine"]


def best_settings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per framework and mode, the fastest measured setting of our model (compute-only)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r.get("status") == "ok" and r["model"] == "ours" and r["input"] == "synthetic":
            key = (r["framework"], r["mode"])
            if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
                best[key] = r
    return [best[k] for k in sorted(best)]


# ---- running the matrix -------------------------------------------------------------------------
Runner = Callable[..., Any]


def run_rows(rows: list[dict[str, Any]], config: Any, *, peak_size: int,
             runner: Runner | None = None, log: Callable[[str], None] | None = None,
             timeout: float | None = None,
             on_row: Callable[[list, dict, dict], None] | None = None,
             ) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]], dict[str, Any]]:
    """Run each row in its own worker; a worker failure becomes a failed row, never an abort.

    The first row of each framework also measures that framework's matmul peak (before it
    builds its model), which saves a worker start; a later row retries if that one crashed.
    ``on_row(results, peaks, envs)`` runs after every row (the command saves progress there).
    Returns (rows, peaks per framework, environment per framework).
    """
    from bench.errors import WorkerError
    from bench.executor import Job, run_job

    if runner is None:
        def runner(fw: str, task: str, args: dict[str, Any], *, config: Any, timeout: float | None) -> Any:
            # One group: on Ray every row runs on the node the first one ran on (one machine's figures).
            return run_job(config, Job(fw, task, args, timeout=timeout, manifest="row.manifest", group="bench",
                                       gpus=1 if str(args["row"].get("device", "cpu")).startswith("cuda") else 0))
    log = log or (lambda msg: None)
    results: list[dict[str, Any]] = []
    peaks: dict[str, dict[str, float]] = {}
    envs: dict[str, Any] = {}
    started = time.monotonic()
    for i, row in enumerate(rows):
        fw = row["framework"]
        args: dict[str, Any] = {"row": row}
        if fw not in peaks:
            args["peak"] = {"size": peak_size}
        eta = ""
        if i:
            per_row = (time.monotonic() - started) / i
            eta = f", about {per_row * (len(rows) - i):.0f} s left"
        log(f"[{i + 1}/{len(rows)}] {describe(row)}{eta}")
        try:
            done = runner(fw, "bench_row", args, config=config, timeout=timeout)
            out = done.result
        except WorkerError as exc:
            results.append(failed_row(row, str(exc).splitlines()[0]))
            log(f"    failed: {results[-1]['error']}")
            if on_row:
                on_row(results, peaks, envs)
            continue
        if out.get("peak"):
            peaks[fw] = out["peak"]
        envs.setdefault(fw, out.get("env", {}))
        # The row as planned (a Ray node read the manifest from its own copy, at its own path),
        # and where it ran when that was not here.
        result = {**{k: v for k, v in out["row"].items() if k != "data_root"},
                  **({"manifest": row["manifest"]} if "manifest" in row else {})}
        if getattr(done, "executor", None):
            result["executor"] = done.executor
        results.append(result)
        if result["status"] == "ok":
            log(f"    {result['images_per_s']:.2f} img/s (IQR {result['images_per_s_iqr']:.2f}), "
                f"first step {result['timing']['first_step_s']:.2f} s, batch {result['batch_used']}")
        else:
            log(f"    {result['status']}: {result['error']}")
        if on_row:
            on_row(results, peaks, envs)
    add_mfu(results, peaks)
    return results, peaks, envs



def thread_summary(envs: dict[str, Any]) -> dict[str, Any]:
    threads = {fw: env.get("threads", {}) for fw, env in envs.items()}
    intra = {t.get("intra_op") for t in threads.values()}
    return {"per_framework": threads, "equal": len(intra) == 1}


# ---- records and pytest-benchmark storage ---------------------------------------------------------
RECORD_FORMAT = "twinbench.bench"
RECORD_VERSION = 1


def make_record(settings: Settings, rows: list[dict[str, Any]], peaks: dict[str, dict[str, float]],
                envs: dict[str, Any], notes: list[str], threads: int | None) -> dict[str, Any]:
    from bench import envelope

    versions = {fw: env.get("versions", {}) for fw, env in envs.items() if isinstance(env, dict)}
    return envelope.record(RECORD_FORMAT, RECORD_VERSION, {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
        "threads_requested": threads, "threads": thread_summary(envs), "environments": envs,
        "peaks": peaks, "machine_peaks": machine_peaks(peaks), "notes": notes + mfu_notes(rows),
        "rows": rows, "ratios": ratios(rows), "arm_ratios": arm_ratios(rows),
        "best": [{"framework": r["framework"], "mode": r["mode"], "id": r["id"], "images_per_s": r["images_per_s"],
                  "mfu": r.get("mfu")} for r in best_settings(rows)],
    }, versions=versions)


def _pytest_benchmark():
    try:
        import pytest_benchmark  # noqa: F401  (imports pytest; only the orchestrator needs it)
        from pytest_benchmark import plugin, utils
    except ImportError:
        raise UserError("pytest-benchmark is not installed: pip install 'pytest-benchmark>=4.0'") from None
    return pytest_benchmark, plugin, utils


def pytest_benchmark_entry(*, name: str, fullname: str, group: str, data: Sequence[float], iterations: int,
                           params: dict[str, Any] | None = None, extra_info: dict[str, Any] | None = None,
                           options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One benchmark in pytest-benchmark's JSON: ``data`` is seconds per call, one per round
    (here: per step, one per timed window of ``iterations`` steps, as the fixture divides)."""
    stats = summarize(data)
    stats["data"] = list(data)
    stats["iterations"] = iterations
    params = params or {}
    return {"group": group, "name": name, "fullname": fullname, "params": params,
            "param": "-".join(str(v) for v in params.values()) or None,
            "extra_info": extra_info or {}, "options": options or {}, "stats": stats}


def row_entry(row: dict[str, Any]) -> dict[str, Any]:
    params = {k: row[k] for k in ("precision", "layout", "compile")}
    extra = {k: row.get(k) for k in ("framework", "model", "mode", "input", "batch", "batch_used", "input_size",
                                      "pooling", "classes", "device", "model_label", "compile_label",
                                      "layout_label", "images_per_s", "images_per_s_iqr", "flops_per_image",
                                      "mfu", "peak_dtype", "peak_flops_per_s")}
    extra["first_step_s"] = row["timing"]["first_step_s"]
    extra["warmup_s"] = row["timing"]["warmup_s"]
    extra["memory_peak_bytes"] = row["memory"].get("peak_bytes")
    extra["memory_kind"] = row["memory"].get("kind")
    return pytest_benchmark_entry(
        name=f"{row['model']}[{params['precision']}-{params['layout']}-{params['compile']}]",
        fullname=row["id"],
        group=f"{row['framework']} {row['mode']} {row['input']} b{row['batch']} {row['input_size']}px",
        data=row["step_s"], iterations=row["timing"]["steps"], params=params, extra_info=extra,
        options={"timer": "perf_counter", "warmup": row["timing"]["warmup_steps"], "min_rounds": MIN_REPEATS,
                 "disable_gc": False, "device_sync": True})


def storage_json(record: dict[str, Any]) -> dict[str, Any]:
    """The record in pytest-benchmark's saved-run format: machine_info (pytest-benchmark's own,
    so comparisons on one machine do not warn), commit_info, benchmarks (measured rows), datetime,
    version. Failed rows are left out, as pytest-benchmark leaves out errored benchmarks."""
    import datetime

    pb, plugin, _ = _pytest_benchmark()
    commit = record.get("commit") or {}
    return {
        "machine_info": plugin.pytest_benchmark_generate_machine_info(),
        "commit_info": {"id": commit.get("id") or "unversioned", "time": commit.get("time"),
                        "author_time": commit.get("time"), "dirty": bool(commit.get("dirty")),
                        "project": "twinbench", "branch": commit.get("branch") or "(unknown)"},
        "benchmarks": [row_entry(r) for r in record["rows"] if r.get("status") == "ok"],
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": pb.__version__,
    }


def storage_dir(storage: str | os.PathLike) -> Path:
    """``--benchmark-storage``'s folder plus pytest-benchmark's machine id (``Linux-CPython-3.11-64bit``)."""
    _, _, utils = _pytest_benchmark()
    text = str(storage)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text) / utils.get_machine_id()


def save_storage(storage: str | os.PathLike, name: str, payload: dict[str, Any]) -> Path:
    """Save as pytest-benchmark's ``--benchmark-save=NAME`` does: ``NNNN_NAME.json``, numbered
    after the highest existing run, written atomically."""
    from bench import atomic

    folder = storage_dir(storage)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:4]) for p in folder.glob("[0-9][0-9][0-9][0-9]_*.json")]
    path = folder / f"{max(numbers, default=0) + 1:04d}_{name}.json"
    atomic.write_json(path, payload)
    return path


def load_stored(storage: str | os.PathLike, ref: str | None, *, exclude: Path | None = None) -> tuple[Path, dict]:
    """A stored run: ``ref`` as pytest-benchmark's ``--benchmark-compare`` takes it (a run number
    such as 0001, a glob, or a file); None: the latest run before ``exclude``."""
    import json

    folder = storage_dir(storage)
    if ref and Path(ref).is_file():
        files = [Path(ref)]
    else:
        pattern = f"{ref}*.json" if ref else "[0-9][0-9][0-9][0-9]_*.json"
        files = sorted(p for p in folder.glob(pattern) if exclude is None or p.resolve() != exclude.resolve())
    if not files:
        raise UserError(f"no stored benchmark run matches {ref or 'the latest'} in {folder}: "
                        f"run twinbench bench (or pytest --benchmark-save) first")
    path = files[-1]
    try:
        data = json.loads(path.read_text())
        data["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a pytest-benchmark run file") from None
    return path, data


def compare(current: dict[str, Any], stored: dict[str, Any], checks: Iterable[str]) -> tuple[list[dict], list[str]]:
    """Rows of ``current`` (storage JSON) against ``stored`` matched by fullname, with
    pytest-benchmark's own regression checks (``median:5%``, ``mean:0.001``).
    Returns (comparison lines, failure messages)."""
    _, _, utils = _pytest_benchmark()
    parsed = []
    for text in checks:
        try:
            parsed.append(utils.parse_compare_fail(text))
        except Exception:
            raise UserError(f"--compare-fail {text!r}: expected FIELD:PERCENT% or FIELD:DIFFERENCE with FIELD "
                            f"one of min, max, mean, median, stddev, iqr (e.g. median:5%)") from None
    before = {b["fullname"]: b["stats"] for b in stored["benchmarks"]}
    lines, failures = [], []
    for bench in current["benchmarks"]:
        old = before.get(bench["fullname"])
        if old is None:
            continue
        now = bench["stats"]
        change = now["median"] / old["median"] - 1 if old.get("median") else float("inf")
        lines.append({"fullname": bench["fullname"], "median_s": now["median"], "stored_median_s": old["median"],
                      "change": change})
        for check in parsed:
            message = check.fails(now, old)
            if message:
                failures.append(f"{bench['fullname']}: {message}")
    return lines, failures


# ---- output ---------------------------------------------------------------------------------------
def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_report(record: dict[str, Any]) -> str:
    """The rows, the ratios the issue's targets are stated in, the best setting per framework."""
    lines = []
    peaks = record["machine_peaks"]
    if peaks:
        lines.append("machine peak (matmul): " + ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in sorted(peaks.items())))
    th = record["threads"]
    lines.append("threads (intra/inter-op): " + ", ".join(
        f"{fw} {t.get('intra_op')}/{t.get('inter_op')}" for fw, t in sorted(th["per_framework"].items()))
        + ("" if th["equal"] else "  WARNING: not equal"))
    header = (f"{'framework':<9} {'model':<9} {'mode':<5} {'input':<9} {'batch':>5} {'prec':<4} {'layout':<13} "
              f"{'compile':<15} {'img/s':>8} {'IQR':>6} {'ms/step':>8} {'warm-up s':>9} {'MFU':>6} {'peak MB':>8}")
    lines += ["", header, "-" * len(header)]
    for r in record["rows"]:
        fw = r["framework"]
        head = (f"{fw:<9} {r['model']:<9} {r['mode']:<5} {r['input']:<9} {r['batch']:>5} {r['precision']:<4} "
                f"{LAYOUT_LABELS[(fw, r['layout'])]:<13} {COMPILE_LABELS[(fw, r['compile'])]:<15}")
        if r.get("status") != "ok":
            lines.append(f"{head} {r.get('status', 'failed').upper()}: {r.get('error')}")
            continue
        step_ms = 1000 * statistics.median(r["step_s"])
        lines.append(f"{head} {r['images_per_s']:>8.2f} {r['images_per_s_iqr']:>6.2f} {step_ms:>8.1f} "
                     f"{r['timing']['warmup_s']:>9.2f} {_pct(r.get('mfu')):>6} {_mb(r['memory'].get('peak_bytes')):>8}")
    mem_kinds = sorted({r["memory"]["kind"] for r in record["rows"] if r.get("status") == "ok"})
    if mem_kinds:
        lines.append(f"peak MB: {', '.join(mem_kinds)}, of a separate loop after resetting the peak counters")
    if record.get("arm_ratios"):
        lines += ["", "Keras on torch against the other frameworks (our model; median ratio, band Q1/Q3..Q3/Q1):"]
        for q in record["arm_ratios"]:
            lines.append(f"  {q['kind']} {q['mode']} b{q['batch']} {q['input_size']}px {q['precision']}: "
                         f"{q['ratio']:.3f}x [{q['low']:.3f}-{q['high']:.3f}] "
                         f"({q['images_per_s'][0]:.2f} vs {q['images_per_s'][1]:.2f} img/s)")
            if q.get("op_gaps"):
                g = q["op_gaps"]
                lines.append(f"    one profiled step {g['total_ms'][0]:.0f} vs {g['total_ms'][1]:.0f} ms; most excess: " +
                             ", ".join(f"{o['name']} +{o['excess_ms']:.0f} ms" for o in g["ops"][:4]))
    if record["ratios"]:
        lines += ["", "ratios (target in brackets):"]
        for q in record["ratios"]:
            verdict = "ok" if q["throughput"] >= q["target"] else "BELOW TARGET"
            r = next(x for x in record["rows"] if x["id"] == q["id"])
            what = f"{q['framework']} {q['mode']} b{r['batch']} {r['precision']} {r['layout']} {r['compile']}"
            if q["kind"] == "ours/reference":
                lines.append(f"  ours/{REFERENCE_MODELS[q['framework']]} {what}: throughput {q['throughput']:.3f}x, "
                             f"per FLOP {q['per_flop']:.3f}x [>= {q['target']}] {verdict}")
            else:
                first = r.get("first_batch_s")
                lines.append(f"  end-to-end/compute-only {what}: {q['throughput']:.3f}x [>= {q['target']}] {verdict}"
                             + (f" (first batch after {first:.2f} s)" if first is not None else ""))
    best = best_settings(record["rows"])
    if best:
        lines += ["", "best setting of our model:"]
        for r in best:
            lines.append(f"  {r['framework']} {r['mode']}: {r['precision']} {LAYOUT_LABELS[(r['framework'], r['layout'])]} "
                         f"{COMPILE_LABELS[(r['framework'], r['compile'])]} batch {r['batch']}: "
                         f"{r['images_per_s']:.2f} img/s, MFU {_pct(r.get('mfu'))}")
    for note in record["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# ---- command ------------------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    import argparse

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, received {text!r}")
    return values


def register(sub) -> None:
    p = sub.add_parser("bench", help="throughput, memory and MFU of both frameworks vs their own ResNet-50s",
                       description=__doc__.split("\n\n")[0])
    d = Settings()
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="start from a profile's subset (bench.profiles): quick, what make run measures (64 px, "
                        "batch 8, fp32, eager, both models and modes); seed, the seed's conditions (224 px, "
                        "batch 8, fp32 and bf16, NHWC, eager); default: the full matrix")
    p.add_argument("--quick", dest="profile", action="store_const", const="quick", help="--profile quick")
    p.add_argument("--frameworks", type=csv_choices(ARMS),
                   help=f"default tf,torch; {KERAS_TORCH}: the seed's Keras model on Keras 3's torch backend")
    p.add_argument("--models", type=csv_choices(MODELS), help="ours, reference (torchvision / keras.applications); default both")
    p.add_argument("--modes", type=csv_choices(MODES), help="train, infer; default both")
    p.add_argument("--batch", type=_int_list, help=f"batch sizes, e.g. 8,32 (default {d.batches[0]})")
    p.add_argument("--precision", type=csv_choices(PRECISIONS),
                   help="fp32, tf32 (GPU), bf16 (mixed), fp16 (mixed, GPU); default fp32,bf16")
    p.add_argument("--layout", type=csv_choices(LAYOUTS), help="nhwc (torch channels_last), nchw (torch only); default both")
    p.add_argument("--compile", type=csv_choices(COMPILES), help="eager, jit (torch.compile / XLA); default both")
    p.add_argument("--input-size", type=positive_int, help=f"square input size (default {d.input_size}; quick 64)")
    p.add_argument("--pooling", choices=("avg7", "global"), help="our head: avg7 (seed, 197..228 px) or global")
    p.add_argument("--classes", type=positive_int, help=f"head size (default {d.classes}, as the seed)")
    from bench.spec import MODELS as ARCHS
    p.add_argument("--model", dest="arch", choices=sorted(ARCHS),
                   help="our model's architecture (default resnet50); the references stay ResNet-50")
    p.add_argument("--data", metavar="MANIFEST", help="also time end-to-end training on this manifest's pipeline")
    p.add_argument("--warmup", type=positive_int, help=f"warm-up steps, timed apart (default {d.warmup})")
    p.add_argument("--repeats", type=positive_int, help=f"timed windows, at least {MIN_REPEATS} (default {d.repeats})")
    p.add_argument("--steps", type=positive_int, help=f"steps per window (default {d.steps})")
    p.add_argument("--memory-steps", type=positive_int, help=f"steps of the memory loop (default {d.memory_steps})")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), help="auto: a GPU where the framework sees one")
    p.add_argument("--peak-size", type=positive_int, help="matmul side for the peak (default 2048 CPU, 8192 GPU)")
    p.add_argument("--out", default="runs", help="directory for the run record (default runs/)")
    p.add_argument("--storage", default=".benchmarks",
                   help="pytest-benchmark storage folder (default .benchmarks, as pytest --benchmark-save)")
    p.add_argument("--save", default="twinbench", metavar="NAME", help="stored run name (NNNN_NAME.json)")
    p.add_argument("--no-save", action="store_true", help="do not add this run to the storage")
    p.add_argument("--compare", nargs="?", const="", metavar="RUN",
                   help="compare with a stored run (0001, a glob or a file; default the latest)")
    p.add_argument("--compare-fail", action="append", default=[], metavar="EXPR",
                   help="fail (exit 1) on a regression, e.g. median:5%% (pytest-benchmark's syntax); repeatable")
    p.add_argument("--list", action="store_true", help="print the planned rows and exit")
    p.add_argument("--timeout", type=positive_int, default=1800, help="seconds a row may take (default 1800)")
    add_worker_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_bench)


def settings_from_args(args) -> Settings:
    base = Settings(**PROFILES[args.profile].bench) if args.profile else Settings()
    changes: dict[str, Any] = {}
    for arg, key in (("frameworks", "frameworks"), ("models", "models"), ("modes", "modes"), ("batch", "batches"),
                     ("precision", "precisions"), ("layout", "layouts"), ("compile", "compiles"),
                     ("input_size", "input_size"), ("pooling", "pooling"), ("classes", "classes"), ("arch", "arch"),
                     ("warmup", "warmup"), ("repeats", "repeats"), ("steps", "steps"),
                     ("memory_steps", "memory_steps"), ("device", "device"), ("peak_size", "peak_size")):
        value = getattr(args, arg, None)
        if value is not None:
            changes[key] = value
    if args.data:
        if not Path(args.data).is_file():
            raise UserError(f"{args.data}: no such manifest file (twinbench manifest DATA_DIR -o FILE writes one)")
        changes["manifest"] = str(Path(args.data).resolve())
        changes["inputs"] = ("synthetic", "pipeline")
    settings = base.with_(**changes)
    if settings.input_size != 224 and args.pooling is None and settings.pooling == "avg7":
        settings = settings.with_(pooling="global")  # avg7 is the seed's 224 px head only
    if settings.repeats < MIN_REPEATS:
        raise UserError(f"--repeats {settings.repeats}: at least {MIN_REPEATS} windows give a median and IQR")
    build_spec(settings.arch, settings.classes, settings.input_size, settings.pooling)  # validates size/pooling
    return settings


def cmd_bench(args) -> int:
    """Plan, run each row in its worker, print the table and ratios, store record and storage."""
    if args.list:
        rows, notes = plan(settings_from_args(args))
        for row in rows:
            print(row["id"])
        for note in notes:
            print(f"note: {note}")
        return 0
    return bench(args)[1]


def bench(args) -> tuple[Path, int]:
    """``twinbench bench`` as a function (``twinbench run`` calls it too): the record it wrote
    (``OUT/bench-.../bench.json``, rewritten after every row) and the exit status of the
    --compare-fail check. Raises CheckFailed when a row failed, after the record is saved.
    With ``--executor ray`` every row is a Ray task, one after another, all on one node."""
    from bench import executor

    with executor.for_command(args):  # a Ray cluster it started stops with it
        return _bench(args)


def _bench(args) -> tuple[Path, int]:
    from bench import atomic, envelope

    settings = settings_from_args(args)
    rows, notes = plan(settings)
    if settings.manifest:
        from bench.dataset import load_manifest

        load_manifest(settings.manifest)  # sizes and hashes, once; the workers check sizes only
    config = worker_config(args)
    # Equal threads on both sides: the same explicit count, all cores unless told otherwise.
    config.threads = args.threads or os.cpu_count() or 1
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    record_path = atomic.create_unique_dir(Path(args.out), "bench") / "bench.json"

    def save(results: list, peaks: dict, envs: dict, *, complete: bool = False) -> dict[str, Any]:
        # Rewritten after every row: an interrupted or crashed run keeps what it measured.
        add_mfu(results, peaks)
        record = make_record(settings, results, peaks, envs, notes, config.threads)
        record.update(wall_s=time.monotonic() - started, complete=complete, planned=len(rows))
        envelope.write(record_path, record)
        return record

    results, peaks, envs = run_rows(rows, config, peak_size=settings.peak_size, log=log, timeout=args.timeout,
                                    on_row=save)
    record = save(results, peaks, envs, complete=True)
    # pytest-benchmark's format only where it is used (it asks pytest-benchmark for machine_info).
    payload = storage_json(record) if not args.no_save or args.compare is not None else None
    stored_path = None
    if payload and not args.no_save and payload["benchmarks"]:
        stored_path = save_storage(args.storage, args.save, payload)
    print(format_report(record))
    print(f"\nwrote {record_path}" + (f" and {stored_path}" if stored_path else "")
          + f" ({record['wall_s']:.0f} s)")
    status = 0
    if args.compare is not None:
        path, stored = load_stored(args.storage, args.compare or None, exclude=stored_path)
        lines, failures = compare(payload, stored, args.compare_fail)
        print(f"\ncompared with {path}:")
        for line in lines:
            print(f"  {line['fullname']}: median step {1000 * line['median_s']:.1f} ms vs "
                  f"{1000 * line['stored_median_s']:.1f} ms ({100 * line['change']:+.1f}%)")
        if not lines:
            print("  no benchmark in common")
        if failures:
            print("Performance has regressed:\n" + "\n".join(f"  {f}" for f in failures))
            status = 1
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(results)} benchmark rows failed (first: {failed[0]['id']}: "
                          f"{failed[0]['error']}); the record is in {record_path}")
    return record_path, status
