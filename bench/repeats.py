"""Repeated training: ``twinbench train --repeats N``, a paired design with a statistical verdict.

    twinbench train --profile quick --repeats 5            # 5 runs per framework, seeds 123..127
    twinbench train --profile quick --repeats 5 --margin 3 # equivalence within 3 points
    twinbench train --resume runs/train-20261202-120000-ab12   # finish a killed set

Run i of every framework uses seed ``seed + i`` and one starting bundle for that seed (a pair per
seed). The set directory and resume: docs/profiles.md (repeated runs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import atomic, envelope, trainrun
from bench.errors import CheckFailed, UserError

FORMAT = "twinbench.repeats"
VERSION = 1
SET_NAME = "repeats.json"
CHAOS_DIR = "chaos"
CHAOS_NAME = "chaos.json"
DEFAULT_MARGIN = 5.0  # percentage points of validation accuracy


@dataclass(frozen=True)
class SetPlan:
    """What a set runs besides the per-run config."""

    repeats: int = 1
    margin: float = DEFAULT_MARGIN
    chaos: bool = False
    chaos_steps: int | None = None  # None: the whole run

    @property
    def single(self) -> bool:
        return self.repeats == 1 and not self.chaos


def plan_from_args(args: argparse.Namespace, config) -> SetPlan:
    base = SetPlan()  # one run, no chaos control: twinbench run asks for more (bench.profiles.PROFILES)
    plan = SetPlan(
        repeats=args.repeats if getattr(args, "repeats", None) else base.repeats,
        margin=args.margin if getattr(args, "margin", None) else base.margin,
        chaos=base.chaos if getattr(args, "chaos", None) is None else bool(args.chaos),
        chaos_steps=getattr(args, "chaos_steps", None) or base.chaos_steps)
    if plan.chaos and config.devices > 1:
        raise UserError("--chaos traces one device's weights; use --no-chaos with --devices > 1")
    return plan


def is_set(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "plan" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def repeat_config(config, index: int):
    return dataclasses.replace(config, seed=int(config.seed) + index)


def repeat_dir_name(index: int) -> str:
    return f"repeat-{index}"


def start_set(plan: SetPlan, config, sources: dict[str, str], frameworks: list[str], manifest,
              args: argparse.Namespace, set_dir: Path) -> int:
    """A new set in ``set_dir`` (made by the caller, empty): every repeat, the chaos control, the statistics."""
    with trainrun.RunLock(set_dir):
        atomic.write_text(set_dir / "manifest.json", manifest.to_text(set_dir / "manifest.json"))
        atomic.write_json(set_dir / trainrun.CONFIG_NAME, {"config": dataclasses.asdict(config), "sources": sources,
                                                  "frameworks": frameworks, "plan": dataclasses.asdict(plan)})
        print(f"set {set_dir}: {plan.repeats} repeat(s) per framework, seeds {config.seed}.."
              f"{config.seed + plan.repeats - 1}{', chaos control' if plan.chaos else ''}", file=sys.stderr)
        return _run_set(set_dir, plan, config, sources, frameworks, manifest, args, resume=False)


def resume_set(set_dir: Path, args: argparse.Namespace) -> int:
    from bench.dataset import load_manifest
    from bench.training import TrainConfig

    saved = json.loads((set_dir / trainrun.CONFIG_NAME).read_text())
    config = TrainConfig(**saved["config"])
    plan = SetPlan(**saved["plan"])
    if getattr(args, "repeats", None) and args.repeats != plan.repeats:
        if args.repeats < plan.repeats:
            raise UserError(f"--repeats {args.repeats}: set {set_dir.name} already has {plan.repeats}; "
                            f"a set grows, never shrinks")
        plan = dataclasses.replace(plan, repeats=args.repeats)  # more repeats: the new ones start
        saved["plan"] = dataclasses.asdict(plan)
        atomic.write_json(set_dir / trainrun.CONFIG_NAME, saved)
    manifest = load_manifest(set_dir / "manifest.json", data_root=getattr(args, "data_root", None),
                             verify=getattr(args, "verify", "hash"), quiet=getattr(args, "quiet", False))
    with trainrun.RunLock(set_dir):
        print(f"resuming set {set_dir}", file=sys.stderr)
        return _run_set(set_dir, plan, config, saved["sources"], saved["frameworks"], manifest, args, resume=True)


def _run_set(set_dir: Path, plan: SetPlan, config, sources, frameworks, manifest, args, *, resume: bool) -> int:
    from bench import executor as executors

    trace_steps = plan.chaos_steps or 10**9
    chaos_in_repeat = plan.chaos and config.order == "manifest" and "tf" in frameworks and "torch" in frameworks
    together = executors.from_args(args).concurrent
    run_repeats = _run_repeats_together if together else _run_repeats_in_turn
    problems = run_repeats(set_dir, plan, config, sources, frameworks, manifest, args,
                           trace_steps=trace_steps, chaos_in_repeat=chaos_in_repeat)
    if plan.chaos:
        try:
            run_chaos(set_dir, plan, config, sources, manifest, args, in_repeat=chaos_in_repeat)
        except CheckFailed as exc:
            problems.append(f"chaos control: {exc}")
    doc = write_set_record(set_dir, plan)
    from bench.stats import format_verdicts

    print(format_verdicts(doc["statistics"]))
    print(f"set record: {set_dir / SET_NAME}")
    if problems:
        raise CheckFailed("; ".join(problems) + f"; continue with: twinbench train --resume {set_dir}")
    return 0


def _run_repeats_in_turn(set_dir: Path, plan: SetPlan, config, sources, frameworks, manifest, args, *,
                         trace_steps: int, chaos_in_repeat: bool) -> list[str]:
    """The local executor: repeat after repeat, each framework in turn."""
    problems: list[str] = []
    for i in range(plan.repeats):
        run_dir = set_dir / repeat_dir_name(i)
        run_dir.mkdir(exist_ok=True)
        print(f"repeat {i + 1}/{plan.repeats} (seed {config.seed + i}): {run_dir}", file=sys.stderr, flush=True)
        trace = {"steps": trace_steps} if chaos_in_repeat and i == 0 else None
        repeat = {"set": set_dir.name, "index": i, "of": plan.repeats, "seed": config.seed + i}
        try:
            with trainrun.RunLock(run_dir):
                if _finished(run_dir, config.epochs):
                    print(f"repeat {i}: complete, skipped", file=sys.stderr)
                    code = 0
                elif (run_dir / trainrun.CONFIG_NAME).is_file():
                    code = trainrun.resume_one(run_dir, _resume_args(args, run_dir))
                else:
                    code = trainrun.start_run(repeat_config(config, i), sources, frameworks, manifest, run_dir, args,
                                     repeat=repeat, trace=trace)
        except CheckFailed as exc:  # a stopped or failed repeat: recorded, the set goes on
            problems.append(f"repeat {i}: {exc}")
            code = 1
        finally:
            write_set_record(set_dir, plan)
        if code:
            problems.append(f"repeat {i}: exit {code}")
    return problems


def _run_repeats_together(set_dir: Path, plan: SetPlan, config, sources, frameworks, manifest, args, *,
                          trace_steps: int, chaos_in_repeat: bool) -> list[str]:
    """A concurrent executor (Ray): every repeat's record and starting bundle first, then every
    repeat x framework cell that is not complete at once; each record is written by this process
    as its cells end, so a repeat is counted once whichever node (or attempt) trained it."""
    from bench import executor as executors

    problems: list[str] = []
    prepared: list[tuple[int, trainrun.PreparedRun]] = []
    with contextlib.ExitStack() as stack:
        for i in range(plan.repeats):
            run_dir = set_dir / repeat_dir_name(i)
            run_dir.mkdir(exist_ok=True)
            stack.enter_context(trainrun.RunLock(run_dir))
            if _finished(run_dir, config.epochs):
                print(f"repeat {i}: complete, skipped", file=sys.stderr)
                continue
            print(f"repeat {i + 1}/{plan.repeats} (seed {config.seed + i}): {run_dir}", file=sys.stderr, flush=True)
            if (run_dir / trainrun.CONFIG_NAME).is_file():
                run = trainrun.prepare_resume(run_dir, _resume_args(args, run_dir))
                stack.callback(run.release)
            else:
                trace = {"steps": trace_steps} if chaos_in_repeat and i == 0 else None
                repeat = {"set": set_dir.name, "index": i, "of": plan.repeats, "seed": config.seed + i}
                run = trainrun.prepare_run(repeat_config(config, i), sources, frameworks, manifest, run_dir, args,
                                           repeat=repeat, trace=trace)
            prepared.append((i, run))
        chaos_run = _prepare_chaos_beside(set_dir, plan, config, sources, manifest, args, stack,
                                          trace_steps=trace_steps, chaos_in_repeat=chaos_in_repeat)
        write_set_record(set_dir, plan)
        cells = [cell for _, run in prepared for cell in trainrun.plan_cells(run)]
        if chaos_run is not None:
            cells += trainrun.plan_cells(chaos_run)
        print(f"{len(cells)} cell(s) to train on {executors.from_args(args).name}", file=sys.stderr, flush=True)
        try:
            interrupted = trainrun.run_cells(executors.from_args(args), cells)
        finally:
            write_set_record(set_dir, plan)
        for i, run in prepared + ([(None, chaos_run)] if chaos_run is not None else []):
            trainrun.settle_record(run.record, interrupted=interrupted)
        write_set_record(set_dir, plan)
        if interrupted:
            raise KeyboardInterrupt
        for i, run in prepared:
            try:
                trainrun.report_run(run.record, run.run_dir, interrupted=False)
            except CheckFailed as exc:  # a stopped or failed repeat: recorded, the set goes on
                problems.append(f"repeat {i}: {exc}")
    return problems


def _prepare_chaos_beside(set_dir: Path, plan: SetPlan, config, sources, manifest, args, stack, *,
                          trace_steps: int, chaos_in_repeat: bool) -> "trainrun.PreparedRun | None":
    """The chaos control's 1-ulp torch run, prepared to train beside the repeats (its bundle is
    repeat 0's, moved one ulp): None when repeat 0 is not the pair it needs, or it is done.
    ``run_chaos`` then finds it trained and writes chaos.json."""
    if not (plan.chaos and chaos_in_repeat):
        return None
    cconfig = _chaos_config(plan, config, manifest)
    ulp_dir, bundle = _ulp_run(set_dir, set_dir / repeat_dir_name(0))
    if _finished(ulp_dir, cconfig.epochs):
        return None
    _say_ulp(bundle, ", beside the repeats")
    stack.enter_context(trainrun.RunLock(ulp_dir))
    if (ulp_dir / trainrun.CONFIG_NAME).is_file():
        run = trainrun.prepare_resume(ulp_dir, _resume_args(args, ulp_dir))
        stack.callback(run.release)
        return run
    return trainrun.prepare_run(cconfig, sources, ["torch"], manifest, ulp_dir, args, kind="chaos",
                                init_bundle=bundle, trace={"steps": trace_steps})


def _finished(run_dir: Path, epochs: int) -> bool:
    """A repeat whose every framework completed its epochs: nothing to do, nothing rewritten."""
    from bench.results import load_record

    if not (run_dir / "run.json").is_file():
        return False
    record = load_record(run_dir)
    return record.status == "complete" and all(
        r.get("status") == "complete" and int(r.get("epochs_completed") or 0) >= epochs
        for r in record.frameworks.values())


def _resume_args(args: argparse.Namespace, run_dir: Path) -> argparse.Namespace:
    out = argparse.Namespace(**vars(args))
    for name in ("epochs", "repeats"):
        setattr(out, name, None)
    out.resume = str(run_dir)
    return out


def run_chaos(set_dir: Path, plan: SetPlan, config, sources, manifest, args, *, in_repeat: bool) -> dict[str, Any]:
    """The torch 1-ulp run (and, unless repeat 0 already followed the manifest order, a TF and a
    torch run that do), then ``chaos.json``."""
    from bench import chaos
    from bench.results import load_record

    chaos_dir = set_dir / CHAOS_DIR
    chaos_dir.mkdir(exist_ok=True)
    trace = {"steps": plan.chaos_steps or 10**9}
    cconfig = _chaos_config(plan, config, manifest)
    runs: dict[str, Path] = {}
    if in_repeat:
        pair_dir = set_dir / repeat_dir_name(0)
        runs.update({"tf": pair_dir / "tf", "torch": pair_dir / "torch"})
    else:
        pair_dir = chaos_dir / "pair"
        pair_dir.mkdir(exist_ok=True)
        with trainrun.RunLock(pair_dir):
            if (pair_dir / trainrun.CONFIG_NAME).is_file():
                trainrun.resume_one(pair_dir, _resume_args(args, pair_dir))
            else:
                trainrun.start_run(cconfig, sources, ["tf", "torch"], manifest, pair_dir, args, kind="chaos", trace=trace)
        runs.update({"tf": pair_dir / "tf", "torch": pair_dir / "torch"})
    ulp_dir, bundle = _ulp_run(set_dir, pair_dir)
    with trainrun.RunLock(ulp_dir):
        if _finished(ulp_dir, cconfig.epochs):
            pass  # trained beside the repeats (a concurrent executor: bench.repeats._run_repeats_together)
        elif (ulp_dir / trainrun.CONFIG_NAME).is_file():
            _say_ulp(bundle)
            trainrun.resume_one(ulp_dir, _resume_args(args, ulp_dir))
        else:
            _say_ulp(bundle)
            trainrun.start_run(cconfig, sources, ["torch"], manifest, ulp_dir, args, kind="chaos",
                               init_bundle=bundle, trace=trace)
    runs["torch-1ulp"] = ulp_dir / "torch"
    pair, ulp = load_record(pair_dir), load_record(ulp_dir)
    losses = {"tf": chaos.step_losses(pair.frameworks["tf"]), "torch": chaos.step_losses(pair.frameworks["torch"]),
              "torch-1ulp": chaos.step_losses(ulp.frameworks["torch"])}
    result = chaos.analyse({k: chaos.read_trace(v) for k, v in runs.items()}, losses)
    doc = envelope.record(chaos.FORMAT, chaos.VERSION, {
        "set": set_dir.name, "order": "manifest", "seed": config.seed, "torch_ablation": config.torch_ablation,
        "runs": {k: str(v.relative_to(set_dir)) for k, v in runs.items()}, **result})
    envelope.write(set_dir / CHAOS_NAME, doc)
    print(f"chaos control: {result.get('summary') or result.get('message')}", file=sys.stderr, flush=True)
    return doc


def _chaos_config(plan: SetPlan, config, manifest):
    """The chaos runs' config: manifest order, and in the cheap form only as many epochs as the
    traced steps need."""
    cconfig = dataclasses.replace(config, order="manifest")
    if plan.chaos_steps:
        steps_per_epoch = -(-int(manifest.info()["counts"]["training"]) // config.batch_size)
        cconfig = dataclasses.replace(cconfig, epochs=min(config.epochs, -(-plan.chaos_steps // steps_per_epoch)))
    return cconfig


def _ulp_run(set_dir: Path, pair_dir: Path) -> tuple[Path, Path]:
    """The 1-ulp run's directory and its starting bundle (written from the pair's, once)."""
    from bench import chaos

    chaos_dir = set_dir / CHAOS_DIR
    ulp_dir = chaos_dir / "ulp"
    ulp_dir.mkdir(parents=True, exist_ok=True)
    bundle = chaos_dir / "init-1ulp.npz"
    if not bundle.is_file():
        chaos.perturb_bundle(pair_dir / "init.npz", bundle)
    return ulp_dir, bundle


def _say_ulp(bundle: Path, where: str = "") -> None:
    print(f"chaos control: torch from {bundle.name} (every weight + 1 ulp), manifest order{where}", file=sys.stderr,
          flush=True)


def write_set_record(set_dir: Path, plan: SetPlan) -> dict[str, Any]:
    """``repeats.json``: the repeats found, by index, and the statistics over the paired ones."""
    from bench.results import load_record
    from bench.stats import compare_repeats

    entries, records = [], []
    for i in range(plan.repeats):
        run_dir = set_dir / repeat_dir_name(i)
        if not (run_dir / "run.json").is_file():
            entries.append({"index": i, "status": "pending", "record": None})
            continue
        record = load_record(run_dir)
        records.append(record.to_dict())
        entry = {"index": i, "seed": record.repeat.get("seed"), "status": record.status,
                 "record": f"{repeat_dir_name(i)}/run.json"}
        # Ray: how many attempts each cell took (a retried cell is still one repeat: its record is written once).
        attempts = {fw: run["executor"].get("attempts") for fw, run in record.frameworks.items() if run.get("executor")}
        if attempts:
            entry["attempts"] = attempts
        entries.append(entry)
    doc = envelope.record(FORMAT, VERSION, {
        "set": set_dir.name, "updated": envelope.now_iso(), "plan": dataclasses.asdict(plan), "repeats": entries,
        "statistics": compare_repeats(records, margin=plan.margin),
        "chaos": CHAOS_NAME if (set_dir / CHAOS_NAME).is_file() else None})
    envelope.write(set_dir / SET_NAME, doc)
    return doc


