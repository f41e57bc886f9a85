"""``twinbench run``: the whole comparison as one command (what ``make run`` calls).

    twinbench run                                  # the demo data, quick profile (its time: docs/profiles.md)
    twinbench run --data DIR                       # your image folder (one subfolder per class)
    twinbench run --profile steady                 # quick trained to its plateau (64 px, 12 epochs): a steadier verdict
    twinbench run --profile seed --data DIR        # the full seed reproduction (224 px, 50 epochs)
    twinbench run --skip bench --epochs 2          # any step can be skipped, training shortened

Steps, each the function its own command calls (framework work in worker processes), each result
written as soon as it exists and its path returned to the session:

1. data       the demo folder (written on first use) or ``--data DIR``
2. manifest   the split, written once: ``RUN/manifest.json``
3. datacheck  both input pipelines over the whole manifest: ``RUN/data_check.json``
4. parity     per-block parity and the ablation table: ``RUN/parity.json``
5. train      both frameworks, the profile's settings: ``RUN/train-*/repeats.json`` (or ``run.json``)
6. bench      throughput, memory, MFU: ``RUN/bench-*/bench.json``
7. residuals  ||F(x)|| / ||shortcut(x)|| per block, before and after training: ``RUN/residuals.json``
8. report     ``RUN/report/report.html`` (self-contained), ``report.md`` and the figures

``RUN`` is a new directory ``runs/run-YYYYmmdd-HHMMSS-xxxx`` (``--out``): its id is unique, so two
runs started at once into one ``--out`` never share a directory. ``RUN/session.json`` records
every step's status and time. Ctrl-C stops the current step cleanly; finished results are kept
and the report is built from what exists. A failed step (a worker crash, a failed check) does
not stop the steps that do not need it; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bench import atomic, envelope
from bench.errors import CheckFailed, TwinbenchError, UserError, WorkerError, one_line
from bench.options import WORKER_OPTIONS, add_executor_options, add_worker_options, positive_int, worker_config
from bench.runset import DATACHECK_FORMAT, DATACHECK_VERSION, RESIDUALS_FORMAT, RESIDUALS_VERSION, SESSION_FORMAT, SESSION_NAME, SESSION_VERSION
from bench.profiles import PROFILES, Profile

STEPS = ("data", "manifest", "datacheck", "parity", "train", "bench", "residuals", "report")
SKIPPABLE = ("datacheck", "parity", "train", "bench", "residuals")
# ---- the session record ----------------------------------------------------------------------------
@dataclass
class Session:
    """``session.json``: what this run did, step by step (rewritten atomically after each step)."""

    run_dir: Path
    run_id: str
    profile: str
    model: str
    command: list[str]
    created: str = field(default_factory=lambda: envelope.now_iso())
    status: str = "running"
    steps: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)  # machine and commit, read once at the start

    def __post_init__(self) -> None:
        from bench import envinfo

        self.environment = self.environment or {"machine": envinfo.machine_info(), "commit": envinfo.commit_info()}

    def step(self, name: str) -> dict[str, Any]:
        for st in self.steps:
            if st["name"] == name:
                return st
        st = {"name": name, "status": "pending", "seconds": None, "output": None, "message": None}
        self.steps.append(st)
        return st

    def save(self) -> None:
        envelope.write(self.run_dir / SESSION_NAME, envelope.record(SESSION_FORMAT, SESSION_VERSION, {
            "run_id": self.run_id, "updated": envelope.now_iso(), "status": self.status, "profile": self.profile,
            "model": self.model, "command": self.command, "data": self.data, "steps": self.steps,
        }, created=self.created, **self.environment))


def create_run_dir(out: Path) -> Path:
    """A new, unique ``run-...`` directory for one twinbench run."""
    return atomic.create_unique_dir(out, "run")


class Progress:
    """``[step 3/8] parity (elapsed 1:02, about 6 min left)`` on stderr."""

    def __init__(self, profile: Profile, steps: list[str], quiet: bool):
        self.profile, self.steps, self.quiet = profile, steps, quiet
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"twinbench run: {text}", file=sys.stderr, flush=True)

    def start(self, name: str) -> None:
        i = self.steps.index(name)
        left = sum(self.profile.budget_s.get(s, 0) for s in self.steps[i:])
        elapsed = time.monotonic() - self.started
        self.say(f"[step {i + 1}/{len(self.steps)}] {name} (elapsed {_clock(elapsed)}, about {_clock(left)} left)")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


# ---- steps ---------------------------------------------------------------------------------------------
class Pipeline:
    """The steps of one run, sharing what earlier steps produced."""

    def __init__(self, args: argparse.Namespace, session: Session, profile: Profile):
        self.args, self.session, self.profile = args, session, profile
        self.run_dir = session.run_dir
        self.workers = worker_config(args)
        self.data_dir: Path | None = None
        self.manifest = None
        self.manifest_path = self.run_dir / "manifest.json"
        self.train_dir: Path | None = None
        self.progress = Progress(profile, list(STEPS), quiet=True)

    # helpers
    @contextlib.contextmanager
    def log_stdout(self, log_name: str):
        """A step's printed tables go to RUN/logs/<log_name>; progress (stderr) shows as it comes."""
        log = self.run_dir / "logs" / log_name
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as out, contextlib.redirect_stdout(out):
            yield

    def worker_values(self) -> dict[str, Any]:
        """This run's worker options, for the commands its steps call."""
        return {name: getattr(self.args, name) for name in WORKER_OPTIONS}

    def on_executor(self, args: argparse.Namespace) -> argparse.Namespace:
        """A step's command arguments on this run's executor (one Ray cluster for every step)."""
        from bench import executor

        return executor.lend(args, self.workers.executor) if self.workers.executor is not None else args

    # 1
    def data(self) -> str:
        from bench import demo

        if self.args.data:
            self.data_dir = Path(self.args.data)
            if not self.data_dir.is_dir():
                raise UserError(f"--data {self.args.data}: no such folder (pass an image folder with one "
                                f"subfolder per class)")
            self.session.data = {"kind": "folder", "path": str(self.data_dir.resolve())}
            return str(self.data_dir)
        directory = demo.default_demo_dir()
        with atomic.file_lock(directory.parent / ".demo.lock"):  # two runs writing the demo data wait
            self.data_dir = demo.ensure_demo(directory)
        self.session.data = {"kind": "demo", "path": str(self.data_dir.resolve())}
        return str(self.data_dir)

    # 2
    def write_manifest(self) -> str:
        from bench.dataset import build_manifest, load_manifest

        manifest = build_manifest(self.data_dir, quiet=self.args.quiet)
        manifest.save(self.manifest_path)
        self.manifest = load_manifest(self.manifest_path, verify="none")
        self.session.data.update({"manifest": str(self.manifest_path), "fingerprint": manifest.fingerprint,
                                  "describe": manifest.describe()})
        return str(self.manifest_path)

    # 3
    def datacheck(self) -> str:
        from bench.datacheck import ACCURATE_TOLERANCE, run_data_check
        from bench.dataset import PipelineOptions

        options = PipelineOptions(image_size=self.input_size)
        report = run_data_check(self.manifest, options, self.profile.datacheck_decoders, config=self.workers)
        out = self.run_dir / "data_check.json"
        envelope.write(out, envelope.record(DATACHECK_FORMAT, DATACHECK_VERSION, report))
        if not report["ok"]:
            raise CheckFailed(f"the TF and torch pipelines differ by more than {ACCURATE_TOLERANCE} per image or "
                              f"in labels: see {out}")
        return str(out)

    # 4
    def parity(self) -> str:
        from bench.parity import run_record
        from bench.parity_spec import ABLATIONS, ParityConfig

        config = ParityConfig(model=self.model, **self.profile.parity_model, manifest=str(self.manifest_path))
        names = tuple(ABLATIONS) if self.profile.ablations is None else self.profile.ablations
        # What twinbench parity --ablation-table runs: the record, written, and its path.
        result, out = run_record(config, self.workers, out=self.run_dir / "parity.json", ablation_table=True,
                                 names=names, stop_at_expected=self.profile.parity_stop_at_expected)
        baseline = result["results"]["baseline"] if "results" in result else result
        verdict, first = baseline["verdict"], baseline.get("first_failure")
        del result, baseline
        gc.collect()  # the parity arrays (~2 GB at 224 px) are not kept while later steps run
        if verdict != "pass":
            raise CheckFailed(f"parity failed: first divergent block {first['block']}, check {first['check']}")
        return str(out)

    # 5
    def train(self) -> str:
        from bench import repeats, train, trainrun

        values = dict(framework="both", manifest=str(self.manifest_path), profile=self.profile.name,
                      out=str(self.run_dir), verify="size", model=self.model, epochs=self.args.epochs,
                      repeats=self.args.repeats or self.profile.repeats, chaos=self.profile.chaos,
                      chaos_steps=self.profile.chaos_steps,
                      seed=self.args.seed, margin=self.args.margin, **self.worker_values())
        train_dir = trainrun.create_run_dir(self.run_dir)
        try:
            with self.log_stdout("train.log"):
                return str(train.train(self.on_executor(command_arguments(train.register, **values)), train_dir))
        finally:
            first = train_dir / repeats.repeat_dir_name(0)
            self.train_dir = first if first.is_dir() else train_dir

    # 6
    def bench(self) -> str:
        from bench import benchmark

        args = self.on_executor(command_arguments(benchmark.register, profile=self.profile.name, out=str(self.run_dir),
                                                  no_save=True, **self.worker_values()))
        if self.model != "resnet50":
            args.arch = self.model
        with self.log_stdout("bench.log"):
            return str(benchmark.bench(args)[0])

    # 7
    def residuals(self) -> str:
        from bench import residuals
        from bench.dataset import PipelineOptions
        from bench.results import load_record

        if self.train_dir is None:
            raise CheckFailed("no training run to measure (the train step did not run)")
        record = load_record(self.train_dir)
        config = record.config
        margs = {k: config[k] for k in ("model", "classes", "input_size", "pooling")}
        init = record.init.get("path")
        n = min(self.profile.residual_images, len(self.manifest.entries("validation")))
        images = {"manifest": str(self.manifest_path), "data_root": str(self.manifest.root),
                  "indices": list(range(n)),
                  "pipeline": PipelineOptions(image_size=int(config["input_size"]), decoder=config.get("decoder", "accurate"),
                                              preprocessing=config.get("preprocessing", "none")).to_dict()}
        weights: dict[str, Any] = {}
        if init:
            weights["before"] = {fw: str(self.train_dir / init) for fw in record.frameworks}
        after = {fw: str(self.train_dir / run["checkpoint"]) for fw, run in record.frameworks.items()
                 if run.get("checkpoint") and (self.train_dir / run["checkpoint"]).is_file()}
        if after:
            weights["after"] = after
        if not weights:
            raise CheckFailed("the training run kept no weights to measure (no init bundle, no checkpoint)")
        out = self.run_dir / "residuals.json"
        self.progress.say(f"residual ratios {' and '.join(weights)} training "
                          f"({', '.join(sorted({fw for per_fw in weights.values() for fw in per_fw}))})")
        stages = residuals.measure_stages(margs, weights, images=images, config=self.workers,
                                          job_root=self.run_dir / "jobs" / "residuals")
        envelope.write(out, envelope.record(RESIDUALS_FORMAT, RESIDUALS_VERSION, {
            "model": self.model,
            "images": {"count": n, "split": "validation", "input_size": config["input_size"],
                       "manifest": str(self.manifest_path)},
            "weights": weights, "stages": stages, "train_run": str(self.train_dir)}))
        return str(out)

    # 8
    def report(self) -> str:
        from bench.report import build_report

        out = Path(self.args.report) if self.args.report else self.run_dir / "report"
        return str(build_report([self.run_dir], out, quiet=self.args.quiet))

    @property
    def input_size(self) -> int:
        return self.profile.input_size

    @property
    def model(self) -> str:
        return self.session.model


def command_arguments(register: Callable[[Any], None], argv: Sequence[str] = (), **values: Any) -> argparse.Namespace:
    """The namespace a command's own parser gives for ``argv``, then ``values`` set on it: how
    ``twinbench run`` calls a step's command function with exactly that command's defaults. A value
    for an option the command does not have is a TypeError (a typo must not pass silently)."""
    root = argparse.ArgumentParser(prog="twinbench", add_help=False)
    sub = root.add_subparsers(dest="command")
    register(sub)
    (name, parser), = sub.choices.items()
    args = parser.parse_args(list(argv))
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise TypeError(f"twinbench {name} has no option {', '.join(unknown)}")
    for key, value in values.items():
        setattr(args, key, value)
    return args


def run_steps(pipe: Pipeline, steps: list[str]) -> dict[str, Any]:
    """Run the steps in order; record each one's status. Returns {"interrupted": bool, "failed": [...]}."""
    session, progress = pipe.session, pipe.progress
    actions: dict[str, Callable[[], str]] = {
        "data": pipe.data, "manifest": pipe.write_manifest, "datacheck": pipe.datacheck, "parity": pipe.parity,
        "train": pipe.train, "bench": pipe.bench, "residuals": pipe.residuals,
    }
    needs_manifest = {"datacheck", "parity", "train", "bench", "residuals"}
    interrupted = False
    failed: list[str] = []
    for name in steps:
        if name == "report":
            continue
        st = session.step(name)
        if interrupted:
            st.update(status="skipped", message="interrupted before it started")
            continue
        if name in needs_manifest and pipe.manifest is None:
            st.update(status="skipped", message="no manifest")
            continue
        progress.start(name)
        st["status"] = "running"
        session.save()
        started = time.monotonic()
        try:
            st["output"] = _relative(actions[name](), pipe.run_dir)
            st["status"] = "done"
        except KeyboardInterrupt:
            st.update(status="interrupted", message="Ctrl-C")
            interrupted = True
        except CheckFailed as exc:
            st.update(status="failed", message=one_line(str(exc)))
            failed.append(name)
        except WorkerError as exc:
            st.update(status="failed", message=one_line(str(exc)))
            failed.append(name)
        except UserError as exc:
            st.update(status="failed", message=str(exc))
            if name in ("data", "manifest"):
                st["seconds"] = round(time.monotonic() - started, 1)
                session.status = "failed"
                session.save()
                raise  # bad input: nothing else can run (exit 2)
            failed.append(name)
        finally:
            st["seconds"] = round(time.monotonic() - started, 1)
            if st["status"] == "failed" and st["message"]:
                # A failure is not progress: --quiet (CI) still says why a step failed.
                print(f"twinbench run: {name}: failed: {st['message']}", file=sys.stderr, flush=True)
            elif st["status"] != "done" and st["message"]:
                progress.say(f"{name}: {st['status']}: {st['message']}")
            session.save()
    return {"interrupted": interrupted, "failed": failed}


def _relative(path: str, root: Path) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


# ---- the command ---------------------------------------------------------------------------------------
def register(sub) -> None:
    from bench.spec import MODELS

    p = sub.add_parser("run", help="the whole comparison in one command (what 'make run' does)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="image folder, one subfolder per class (default: the demo data)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="quick (default: small inputs, a few epochs, repeats; docs/profiles.md), steady (quick at 64 px "
                        "for 12 epochs: a spread within about 3 points, about 20 minutes on 2 cores) or seed (224 px, 50 epochs)")
    p.add_argument("--model", default="resnet50", choices=sorted(MODELS), help="architecture (default resnet50)")
    p.add_argument("--epochs", type=positive_int, help="override the profile's training epochs")
    p.add_argument("--repeats", type=positive_int,
                   help="training runs per framework, seeds SEED..SEED+N-1 (default: the profile's; quick 3)")
    p.add_argument("--seed", type=int, help="base seed of the training repeats (default: the profile's, 123)")
    p.add_argument("--margin", type=float, help="equivalence margin, accuracy points (default 5)")
    p.add_argument("--skip", action="append", default=[], choices=SKIPPABLE, metavar="STEP",
                   help=f"leave a step out (repeatable): {', '.join(SKIPPABLE)}")
    p.add_argument("--out", default="runs", help="where run directories go (default runs/)")
    p.add_argument("--report", metavar="DIR", help="write the report here (default RUN/report/)")
    add_worker_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from bench import executor

    with executor.for_command(args):  # a Ray cluster it started stops with it
        return _cmd_run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    profile = PROFILES[args.profile]
    steps = [s for s in STEPS if s not in set(args.skip)]
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise UserError(f"--report {args.report} exists and is not a folder")
    if args.parallel is None and (args.executor or "local") == "local":
        args.parallel = profile.parallel  # training cells side by side (its executor is made with the pipeline)
    run_dir = create_run_dir(Path(args.out))
    session = Session(run_dir, run_dir.name, profile.name, args.model, ["twinbench", *sys.argv[1:]])
    for name in STEPS:
        session.step(name)["status"] = "pending" if name in steps else "skipped"
    session.save()
    pipe = Pipeline(args, session, profile)
    pipe.progress = Progress(profile, steps, args.quiet)
    pipe.progress.say(f"run {run_dir} ({profile.name} profile, {args.model})")
    outcome = run_steps(pipe, steps)
    session.status = "interrupted" if outcome["interrupted"] else ("failed" if outcome["failed"] else "complete")
    session.save()
    report_path = None
    st = session.step("report")
    if "report" in steps:
        pipe.progress.start("report")
        # Marked done before it is built, so that the report's own step table shows it.
        out = Path(args.report) if args.report else run_dir / "report"
        st.update(status="done", output=_relative(str(out / "report.html"), run_dir))
        session.save()
        started = time.monotonic()
        try:
            report_path = pipe.report()
        except TwinbenchError as exc:
            st.update(status="failed", message=one_line(str(exc)))
        except KeyboardInterrupt:
            st.update(status="interrupted", message="Ctrl-C while writing the report")
            session.status = "interrupted"
            raise
        finally:
            st["seconds"] = round(time.monotonic() - started, 1)
            session.save()
    print_summary(run_dir, report_path, session, time.monotonic() - pipe.progress.started)
    if outcome["interrupted"]:
        print("twinbench: interrupted; finished results and the report are kept in " + str(run_dir), file=sys.stderr)
        return 130
    failed = [s["name"] for s in session.steps if s["status"] == "failed"]
    if failed:
        # The last line says what happened, as every other failing command's does (the reasons are above).
        print(f"twinbench: error: {len(failed)} step(s) failed ({', '.join(failed)}); finished results "
              f"and the report are kept in {run_dir}", file=sys.stderr)
    return 1 if outcome["failed"] or st["status"] == "failed" else 0


def print_summary(run_dir: Path, report_path: str | None, session: Session, elapsed: float) -> None:
    """The one-screen summary: the report's verdict table and where everything is."""
    import pandas as pd

    from bench.report_records import Context, choose_model
    from bench.report_sections import Builder
    from bench.runset import load_runs

    print(f"twinbench run {session.run_id}: {session.status} in {_clock(elapsed)}")
    print(", ".join(f"{st['name']} {st['status']}" for st in session.steps))
    try:
        runs = load_runs([run_dir])
    except UserError:
        runs = []
    records = [r for run in runs for r in run.records]
    if records:
        ctx = Context(runs, records, choose_model(records), run_dir / ".summary", quiet=True)
        table = Builder(ctx).summary().blocks[0][1]
        with pd.option_context("display.max_colwidth", 70, "display.width", 250):
            print(table.to_string(index=False))
    print(f"run directory: {run_dir}")
    if report_path:
        print(f"report: {report_path}")
