"""Training runs, parent side: the run directory, its lock and config, the starting bundle, each
framework's worker one after the other, and the record they fill (a library: ``twinbench train``
and ``twinbench run`` call it; the loop inside the workers is ``bench.training.run_training``).
Fairness, the run directory and resume: docs/profiles.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bench import __version__, atomic
from bench.errors import CheckFailed, TwinbenchError, UserError, one_line
from bench.frameworks import FRAMEWORK_LABELS, KERAS_TORCH
from bench.options import worker_config
from bench.profiles import PROFILES, evaluation_text
from bench.training import TrainConfig, read_state, torch_alignment, validate_config

CONFIG_NAME = "config.json"
LOCK_NAME = "lock"

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# What --resume may change: run length and how it runs, never what it computes.
RESUME_OVERRIDES = ("epochs",)


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, str]]:
    """The profile's config with the command line's overrides; and where each value came from."""
    config = PROFILES[args.profile].train()
    sources: dict[str, str] = {}
    for name in CONFIG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
            sources[name] = "command line"
        else:
            sources[name] = f"profile {args.profile}"
    return config, sources


@dataclass
class PreparedRun:
    """A run directory ready to train: its record (saved), config and what the workers need."""

    record: Any
    config: TrainConfig
    run_dir: Path
    args: argparse.Namespace
    resume: bool = False
    trace: dict[str, Any] | None = None
    lock: "RunLock | None" = None  # resume: the lock prepare_resume took

    def release(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None


def start_run(config: TrainConfig, sources: dict[str, str], frameworks: list[str], manifest, run_dir: Path,
              args: argparse.Namespace, *, repeat: dict[str, Any] | None = None, kind: str = "train",
              init_bundle: Path | None = None, trace: dict[str, Any] | None = None) -> int:
    """One training run in ``run_dir`` (locked by the caller): the record, the starting bundle
    (``init_bundle``: copy this one instead of making it), each framework's worker."""
    prepared = prepare_run(config, sources, frameworks, manifest, run_dir, args, repeat=repeat, kind=kind,
                           init_bundle=init_bundle, trace=trace)
    return train_frameworks(prepared.record, config, run_dir, args, trace=trace)


def prepare_run(config: TrainConfig, sources: dict[str, str], frameworks: list[str], manifest, run_dir: Path,
                args: argparse.Namespace, *, repeat: dict[str, Any] | None = None, kind: str = "train",
                init_bundle: Path | None = None, trace: dict[str, Any] | None = None) -> PreparedRun:
    """``start_run`` up to the workers: the config, the record and the starting bundle."""
    manifest_path = run_dir / "manifest.json"
    atomic.write_text(manifest_path, manifest.to_text(manifest_path))
    atomic.write_json(run_dir / CONFIG_NAME, {"config": dataclasses.asdict(config), "sources": sources,
                                               "frameworks": frameworks, "repeat": repeat or {}, "kind": kind,
                                               "trace": trace})
    from bench import envinfo, results

    info = manifest.info()
    record = results.new_record(
        run_dir.name, kind=kind, command=["twinbench", *sys.argv[1:]], config=dataclasses.asdict(config),
        config_sources=sources,
        environment={"twinbench": __version__, "machine": envinfo.machine_info(),
                     "commit": envinfo.commit_info(), "frameworks": {}},
        manifest={"path": str(Path(args.manifest).resolve()) if args.manifest else None,
                  "copy": manifest_path.name, "fingerprint": info["fingerprint"], "root": info["root"],
                  "classes": info["class_names"], "train": info["counts"]["training"],
                  "validation": info["counts"]["validation"]},
        repeat=repeat or {})
    record.frameworks = {fw: results.new_framework_run(config.devices) for fw in frameworks}
    results.save_record(record, run_dir)
    _say(f"run {run_dir}: {', '.join(FRAMEWORK_LABELS.get(f, f) for f in frameworks)}; {manifest.describe()}", args)
    _say(f"config: {describe_config(config)}", args)
    try:
        if init_bundle is not None:
            from bench.dataset import sha256_file

            shutil.copyfile(init_bundle, run_dir / "init.npz")
            record.init = {"kind": "bundle", "init": config.init, "weights": None, "path": "init.npz",
                           "sha256": sha256_file(run_dir / "init.npz"), "source": str(init_bundle)}
        else:
            record.init = prepare_init(config, run_dir, args, frameworks)
    except (TwinbenchError, KeyboardInterrupt) as exc:
        # No framework started: the record must not stay "running" with "pending" frameworks.
        interrupted = isinstance(exc, KeyboardInterrupt)
        record.status = "interrupted" if interrupted else "failed"
        for run in record.frameworks.values():
            run.update(status="failed", message="interrupted (Ctrl-C) while preparing the starting weights"
                       if interrupted else "starting weights: " + one_line(str(exc)))
        results.save_record(record)
        raise
    results.save_record(record)
    return PreparedRun(record, config, run_dir, args, trace=trace)


def resume_one(run_dir: Path, args: argparse.Namespace) -> int:
    prepared = prepare_resume(run_dir, args)
    try:
        return train_frameworks(prepared.record, prepared.config, run_dir, prepared.args, resume=True,
                                trace=prepared.trace)
    finally:
        prepared.release()


def prepare_resume(run_dir: Path, args: argparse.Namespace) -> PreparedRun:
    """``resume_one`` up to the workers: the saved config checked against ``args``, the record
    marked running, the data checked against the run's manifest."""
    from bench import results

    if not (run_dir / CONFIG_NAME).is_file():
        raise UserError(f"--resume {run_dir}: not a twinbench training run (no {CONFIG_NAME}); "
                        f"pass the run directory that 'twinbench train' printed")
    saved = json.loads((run_dir / CONFIG_NAME).read_text())
    config = TrainConfig(**saved["config"])
    changed = [name for name in CONFIG_FIELDS if getattr(args, name, None) is not None
               and getattr(args, name) != getattr(config, name) and name not in RESUME_OVERRIDES]
    if changed:
        flag = "--" + changed[0].replace("_", "-")
        raise UserError(f"{flag} cannot change on --resume (the run was recorded with "
                        f"{changed[0]}={getattr(config, changed[0])!r}); drop it, or start a new run")
    if args.framework not in (None, "both") and args.framework not in saved["frameworks"]:
        raise UserError(f"--framework {args.framework}: run {run_dir.name} trains {', '.join(saved['frameworks'])}")
    if args.epochs is not None and args.epochs != config.epochs:
        config.epochs = args.epochs  # extending (or shortening) a run: the loop picks up after the last epoch
        saved["sources"]["epochs"] = "command line (resume)"
    validate_config(config)
    lock = RunLock(run_dir).__enter__()  # held until PreparedRun.release(), after the workers
    try:
        record = results.load_record(run_dir)
        record.config = dataclasses.asdict(config)
        record.config_sources = saved["sources"]
        record.command = ["twinbench", *sys.argv[1:]]
        record.invocations.append({"time": results.now_iso(), "command": record.command, "resume": True})
        record.status = "running"
        saved["config"] = record.config
        atomic.write_json(run_dir / CONFIG_NAME, saved)
        args.manifest = str(run_dir / "manifest.json")
        load_train_manifest(args)  # the data must still be what the run trained on
        results.save_record(record)
        _say(f"resuming {run_dir}", args)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    return PreparedRun(record, config, run_dir, args, resume=True, trace=saved.get("trace"), lock=lock)


def _say(text: str, args: argparse.Namespace) -> None:
    print(text, file=sys.stderr, flush=True)


def describe_config(c: TrainConfig) -> str:
    return (f"{c.model} {c.input_size}px {c.pooling} pooling, {c.classes} classes, batch {c.batch_size}, "
            f"{c.epochs} epochs, {c.optimizer} lr {c.learning_rate:g}"
            f"{'' if c.lr_schedule == 'constant' else ' ' + c.lr_schedule}, {c.precision}, order {c.order}, "
            f"decoder {c.decoder}, preprocessing {c.preprocessing}, init {c.init}"
            f"{' + ' + c.weights if c.weights else ''}, seed {c.seed}, {c.threads} threads, {c.devices} device(s), "
            f"evaluation {evaluation_text(dataclasses.asdict(c))}{', torch ablation ' + c.torch_ablation if c.torch_ablation else ''}")


def load_train_manifest(args: argparse.Namespace):
    from bench.dataset import build_manifest, load_manifest

    if args.manifest:
        return load_manifest(args.manifest, data_root=args.data_root, verify=args.verify, quiet=args.quiet)
    from bench.demo import ensure_demo

    directory = ensure_demo()
    print(f"no --manifest: training on the demo data in {directory}", file=sys.stderr)
    return build_manifest(directory, quiet=args.quiet)


# ---- run directory -------------------------------------------------------------------------------
def create_run_dir(out: Path) -> Path:
    """A new, unique ``train-...`` directory for one twinbench train."""
    return atomic.create_unique_dir(out, "train")


class RunLock:
    """``RUN_DIR/lock`` holds the pid of the one twinbench process working on a run."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME

    def __enter__(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and Path(f"/proc/{pid}").exists():
                    raise UserError(f"{self.path.parent} is in use by twinbench process {pid}; wait for it, "
                                    f"or stop it first") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise UserError(f"{self.path}: cannot take the run lock")

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


# ---- starting weights ----------------------------------------------------------------------------
def keras_initialiser_worker(frameworks: Sequence[str]) -> str:
    """The worker that draws Keras' initialisers: TF's, or keras-torch's when no TF side trains."""
    return KERAS_TORCH if KERAS_TORCH in frameworks and "tf" not in frameworks else "tf"


def prepare_init(config: TrainConfig, run_dir: Path, args: argparse.Namespace,
                 frameworks: Sequence[str] = ("tf", "torch")) -> dict[str, Any]:
    """Write ``init.npz``, the one bundle every side starts from; return the record's ``init``.
    Keras' initialisers run in the TF worker, or, when the run trains no TF side (a machine
    without TensorFlow), in the keras-torch worker: the same Keras code on its torch backend
    (other random streams, so other numbers; the record says which worker drew them)."""
    from bench.dataset import sha256_file
    from bench.executor import Job, run_job
    from bench.spec import spec_from_args
    from bench.weights import WeightBundle, random_bundle, read_legacy_h5, weight_format

    spec = spec_from_args(config.spec_args())
    path = run_dir / "init.npz"
    keras_worker = keras_initialiser_worker(frameworks)
    drawn_by = None
    wconfig = _worker_config(args, config)
    wconfig.quiet = True
    margs = {**config.spec_args(), "seed": config.seed}
    if config.init == "independent" and not config.weights:
        return {"kind": "independent", "path": None, "sha256": None,
                "note": "each framework starts from its own initialisers: initial losses differ"}
    if config.init == "random":
        base = random_bundle(spec, seed=config.seed)
    elif config.init in ("keras", "torch"):
        drawn_by = keras_worker if config.init == "keras" else "torch"
        run_job(wconfig, Job(drawn_by, "export", {**margs, "out": str(path)}, job_dir=run_dir / "init-job",
                             outputs=("out",)))
        base = WeightBundle.load(path)
    else:  # independent + --weights: the head (if skipped) comes from Keras' initialisers
        drawn_by = keras_worker
        run_job(wconfig, Job(drawn_by, "export", {**margs, "out": str(path)}, job_dir=run_dir / "init-job",
                             outputs=("out",)))
        base = WeightBundle.load(path)
    shutil.rmtree(run_dir / "init-job", ignore_errors=True)
    kind = config.init
    if config.weights:
        fmt = weight_format(config.weights)
        head = spec.head_layers()[0].name
        if fmt == "bundle":
            loaded = WeightBundle.load(config.weights)
            loaded.check(spec, source=config.weights, skip_head=True)
        elif fmt == "legacy_h5":
            loaded = read_legacy_h5(config.weights, spec, skip_head=True)
        else:  # .weights.h5 / .pt: the framework that reads them converts to a bundle
            fw = "tf" if fmt == "keras_h5" else "torch"
            mid = run_dir / "weights.npz"
            run_job(wconfig, Job(fw, "convert", {**config.spec_args(), "src": config.weights, "dst": str(mid)},
                                 job_dir=run_dir / "weights-job", inputs=("src",), outputs=("dst",)))
            shutil.rmtree(run_dir / "weights-job", ignore_errors=True)
            loaded = WeightBundle.load(mid)
            mid.unlink()
        arrays = dict(base.arrays)
        kept_head = True
        for key, value in loaded.arrays.items():
            if key.startswith(head + "/") and tuple(value.shape) != tuple(base.arrays[key].shape):
                kept_head = False
                continue
            arrays[key] = value
        base = WeightBundle(arrays, {**base.meta, "source": f"{config.weights} (head: "
                                                            f"{'from the file' if kept_head else config.init})"})
        kind = "weights"
        if not kept_head:
            print(f"note: {config.weights} has a head of another size; {head} starts from the {config.init} "
                  f"initialisation ({config.classes} classes)", file=sys.stderr)
    base.save(path)
    return {"kind": kind, "init": config.init, "weights": config.weights, "path": path.name,
            "sha256": sha256_file(path), "source": base.meta.get("source"), "drawn_by": drawn_by}


# ---- orchestration -------------------------------------------------------------------------------
def _worker_config(args: argparse.Namespace, config: TrainConfig):
    wconfig = worker_config(args)
    wconfig.threads = config.threads
    # Per-step lines are the worker's; --quiet keeps its epoch summaries but drops step lines.
    wconfig.quiet = False
    return wconfig


def train_frameworks(record, config: TrainConfig, run_dir: Path, args: argparse.Namespace,
                     resume: bool = False, trace: dict[str, Any] | None = None) -> int:
    """Train each framework in its worker (through the command's executor: in turn here, side by
    side on Ray); merge what each reports into the record."""
    from bench import executor as executors

    prepared = PreparedRun(record, config, run_dir, args, resume=resume, trace=trace)
    cells = plan_cells(prepared)
    interrupted = run_cells(executors.from_args(args), cells)
    settle_record(record, interrupted=interrupted)
    return report_run(record, run_dir, interrupted=interrupted)


def plan_cells(prepared: PreparedRun) -> list:
    """A Cell per framework of the run that has epochs left (a complete one is skipped)."""
    from bench.executor import Cell

    record, config, run_dir, args = prepared.record, prepared.config, prepared.run_dir, prepared.args
    wconfig = _worker_config(args, config)
    cells = []
    for fw in list(record.frameworks):
        run = record.frameworks[fw]
        if run["status"] == "complete" and run["epochs_completed"] >= config.epochs:
            _say(f"[{fw}] complete ({run['epochs_completed']} epochs): skipped", args)
            continue
        fw_dir = run_dir / fw
        fw_dir.mkdir(exist_ok=True)
        state = read_state(fw_dir)
        job = {
            "framework": fw, "config": dataclasses.asdict(config), "manifest": str(run_dir / "manifest.json"),
            "data_root": record.manifest.get("root"), "fw_dir": str(fw_dir.resolve()),
            "init": str((run_dir / record.init["path"]).resolve()) if record.init.get("path") else None,
            "resume": bool(state and state.get("history") is not None), "quiet": bool(args.quiet),
            "progress_interval": float(args.progress_interval),
            "trace": prepared.trace, "alignment": torch_alignment(config.torch_ablation) if fw == "torch" else {},
        }
        cells.append(Cell(key=f"{run_dir.name}/{fw}", framework=fw, job=job, run_dir=run_dir, fw_dir=fw_dir,
                          record=record, wconfig=wconfig, threads=int(config.threads or 1),
                          devices=int(config.devices)))
    return cells


def run_cells(executor, cells: list) -> bool:
    """Run ``cells`` (of one run or of many) on ``executor``, saving each record as its cells
    start and end. Returns True when Ctrl-C stopped them (the cells that had not ended say so);
    a UserError from a cell marks the cells that had not ended failed and propagates."""
    from bench import results

    unfinished: dict[str, Any] = {}

    def on_start(cell) -> None:
        cell.run["status"] = "running"
        unfinished[cell.key] = cell
        results.save_record(cell.record)

    def on_done(cell, outcome) -> None:
        unfinished.pop(cell.key, None)
        run = cell.run
        if outcome.error is not None:
            _merge_state(run, cell.fw_dir)
            run["status"] = "failed"
            run["message"] = one_line(str(outcome.error))  # keep the worker's last lines: they say why
        else:
            result = dict(outcome.result)
            cell.record.environment.setdefault("frameworks", {})[cell.framework] = result.pop("info", {})
            run.update(result)
        if outcome.executor:
            run["executor"] = outcome.executor
        results.save_record(cell.record)

    try:
        executor.run(cells, on_start=on_start, on_done=on_done)
    except UserError as exc:
        for cell in unfinished.values():
            _merge_state(cell.run, cell.fw_dir)
            cell.run.update(status="failed", message=str(exc))
            cell.record.status = "failed"
            results.save_record(cell.record)
        raise
    except KeyboardInterrupt:
        for cell in unfinished.values():
            _merge_state(cell.run, cell.fw_dir)
            cell.run.update(status="failed", message="interrupted (Ctrl-C); continue with --resume")
            cell.record.status = "interrupted"
            results.save_record(cell.record)
        return True
    return False


def settle_record(record, *, interrupted: bool) -> None:
    """The run's status from its frameworks' (interrupted: "interrupted"), saved."""
    from bench import results

    statuses = [r["status"] for r in record.frameworks.values()]
    if interrupted and record.status == "interrupted":
        pass
    elif interrupted and any(s != "complete" for s in statuses):
        record.status = "interrupted"
    elif all(s == "complete" for s in statuses):
        record.status = "complete"
    elif any(s == "failed" for s in statuses):
        record.status = "failed"
    else:
        record.status = "stopped"
    results.save_record(record)


def report_run(record, run_dir: Path, *, interrupted: bool) -> int:
    """The summary table and the record's path; KeyboardInterrupt or CheckFailed if it did not complete."""
    print(summary_table(record))
    print(f"run record: {record.path}")
    if interrupted:
        raise KeyboardInterrupt
    problems = [f"{FRAMEWORK_LABELS[fw]}: {r['message']}" for fw, r in record.frameworks.items() if r["status"] != "complete"]
    if problems:
        hint = f"; continue with: twinbench train --resume {run_dir}" if record.status == "failed" else ""
        raise CheckFailed("; ".join(problems) + hint)
    return 0


def _merge_state(run: dict[str, Any], fw_dir: Path) -> None:
    """After a worker died: keep the history and the checkpoint its last state.json names."""
    state = read_state(fw_dir)
    if state:
        run["history"] = state.get("history", [])
        run["epochs_completed"] = len(run["history"])
        run["checkpoint"] = state.get("checkpoint_path")


def summary_table(record) -> str:
    """A short text table of each framework's final figures."""
    width = max([11] + [len(FRAMEWORK_LABELS.get(fw, fw)) + 1 for fw in record.frameworks])
    rows = [f"{'':<{width}}{'epochs':>7}{'loss':>9}{'acc':>7}{'val_loss':>10}{'val_acc':>9}{'epoch s':>9}"
            f"{'train img/s':>12}{'peak memory':>24}  status"]
    for fw, run in record.frameworks.items():
        hist = run.get("history") or []
        last = hist[-1] if hist else {}
        later = [e["time_s"] for e in hist[1:]] or [e["time_s"] for e in hist]
        mem = run.get("memory") or {}
        mem_text = (f"{mem['peak_bytes'] / 2**30:.2f} GiB {'RSS' if mem.get('measure') == 'cpu_peak_rss' else 'GPU'}"
                    if mem.get("peak_bytes") else "-")

        def num(key: str, fmt: str) -> str:
            value = last.get(key)
            width = int(fmt.split(".")[0])
            return format(value, fmt) if isinstance(value, (int, float)) else "-".rjust(width)

        rows.append(f"{FRAMEWORK_LABELS.get(fw, fw):<{width}}{len(hist):>7}{num('loss', '9.4g')}{num('accuracy', '7.3f')}"
                    f"{num('val_loss', '10.4g')}{num('val_accuracy', '9.3f')}"
                    f"{(statistics.median(later) if later else float('nan')):9.1f}"
                    f"{num('train_throughput', '12.1f')}{mem_text:>24}  {run['status']}")
    return "\n".join(rows)
