"""Per-block numeric parity between the Keras model and its PyTorch port, forward to training.

    twinbench parity                                 # defaults: ~2 min on 2 cores, calibrated float32
    twinbench parity --fixed-tolerances              # float32 by the fixed table (no float64 pass)
    twinbench parity --dtype float64 --json parity.json
    twinbench parity --checks forward,grad --input-size 64 --pooling global
    twinbench parity --checks all --steps 20         # adds the K-step training trajectory
    twinbench parity --ablate bn-eps                 # switch one alignment off on the torch side
    twinbench parity --ablation-table                # every ablation alone: what each mismatch costs
    twinbench parity --arms tf,keras-torch           # the Keras model on Keras' torch backend against TF
    twinbench parity --arms keras-torch,torch        # ... and as the reference the port is compared with

Both sides load one weight bundle and read one input batch, each in its own worker; TF is the
reference, the torch port the candidate (``--arms`` picks another pair of bench.parity_spec.PARITY_ARMS;
the record's ``tf``/``torch`` slots are then the reference's and the candidate's, ``config.arms``
names them). Rows are the probe points plus ``input`` and ``loss``; columns are the checks
(``bench.parity_spec.CHECK_GROUPS``). A float32 cell passes when its cross-framework error is at
most K = 2 times the larger of the two frameworks' own float32-vs-float64 errors, measured in the
same run; float64 and ``--fixed-tolerances`` use the fixed table. The first failing cell (checks in
pipeline order, rows in network order) names the first divergent block; the command then exits 1.
The checks, the judges, the calibrated weights, the inputs and the JSON record: docs/parity.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench import atomic, envelope
from bench import parity_metrics as pm
from bench import parity_spec as ps
from bench.errors import CheckFailed, UserError
from bench.frameworks import KERAS_TORCH
from bench.options import add_executor_options, add_model_options, add_worker_options, positive_int, worker_config
from bench.parity_spec import (ABLATIONS, CHECK_GROUPS, DEFAULT_CHECKS, DEFAULT_STEPS, PARITY_ARMS, TOLERANCES,
                               ParityConfig)
from bench.parity_table import (CALIBRATED_METRIC, build_table, failures, first_divergent, format_ablation_table,
                                format_table, summarize, trajectory_curve, trajectory_own)
from bench.executor import Job, run_job
from bench.runner import WorkerConfig, WorkerResult
from bench.spec import ModelSpec

FORMAT = "twinbench.parity"
FORMAT_VERSION = 1


# ---- orchestration ---------------------------------------------------------------------------------
@dataclass
class _Session:
    config: ParityConfig
    spec: ModelSpec
    root: Path
    workers: WorkerConfig
    x: np.ndarray
    y: np.ndarray
    traj_x: np.ndarray | None
    traj_y: np.ndarray | None
    weights: str
    calibration: dict[str, Any] | None
    input_info: dict[str, Any]
    tf_input: np.ndarray | None = None  # the TF pipeline's batch (input row), with a manifest
    torch_input: np.ndarray | None = None
    chaos_weights: str | None = None  # the bundle moved by one ulp (trajectory chaos baseline)


def _say(workers: WorkerConfig, text: str) -> None:
    if not workers.quiet:
        print(f"parity: {text}", file=sys.stderr, flush=True)


def random_inputs(spec: ModelSpec, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded raw pixels in [0, 255) (the seed feeds raw pixels) and labels in [0, classes)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 255.0, (batch, spec.input_size, spec.input_size, 3)).astype(np.float32)
    return x, rng.integers(0, spec.classes, batch).astype(np.int64)


@contextlib.contextmanager
def _work_root(config: ParityConfig) -> Iterator[Path]:
    """``--work-dir`` (kept), or a temporary directory removed afterwards: a float32 run leaves
    ~1 GB of worker arrays."""
    if config.work_dir:
        root = Path(config.work_dir)
        root.mkdir(parents=True, exist_ok=True)
        yield root
    else:
        with tempfile.TemporaryDirectory(prefix="twinbench-parity-") as tmp:
            yield Path(tmp)


def _prepare(config: ParityConfig, workers: WorkerConfig, spec: ModelSpec, root: Path) -> _Session:
    from bench.weights import WeightBundle, random_bundle

    want_traj = "trajectory" in config.checks
    tf_input = torch_input = traj_x = traj_y = None
    if config.manifest:
        x, y, info, tf_input, traj = _manifest_inputs(config, workers, spec, root, want_traj)
        torch_input = x
        if want_traj:
            traj_x, traj_y = traj
    else:
        x, y = random_inputs(spec, config.batch, config.seed)
        info = {"source": "random", "batch": config.batch, "size": spec.input_size, "labels": y.tolist()}
        if want_traj:
            # Step k's batch: the parity batch for k = 0, then seeded batches of the same kind.
            batches = [(x, y)] + [random_inputs(spec, config.batch, config.seed + 1000 + k)
                                  for k in range(1, config.steps)]
            traj_x, traj_y = np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
    calibrate = config.calibrate if config.calibrate is not None else config.weights is None
    if config.weights:
        weights = str(config.weights)
    else:
        weights = str(root / "random.npz")
        random_bundle(spec, seed=config.seed).save(weights)
    calibration = None
    if calibrate:
        _say(workers, "calibrating the weights on the parity batch (torch worker)")
        out = str(root / "calibrated.npz")
        res = run_job(workers, Job("torch", "parity_calibrate",
                                   {**config.model_args(), "weights": weights, "out": out, "seed": config.seed},
                                   arrays={ps.X: x}, job_dir=root / "calibrate", inputs=("weights",),
                                   outputs=("out",)))
        calibration, weights = res.result, out
    chaos = None
    if want_traj and config.calibrated():
        chaos = str(root / "chaos.npz")
        one_ulp(WeightBundle.load(weights), config.seed).save(chaos)
    return _Session(config, spec, root, workers, x, y, traj_x, traj_y, weights, calibration, info,
                    tf_input, torch_input, chaos)


def one_ulp(bundle, seed: int):
    """The bundle with every float element moved one ulp up or down (seeded): the trajectory's
    chaos baseline starts here, a difference as small as float32 can make."""
    from bench.weights import WeightBundle

    rng = np.random.default_rng(seed + 7919)
    arrays = {}
    for key, a in bundle.arrays.items():
        if np.issubdtype(a.dtype, np.floating):
            up = rng.random(a.shape) < 0.5
            a = np.where(up, np.nextafter(a, np.inf), np.nextafter(a, -np.inf)).astype(a.dtype)
        arrays[key] = a
    return WeightBundle(arrays, {**bundle.meta, "source": f"{bundle.meta.get('source', 'weights')}, one ulp"})


def _manifest_inputs(config: ParityConfig, workers: WorkerConfig, spec: ModelSpec, root: Path, trajectory: bool):
    """The first ``batch`` validation images decoded by each side's pipeline (pipeline ablations
    applied) and, for the trajectory, the first ``steps`` batches of the training split in the
    manifest's epoch-0 order (``bench.orders.epoch_permutation``, as training with
    ``order=manifest`` sees them)."""
    from bench.dataset import load_manifest
    from bench.orders import epoch_permutation

    manifest = load_manifest(config.manifest, verify="hash")  # the workers then skip verifying
    n_val, n_train = len(manifest.entries("validation")), len(manifest.entries("training"))
    if n_val < config.batch:
        raise UserError(f"{config.manifest}: {n_val} validation images, fewer than --batch {config.batch}")
    args: dict[str, Any] = {"manifest": str(config.manifest), "indices": list(range(config.batch)),
                            "size": spec.input_size}
    traj_indices: list[int] = []
    if trajectory:
        if n_train < config.batch * config.steps:
            raise UserError(f"{config.manifest}: {n_train} training images, fewer than --batch x --steps "
                            f"= {config.batch * config.steps}")
        traj_indices = epoch_permutation(manifest, n_train, 0)[:config.batch * config.steps].tolist()
    options: dict[str, dict[str, Any]] = {"tf": {}, "torch": {}}
    for name in config.ablations:
        ablation = ABLATIONS[name]
        if ablation.pipeline:
            options[ablation.pipeline].update(ablation.options)
    # The input row compares the two pipelines; without TF among the arms only torch's decodes.
    with_tf = "tf" in config.arms
    _say(workers, f"decoding {config.batch} validation images from {config.manifest} "
                  f"({'both pipelines' if with_tf else 'the torch pipeline'})")
    tf_out = (run_job(workers, Job("tf", "parity_inputs", {**args, "options": options["tf"]},
                                   job_dir=root / "inputs-tf", manifest="manifest")) if with_tf else None)
    torch_out = run_job(workers, Job("torch", "parity_inputs", {**args, "options": options["torch"],
                                                                "traj_indices": traj_indices},
                                     job_dir=root / "inputs-torch", manifest="manifest"))
    # Both models read the torch pipeline's batch (accurate decoder, bit-identical to TF's
    # INTEGER_ACCURATE); the input row compares the two pipelines' batches.
    x = np.ascontiguousarray(torch_out.arrays[ps.X], dtype=np.float32)
    y = torch_out.arrays[ps.Y].astype(np.int64)
    info = {"source": "manifest", "manifest": str(config.manifest), "fingerprint": manifest.fingerprint,
            "split": "validation", "batch": config.batch, "size": spec.input_size, "labels": y.tolist(),
            "files": torch_out.result.get("files")}
    traj = None
    if trajectory:
        b = config.batch
        traj = (torch_out.arrays[ps.TRAJ_X].reshape(config.steps, b, *x.shape[1:]),
                torch_out.arrays[ps.TRAJ_Y].reshape(config.steps, b))
    return x, y, info, (tf_out.arrays[ps.X] if tf_out is not None else None), traj


def _optimizer(session: _Session, arm: str, optimizer: dict) -> dict:
    """The optimizer config one side gets: Keras' Adam on the torch backend corrects its float64
    bias correction to TF's (tf_impl.optim.TFBetaCorrection), the one alignment this arm needs;
    float32 unchanged."""
    if arm == KERAS_TORCH and session.config.dtype == "float64" and optimizer.get("name") == "adam":
        return {**optimizer, "tf_beta_correction": True}
    return optimizer


PROBE_FILES = ("weights", "chaos_weights")  # the bundles a probe reads (a Ray node gets them)


def _probe_args(session: _Session, checks: list[str], optimizer: dict, own: bool = True) -> dict[str, Any]:
    c = session.config
    return {**c.model_args(), "dtype": c.dtype, "weights": session.weights, "seed": c.seed, "checks": checks,
            "optimizer": optimizer, "sgd": ps.SGD_CONFIG, "quiet": session.workers.quiet,
            # The calibration: each side's own float32 error, from its own float64 pass in the
            # same worker (own_errors), and its trajectory from the one-ulp bundle.
            "own_errors": own and c.calibrated(), "chaos_weights": session.chaos_weights if own else None}


def _batches(session: _Session) -> dict[str, np.ndarray]:
    """The job arrays every probe reads: the parity batch and the trajectory's batches."""
    arrays = {ps.X: session.x, ps.Y: session.y}
    if session.traj_x is not None:
        arrays.update({ps.TRAJ_X: session.traj_x, ps.TRAJ_Y: session.traj_y})
    return arrays


def _reference(session: _Session) -> WorkerResult:
    """The reference worker's (TF's unless ``--arms`` says otherwise) arrays for every requested check."""
    checks = list(session.config.checks)
    if "step" in checks and "train" not in checks and "grad" not in checks:
        checks.append("grad")  # the step starts from the reference gradients
    arm = session.config.arms[0]
    _say(session.workers, f"{arm} reference ({', '.join(session.config.checks)})")
    optimizer = _optimizer(session, arm, ps.ADAM_CONFIG)
    return run_job(session.workers, Job(arm, "parity_probe", _probe_args(session, checks, optimizer),
                                        arrays=_batches(session), job_dir=session.root / arm, inputs=PROBE_FILES))


def _candidate(session: _Session, ref: WorkerResult, ablations: tuple[str, ...], own: bool = True) -> WorkerResult:
    """The candidate worker's (the torch port's unless ``--arms`` says otherwise) arrays, with the
    given ablations (torch only), fed the reference's arrays; with ``own`` (and calibrated
    tolerances) also its own float32 error and chaos baseline."""
    align: dict[str, Any] = {}
    optimizer = dict(ps.ADAM_CONFIG)
    for name in ablations:
        align.update(ABLATIONS[name].align)
        if ABLATIONS[name].optimizer:
            optimizer.update(ABLATIONS[name].optimizer)
    args = _probe_args(session, list(session.config.checks), _optimizer(session, session.config.arms[1], optimizer),
                       own)
    args["align"] = align
    arrays = _batches(session)
    # Only the references the requested checks read: the gradients alone are 100 MB (float32).
    checks = set(session.config.checks)
    kinds = (((ps.FWD,) if "forward" in checks else ()) + ((ps.TRAIN,) if checks & {"train", "grad"} else ())
             + ((ps.DTRAIN,) if "grad" in checks else ()) + ((ps.GRAD,) if "step" in checks else ()))
    wanted = tuple(ps.key(kind, "") for kind in kinds)
    for key, value in ref.arrays.items():
        if wanted and key.startswith(wanted) and key != ps.TRAIN_LOSS:
            arrays[ps.key(ps.REF, key)] = value
    label = f" with {', '.join(ablations)} off" if ablations else ""
    arm = session.config.arms[1]
    _say(session.workers, f"{arm}{label}")
    return run_job(session.workers, Job(arm, "parity_probe", args, arrays=arrays, inputs=PROBE_FILES,
                                        job_dir=session.root / (f"{arm}-" + "-".join(ablations) if ablations else arm)))


def own_errors(spec: ModelSpec, worker: WorkerResult) -> dict[str, dict[str, Any]]:
    """One side's own errors: its worker's float32-vs-float64 statistics plus its trajectory's
    chaos baseline (computed here from the two trajectories it returned)."""
    own = dict(worker.result.get("own") or {})
    if ps.key(ps.CHAOS, ps.TRAJ_SAMPLE) in worker.arrays:
        own.update(trajectory_own(spec, worker.arrays))
    return own


def _assemble(session: _Session, ref: WorkerResult, other: WorkerResult, ablations: tuple[str, ...],
              started: float, own_torch: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The result dict. ``own_torch``: the torch side's own errors to calibrate with (the
    ablation table passes the aligned baseline's); default: the candidate's own."""
    c, spec = session.config, session.spec
    columns = c.columns()
    tolerances = TOLERANCES[c.dtype]
    inputs = None
    if session.tf_input is not None:
        inputs = (session.tf_input, session.torch_input)
    own = None
    if c.calibrated():
        own = {"tf": own_errors(spec, ref), "torch": own_torch if own_torch is not None else own_errors(spec, other)}
    table = build_table(spec, ref.arrays, other.arrays, columns, tolerances, inputs, own)
    fails = failures(table, columns)
    loss = None
    if "loss" in ref.result:
        bound = ref.result["clipped_loss_bound"]
        rel = abs(ref.result["loss"] - ref.result["loss_from_logits"]) / max(abs(ref.result["loss_from_logits"]), 1e-300)
        loss = {"tf": ref.result["loss"], "tf_from_logits": ref.result["loss_from_logits"],
                "torch": float(other.arrays[ps.TRAIN_LOSS]) if ps.TRAIN_LOSS in other.arrays else None,
                # Keras' loss on the softmax equals the exact cross-entropy of the logits.
                "keras_logits_recovered": bool(rel <= tolerances["train"]),
                "clipped_loss_bound": bound}
    curve = (trajectory_curve(spec, ref.arrays, other.arrays, ps.TRAJECTORY_ONSET.get(c.dtype, 0.0))
             if ps.TRAJ_SAMPLE in other.arrays else None)
    config = asdict(c)
    config["checks"] = list(c.checks)
    config["ablations"] = list(ablations)
    config["arms"] = list(c.arms)
    return atomic.json_safe(envelope.record(FORMAT, FORMAT_VERSION, {
        "verdict": "fail" if fails else "pass",
        "first_failure": fails[0] if fails else None,
        "failures": fails,
        "first_divergent": first_divergent(table, columns),
        "config": config,
        "ablation": {name: ABLATIONS[name].description for name in ablations},
        "arms": {"reference": c.arms[0], "candidate": c.arms[1]},
        # float64 only: the keras-torch side's Adam takes TF's bias correction (tf_impl.optim).
        "keras_torch_alignment": (["adam-tf-beta-correction"] if KERAS_TORCH in c.arms and c.dtype == "float64"
                                  else []),
        # Keras keeps float64 on TF only; a keras-torch side restores it (tf_impl.tape.exact_float64).
        "float64_promotion_patched": {side: w.result.get("float64_promotion_patched")
                                      for side, w in (("reference", ref), ("candidate", other))
                                      if "float64_promotion_patched" in w.result},
        "rows": table["rows"], "columns": columns,
        "tolerances": {col: tolerances[col] for col in columns},  # the fixed table (the fallback)
        "judge": {"mode": "calibrated" if own is not None else "fixed", "k": pm.K, "floor": pm.FLOOR,
                  "metrics": {col: CALIBRATED_METRIC.get(col, "max_rel") for col in columns},
                  "torch_own": None if own is None else ("aligned baseline" if own_torch is not None else "candidate")},
        "table": table["table"],
        "loss": loss,
        "trajectory": curve,
        "calibration": session.calibration,
        "inputs": session.input_info,
        "seconds": {"tf": ref.result.get("seconds"), "torch": other.result.get("seconds"),
                    "total": round(time.perf_counter() - started, 2)},
    }))


def parity_workers(workers: WorkerConfig | None) -> WorkerConfig:
    """The worker config with OpenMP told not to spin: on 2 cores shared with anything else,
    torch's busy-waiting OpenMP threads made a 64 px forward 4.3 s instead of 0.05 s
    (measured, load 8). Parity measures numbers, not speed; a user's own setting wins."""
    workers = workers or WorkerConfig()
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **workers.env}
    return replace(workers, env=env)


def run_parity(config: ParityConfig, workers: WorkerConfig | None = None) -> dict[str, Any]:
    """Run one parity comparison and return the result dict (JSON shape in the module docstring).
    Never raises for failing checks: read ``result["verdict"]``."""
    started = time.perf_counter()
    workers = parity_workers(workers)
    spec = config.validate()
    with _work_root(config) as root:
        session = _prepare(config, workers, spec, root)
        ref = _reference(session)
        other = _candidate(session, ref, tuple(config.ablations))
        return _assemble(session, ref, other, tuple(config.ablations), started)


def _groups_upto(check: str, groups: tuple[str, ...]) -> tuple[str, ...]:
    """The check groups (of ``groups``, in order) up to the one holding ``check``."""
    order = list(CHECK_GROUPS)
    last = next(g for g, cols in CHECK_GROUPS.items() if check in cols)
    return tuple(g for g in groups if order.index(g) <= order.index(last)) or (last,)


def run_ablation_table(config: ParityConfig, workers: WorkerConfig | None = None,
                       names: tuple[str, ...] | None = None, *, stop_at_expected: bool = False) -> dict[str, Any]:
    """The aligned baseline and each ablation alone against ONE TF reference: what each
    mismatch costs. Pipeline ablations run only with a manifest. ``stop_at_expected``: each
    ablation's torch side runs only the check groups up to its expected check (faster; the
    later columns stay empty)."""
    started = time.perf_counter()
    if config.arms[1] != "torch":
        raise UserError(f"--ablation-table switches alignments off in the torch port: with --arms "
                        f"{','.join(config.arms)} the candidate is not the port; use --arms tf,torch")
    workers = parity_workers(workers)
    config = replace(config, ablations=())
    spec = config.validate()
    columns = config.columns()
    # By default the ablations the chosen checks can see (pipeline ones need a manifest).
    names = tuple(names or [n for n, a in ABLATIONS.items() if a.expect[0] in columns])
    with _work_root(config) as root:
        return _ablation_table(config, workers, spec, names, columns, root, started, stop_at_expected)


def _ablation_table(config: ParityConfig, workers: WorkerConfig, spec: ModelSpec, names: tuple[str, ...],
                    columns: list[str], root: Path, started: float, stop_at_expected: bool) -> dict[str, Any]:
    session = _prepare(config, workers, spec, root)
    ref = _reference(session)
    aligned = _candidate(session, ref, ())
    baseline = _assemble(session, ref, aligned, (), started)
    # Every ablation is judged with the aligned port's own errors: its float64 pass and chaos
    # run are not repeated per ablation (a single --ablate run measures the ablated port's own).
    own_torch = own_errors(spec, aligned) if config.calibrated() else None
    out = envelope.record(FORMAT + "-ablations", FORMAT_VERSION, {
        "config": baseline["config"], "baseline": summarize(baseline), "ablations": {},
        "results": {"baseline": baseline}})
    for name in names:
        ablation = ABLATIONS[name]
        if ablation.pipeline and not config.manifest:
            raise UserError(f"ablation {name} compares the data pipelines: it needs --manifest M")
        if ablation.pipeline:
            # Only the pipelines change: the models keep reading the aligned batch, so the
            # model rows are the baseline's and the input row shows the mismatch.
            x_torch, _, _, x_tf, _ = _manifest_inputs(replace(config, ablations=(name,)), workers, spec,
                                                      session.root / name, False)
            result = _assemble(replace(session, tf_input=x_tf, torch_input=x_torch), ref, aligned, (name,), started,
                               own_torch)
        else:
            sub = session
            if stop_at_expected:
                groups = _groups_upto(ablation.expect[0], config.checks)
                if not ablation.align:  # an optimizer alone: the model's checks are the baseline's
                    groups = groups[-1:]
                sub = replace(session, config=replace(config, checks=groups))
            result = _assemble(sub, ref, _candidate(sub, ref, (name,), own=False), (name,), started, own_torch)
        out["ablations"][name] = {"description": ablation.description, **summarize(result, ablation.expect)}
        out["results"][name] = result
    # Pass: the aligned baseline passes, and every ablation whose check ran is caught.
    out["verdict"] = "pass" if baseline["verdict"] == "pass" and all(
        a["first_failure"] is not None for n, a in out["ablations"].items()
        if ABLATIONS[n].expect[0] in columns) else "fail"
    out["seconds"] = round(time.perf_counter() - started, 2)
    return atomic.json_safe(out)


def run_record(config: ParityConfig, workers: WorkerConfig | None = None, *, out: str | os.PathLike | None = None,
               ablation_table: bool = False, names: tuple[str, ...] | None = None,
               stop_at_expected: bool = False) -> tuple[dict[str, Any], Path | None]:
    """What ``twinbench parity`` runs: :func:`run_parity`, or with ``ablation_table``
    :func:`run_ablation_table` over ``names`` (default: every ablation the checks can see); the
    record is written atomically to ``out`` when given. Returns the record and its path. Never
    raises for failing checks: read the verdict."""

    if ablation_table:
        result = run_ablation_table(config, workers, names, stop_at_expected=stop_at_expected)
    else:
        result = run_parity(config, workers)
    if out is None:
        return result, None
    envelope.write(out, result)
    return result, Path(out)


# ---- CLI ----------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("parity", help="per-block numeric parity TF vs torch: forward, train mode, gradients, "
                                      "optimizer step, trajectory",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", metavar="BUNDLE|H5", help="weight file (default: calibrated random weights)")
    p.add_argument("--arms", default="tf,torch", metavar="REF,CAND",
                   help="reference and candidate: " + "; ".join(",".join(a) for a in PARITY_ARMS)
                        + " (default tf,torch)")
    p.add_argument("--manifest", metavar="M", help="read the parity batch from this manifest's validation split")
    p.add_argument("--dtype", choices=tuple(TOLERANCES), default="float32", help="precision of both sides")
    p.add_argument("--batch", type=positive_int, default=2, help="images in the parity batch (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, inputs, labels (default 0)")
    p.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                   help=f"comma-separated groups of {', '.join(CHECK_GROUPS)}, or 'all' "
                        f"(default {','.join(DEFAULT_CHECKS)})")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                   help=f"trajectory length K (default {DEFAULT_STEPS})")
    p.add_argument("--ablate", action="append", default=[], metavar="NAME", choices=tuple(ABLATIONS),
                   help=f"switch one alignment off on the torch side (repeatable): {', '.join(ABLATIONS)}")
    p.add_argument("--ablation-table", action="store_true",
                   help="run the baseline and every ablation alone; print what each mismatch costs")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="calibrate BN statistics and the head on the batch (default: random weights only)")
    p.add_argument("--fixed-tolerances", action="store_true",
                   help="float32: judge by the fixed tolerance table instead of tolerances calibrated in the "
                        "run (each framework's own float32-vs-float64 error); faster, far looser")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON")
    p.add_argument("--work-dir", metavar="DIR", help="keep the worker jobs and arrays here")
    add_model_options(p)
    add_worker_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_parity)


def config_from_args(args: argparse.Namespace) -> ParityConfig:
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    if checks == ["all"]:
        checks = list(CHECK_GROUPS)
    return ParityConfig(model=args.model, classes=args.classes, input_size=args.input_size, pooling=args.pooling,
                        dtype=args.dtype, batch=args.batch, seed=args.seed, checks=tuple(checks),
                        ablations=tuple(dict.fromkeys(args.ablate)), steps=args.steps, weights=args.weights,
                        manifest=args.manifest, calibrate=args.calibrate, work_dir=args.work_dir,
                        fixed_tolerances=args.fixed_tolerances,
                        arms=tuple(a.strip() for a in args.arms.split(",")))


def cmd_parity(args: argparse.Namespace) -> int:
    from bench import executor

    with executor.for_command(args):  # a Ray cluster it started stops with it
        return _cmd_parity(args)


def _cmd_parity(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    workers = worker_config(args)
    if args.ablation_table and config.ablations:
        raise UserError("--ablation-table runs every ablation alone: drop --ablate")
    result, out = run_record(config, workers, out=args.json, ablation_table=args.ablation_table)
    baseline = result["results"]["baseline"] if args.ablation_table else result
    print(format_table(baseline))
    if args.ablation_table:
        print()
        print(format_ablation_table(result))
    if out is not None:
        print(f"wrote {args.json}")
    if result["verdict"] == "pass":
        return 0
    if not args.ablation_table:
        raise CheckFailed(f"parity failed: {_first_line(result)}")
    missed = [n for n, a in result["ablations"].items() if a["first_failure"] is None]
    raise CheckFailed("parity ablation table: " + (
        f"the aligned baseline fails ({_first_line(baseline)})"
        if result["baseline"]["verdict"] != "pass" else f"ablation {missed[0]} is not detected by any check"))


def _first_line(result: dict[str, Any]) -> str:
    first = result["first_failure"]
    return f"first divergent block {first['block']}, check {first['check']}: {first['reason']}"
