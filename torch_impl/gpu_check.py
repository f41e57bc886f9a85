"""GPU check: our torch ResNet-50 against torchvision's, and the seed's Keras model on Keras 3's torch
backend (the keras-torch arm), on a lent NVIDIA GPU (an H200) with PyTorch and no TensorFlow.

    python3 torch_impl/gpu_check.py          # or: python3 -m torch_impl.gpu_check, or: make gpu-check
    python3 torch_impl/gpu_check.py --smoke  # a tiny CPU run of the same code (what the tests run)
    python3 torch_impl/gpu_check.py --arms torch   # without the keras-torch rows

The keras-torch rows run one child process each (``KERAS_BACKEND=torch``; the child imports Keras and
torch's device layer, never our torch model). Keras is not on the lent machine: ``make gpu-vendor``
unpacks Keras and the two of its needs the machine lacks (namex, optree for its Python 3.12) into
``.gpu-vendor/site``, which travels with the tree (``carry``) and goes first on the child's path.

Runs from the source tree on a machine with PyTorch alone (no TensorFlow, maybe no numpy or
torchvision); imports only the standard library, ``bench.measure`` (stdlib-only at import) and,
inside ``main``, ``torch_impl``. What it measures, its time budget and its anchor figures are in
docs/benchmark.md; the JSON goes to ``$OUT/gpu_check.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the source tree importable, nothing installed
    _HERE = Path(__file__).resolve().parent
    # Python put this folder first on sys.path: its modules (benchmark, data, model, ...) would
    # then shadow top-level names; import them as torch_impl.* from the source tree instead.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

from bench import measure as bm  # noqa: E402  (stdlib-only at import)

FORMAT = "twinbench.gpu-check"
VERSION = 1
# NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5, 1x A100 80GB, batch 256, training img/s.
ANCHORS = {"tf32": 938.0, "amp": 2470.0}
COMPILE_ESTIMATE_S = {"train": 200.0, "infer": 100.0}  # torch.compile of ResNet-50: a generous guess, so
# that a compile row starts only when it will end within the budget even if slow

# (mode, precision, compile) in priority order: the anchors' settings first, torch.compile last.
FULL_PLAN = [
    ("train", "tf32", "eager"), ("train", "bf16", "eager"),
    ("infer", "tf32", "eager"), ("infer", "bf16", "eager"),
    ("train", "fp32", "eager"), ("infer", "fp32", "eager"),
    ("train", "bf16", "jit"), ("infer", "bf16", "jit"),
    ("train", "fp16", "eager"),  # DeepLearningExamples' "AMP" is fp16 autocast + loss scaling
    ("train", "tf32", "jit"), ("infer", "tf32", "jit"),
]
SMOKE_PLAN = [("train", "fp32", "eager"), ("infer", "bf16", "eager"), ("train", "tf32", "eager")]
# The seed's batch 8 (train, the three precisions the keras-torch arm is measured in), after the
# batch-256 plan's eager rows and before its torch.compile ones.
SEED_BATCH = 8
SEED_PLAN = [("train", "fp32", "eager"), ("train", "tf32", "eager"), ("train", "bf16", "eager")]
ARMS = ("torch", "keras-torch")
ROOT = Path(__file__).resolve().parent.parent
# make gpu-vendor; TWINBENCH_GPU_VENDOR names another folder (a test names none, to see the rows without it).
VENDOR = Path(os.environ.get("TWINBENCH_GPU_VENDOR") or ROOT / ".gpu-vendor" / "site")


def settings(smoke: bool, batch: int | None) -> dict[str, Any]:
    if smoke:  # seconds on a CPU: the code paths, not the figures
        return {"batch": batch or 2, "input_size": 32, "pooling": "global", "warmup": 1, "repeats": bm.MIN_REPEATS,
                "steps": 1, "memory_steps": 1, "peak_size": 256, "plan": [(batch or 2, p) for p in SMOKE_PLAN]}
    eager = [p for p in FULL_PLAN if p[2] == "eager"]
    plan = ([(batch or 256, p) for p in eager] + [(SEED_BATCH, p) for p in SEED_PLAN]
            + [(batch or 256, p) for p in FULL_PLAN if p[2] != "eager"])
    return {"batch": batch or 256, "input_size": 224, "pooling": "avg7", "warmup": 10, "repeats": bm.MIN_REPEATS,
            "steps": 10, "memory_steps": 3, "peak_size": 8192, "plan": plan}


def make_rows(cfg: dict[str, Any], arms: tuple[str, ...] = ARMS) -> list[dict[str, Any]]:
    """Per setting, back to back (drift hits both sides of a ratio alike): our torch model and
    torchvision's, then the Keras model on the torch backend (eager only: what ``fit`` runs)."""
    rows = []
    for batch, (mode, precision, comp) in cfg["plan"]:
        sides = [("torch", "ours"), ("torch", "reference")] if "torch" in arms else []
        if "keras-torch" in arms and comp == "eager":
            sides.append(("keras-torch", "ours"))
        for framework, model in sides:
            rows.append(bm.new_row(
                framework=framework, model=model, mode=mode, input_kind="synthetic", batch=batch,
                input_size=cfg["input_size"], pooling=cfg["pooling"], classes=1000, arch="resnet50",
                precision=precision, layout="nhwc", comp=comp, warmup=cfg["warmup"], repeats=cfg["repeats"],
                steps=cfg["steps"], memory_steps=cfg["memory_steps"], device="auto"))
    return rows


def estimate_s(row: dict[str, Any], done: list[dict[str, Any]]) -> float:
    """Seconds a row should take: its eager twin's step time (or any measured row's, scaled by
    FLOPs) times its steps, plus compilation. Unknown: 30 s."""
    steps = row["warmup"] + row["repeats"] * row["steps"] + row["memory_steps"]
    measured = [r for r in done if r.get("status") == "ok"]
    twin = next((r for r in measured if (r["mode"], r["precision"], r["model"], r["framework"], r["batch"]) ==
                 (row["mode"], row["precision"], row["model"], row["framework"], row["batch"])), None)
    if twin is not None:
        per_step = min(twin["step_s"])
    elif measured:
        r = measured[-1]
        per_step = min(r["step_s"]) * (3.0 if row["mode"] == "train" and r["mode"] == "infer" else 1.0)
    else:
        return 30.0
    compile_s = COMPILE_ESTIMATE_S[row["mode"]] if row["compile"] == "jit" else 0.0
    start_s = 15.0 if row["framework"] == "keras-torch" else 0.0  # its own process: Python, torch, Keras
    return steps * per_step * 1.5 + compile_s + start_s + 2.0


def vendor_needed() -> bool:
    """``.gpu-vendor/site`` goes on the child's path only where this Python has no Keras of its own
    (its optree is built for the lent machine's Python, not necessarily this one)."""
    import importlib.util

    return VENDOR.is_dir() and importlib.util.find_spec("keras") is None


def keras_torch_row(row: dict[str, Any], timeout_s: float, quiet: bool) -> dict[str, Any]:
    """One keras-torch row in a child process (``--keras-torch-row``): Keras on its torch backend,
    ``.gpu-vendor/site`` first on its path when it exists. Its progress goes to our stderr."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="gpu-check-kt-") as tmp:
        job, out = Path(tmp) / "row.json", Path(tmp) / "result.json"
        job.write_text(json.dumps(row))
        path = [str(VENDOR)] if vendor_needed() else []
        env = {**os.environ, "KERAS_BACKEND": "torch",
               "PYTHONPATH": os.pathsep.join(path + [str(ROOT)] + ([os.environ["PYTHONPATH"]]
                                                                   if os.environ.get("PYTHONPATH") else []))}
        # The child sees what we see: no site processing when we had none (python3 -S).
        argv = [sys.executable, *(["-S"] if sys.flags.no_site else []), str(Path(__file__).resolve()),
                "--keras-torch-row", str(job), "--out", str(out)]
        try:
            proc = subprocess.run(argv + (["--quiet"] if quiet else []), env=env, timeout=timeout_s,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            return bm.failed_row(row, f"keras-torch child: no result within {timeout_s:.0f} s")
        if not quiet and proc.stderr:
            sys.stderr.write(proc.stderr)
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return bm.failed_row(row, f"keras-torch child exited {proc.returncode}: {last[0][:300]}")
        return json.loads(out.read_text())


def keras_torch_child(job: str, out: str, quiet: bool) -> int:
    """``--keras-torch-row JOB --out OUT``: measure one row with tf_impl.keras_torch_benchmark."""
    if os.environ.get("KERAS_BACKEND") != "torch":
        os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported
    row = json.loads(Path(job).read_text())
    try:
        import keras  # noqa: F401
    except ImportError as exc:
        write_json(Path(out), bm.skipped_row(row, f"Keras is not importable here ({exc}): run make gpu-vendor "
                                                  "and carry .gpu-vendor"))
        return 0
    from tf_impl import keras_torch_benchmark as kb

    log = (lambda m: None) if quiet else (lambda m: print("    " + m, file=sys.stderr, flush=True))
    result = kb.run_row(row, progress=log)
    result["imported"] = {name: name in sys.modules for name in ("tensorflow", "torch_impl.model")}
    write_json(Path(out), result)
    return 0


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write with the standard library only (bench.atomic needs numpy, which may be absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def output_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return Path("runs") / time.strftime("gpu-check-%Y%m%d-%H%M%S.json")


def anchor_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This machine's eager training throughput over DeepLearningExamples' A100 figures."""
    out = []
    for r in rows:
        if r.get("status") != "ok" or r["mode"] != "train" or r["compile"] != "eager":
            continue
        key = {"tf32": "tf32", "fp16": "amp", "bf16": "amp"}.get(r["precision"])
        if key:
            out.append({"id": r["id"], "model": r["model"], "precision": r["precision"], "anchor": key,
                        "anchor_images_per_s": ANCHORS[key], "images_per_s": r["images_per_s"],
                        "ratio": r["images_per_s"] / ANCHORS[key]})
    return out


def summary_lines(payload: dict[str, Any]) -> list[str]:
    lines = [f"device: {payload['device']}; torch {payload['versions'].get('torch')}, "
             f"torchvision {payload['versions'].get('torchvision') or 'absent (architecture copy used)'}"]
    if payload["peaks"]:
        lines.append("matmul peak: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in payload["peaks"].items()))
    lines.append(f"{'arm':<11} {'model':<9} {'mode':<5} {'prec':<4} {'compile':<13} {'batch':>5} {'img/s':>9} {'IQR':>7} "
                 f"{'first s':>7} {'MFU':>6} {'peak MB':>8}")
    for r in payload["rows"]:
        head = (f"{r['framework']:<11} {r['model']:<9} {r['mode']:<5} {r['precision']:<4} "
                f"{bm.COMPILE_LABELS[(r['framework'], r['compile'])]:<13} {r['batch']:>5}")
        if r.get("status") != "ok":
            lines.append(f"{head} {r.get('status', '?').upper()}: {r.get('error')}")
            continue
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{head} {r['images_per_s']:>9.1f} {r['images_per_s_iqr']:>7.1f} "
                     f"{r['timing']['first_step_s']:>7.1f} {mfu:>6} {r['memory']['peak_bytes'] / 2**20:>8,.0f}")
    for q in payload.get("arm_ratios", []):
        lines.append(f"{q['kind']} {q['mode']} {q['precision']} batch {q['batch']}: {q['ratio']:.3f}x "
                     f"[{q['low']:.2f}-{q['high']:.2f}]")
    for q in payload["ratios"]:
        r = next(x for x in payload["rows"] if x["id"] == q["id"])
        verdict = "ok" if q["throughput"] >= q["target"] else "BELOW TARGET"
        lines.append(f"ours/torchvision {r['mode']} {r['precision']} {r['compile']}: throughput "
                     f"{q['throughput']:.3f}x, per FLOP {q['per_flop']:.3f}x [>= {q['target']}] {verdict}")
    for a in payload["anchors"]:
        lines.append(f"{a['model']} train {a['precision']} vs A100 {a['anchor'].upper()} anchor "
                     f"({a['anchor_images_per_s']:.0f} img/s): {a['ratio']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU-sized run of every code path")
    parser.add_argument("--batch", type=int, help="batch size (default 256; smoke 2)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all rows (default 420)")
    parser.add_argument("--out", help="JSON path (default $OUT/gpu_check.json, else runs/gpu-check-*.json)")
    parser.add_argument("--quiet", action="store_true", help="no per-window progress")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help="torch (ours and torchvision), keras-torch (the Keras model on Keras' torch backend); "
                             "default both")
    parser.add_argument("--keras-torch-row", metavar="JOB", help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args(argv)
    if args.keras_torch_row:
        return keras_torch_child(args.keras_torch_row, args.out, args.quiet)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if not arms or any(a not in ARMS for a in arms):
        print(f"gpu_check: --arms {args.arms}: choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    started = time.monotonic()

    from torch_impl import benchmark as tb  # imports torch: only now, never with the bench package

    cfg = settings(args.smoke, args.batch)
    device = tb.device_for("auto")
    out_path = output_path(args.out)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    rows = make_rows(cfg, arms)
    payload: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke, "device": tb.device_label(device), "versions": tb.versions(),
        "threads": tb.threads(), "machine": {"node": platform.node(), "system": platform.system(),
                                             "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {k: v for k, v in cfg.items() if k != "plan"}, "budget_s": args.budget_s, "arms": list(arms),
        "keras_vendor": (str(VENDOR.relative_to(ROOT)) if VENDOR.is_relative_to(ROOT) else str(VENDOR))
                        if vendor_needed() else None,
        "peaks": {}, "rows": [], "ratios": [], "anchors": [], "anchor_source":
            "NVIDIA DeepLearningExamples PyTorch ResNet-50 v1.5, 1x A100 80GB, batch 256 (DALI, end-to-end)",
    }
    if device.type != "cuda" and not args.smoke:
        log("gpu_check: torch sees no CUDA device; measuring on the CPU (use --smoke for a quick check)")
    log(f"gpu_check: {payload['device']}, torch {payload['versions']['torch']}, {len(rows)} rows, "
        f"budget {args.budget_s:.0f} s")
    payload["peaks"] = tb.peak_flops(("fp32", "tf32", "bf16", "fp16"), device, cfg["peak_size"], log)
    write_json(out_path, payload)
    done: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        left = args.budget_s - (time.monotonic() - started)
        need = estimate_s(row, done)
        if need > left:
            done.append(bm.skipped_row(row, f"time budget: needs about {need:.0f} s, {max(left, 0):.0f} s left"))
            log(f"[{i + 1}/{len(rows)}] {bm.describe(row)}: skipped (time budget)")
        else:
            log(f"[{i + 1}/{len(rows)}] {bm.describe(row)} (about {need:.0f} s; {left:.0f} s left)")
            t0 = time.monotonic()
            try:
                if row["framework"] == "keras-torch":
                    done.append(keras_torch_row(row, max(left, 60.0), args.quiet))
                else:
                    done.append(tb.run_row(row, progress=None if args.quiet else (lambda m: log("    " + m))))
            except Exception as exc:  # one broken row must not lose the others
                done.append(bm.failed_row(row, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"))
            r = done[-1]
            log(f"    {r['images_per_s']:.1f} img/s in {time.monotonic() - t0:.0f} s" if r["status"] == "ok"
                else f"    {r['status']}: {r['error']}")
        bm.add_mfu(done, {"torch": payload["peaks"], "keras-torch": payload["peaks"]})  # one device
        payload.update(rows=done, ratios=bm.ratios(done), arm_ratios=bm.arm_ratios(done), anchors=anchor_ratios(done),
                       wall_s=time.monotonic() - started)
        write_json(out_path, payload)
    print("\n".join(summary_lines(payload)))
    print(f"wrote {out_path} ({payload['wall_s']:.0f} s)")
    return 0 if all(r["status"] != "failed" for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
