"""``twinbench train``: both frameworks trained on one split, under the same conditions.

    twinbench train --framework both --profile quick               # the demo data, ~5 min on 2 cores
    twinbench train --framework both --manifest M --profile seed   # the seed: 224 px, batch 8, 50 epochs
    twinbench train --manifest M --profile quick --epochs 8 --order manifest --init keras
    twinbench train --resume runs/train-20250101-120000-ab12       # continue a killed run

Fairness by construction: one resolved :class:`TrainConfig` for both sides; one starting weight
bundle (``--init keras``: Keras' initialisers, exported once, so the first losses agree); the same
thread counts (set explicitly, recorded); the same precision policy; the same data order mode;
each side in its own worker process, one after the other (never both at once on shared cores).
The training loop itself lives here, once (:func:`run_training`): ``tf_impl.train`` and
``torch_impl.train`` supply only a framework :class:`Trainer` (step, evaluate, checkpoint), so both
sides are timed, printed, checkpointed and stopped by the same code.

Run directory (``--out``, default ``runs/``)::

    train-YYYYmmdd-HHMMSS-xxxx/
      run.json          the run record (bench.results): config, environment, history, memory, ...
      config.json       the resolved config alone (what --resume reads)
      manifest.json     a copy of the manifest used (the demo's, written here when none is given)
      init.npz          the shared starting weights (WeightBundle)
      lock              pid of the twinbench process working on the run (removed at the end)
      tf/ torch/        state.json (last checkpoint + history, written atomically after each epoch),
                        ckpt-epoch-NNN.npz (weights as a bundle) + ckpt-epoch-NNN.opt.* (optimizer),
                        predictions.npz, worker.pid, job/ (worker protocol files)

Resume: ``--resume RUN_DIR`` reloads config.json, skips frameworks that finished, and restarts an
interrupted one at the epoch after its last checkpoint, so the history has every epoch once.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from bench import __version__, atomic
from bench.errors import CheckFailed, TwinbenchError, UserError, WorkerError, one_line
from bench.options import add_model_options, add_worker_options, positive_int, worker_config
from bench.schedule import SCHEDULES, learning_rate_at

FRAMEWORKS = ("tf", "torch")
LABELS = {"tf": "TensorFlow", "torch": "PyTorch"}
PRECISIONS = ("fp32", "mixed_bf16", "mixed_fp16")
INITS = ("keras", "torch", "random", "independent")
# moving: the BN layers' moving statistics (Keras' evaluate, the seed). precise-bn: before each
# validation, every BN layer's statistics are re-estimated with the current weights from
# bn_estimate_images training images (fixed, the same on both sides) in training mode, as the
# mean of the batch means and of the biased batch variances (PreciseBN, Wu & Johnson 2021).
# Training is unaffected: training mode normalises with batch statistics and never reads them.
EVALUATIONS = ("moving", "precise-bn")
OPTIMIZERS = ("adam", "sgd")
STATE_NAME = "state.json"
CONFIG_NAME = "config.json"
LOCK_NAME = "lock"


# ---- profiles ------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults ARE the seed profile (../shared/seed/)."""

    model: str = "resnet50"  # the seed's ResNet50()
    classes: int | str = 1000  # the seed keeps the 1000-way ImageNet head; "auto": the manifest's classes
    input_size: int = 224  # img_height = img_width = 224
    pooling: str = "avg7"  # AveragePooling2D((7, 7)) + Flatten, as the seed
    batch_size: int = 8  # batch_size = 8 (the global batch when --devices > 1)
    epochs: int = 50  # epochs = 50
    optimizer: str = "adam"  # compile(optimizer="adam"); torch side: torch_impl.optim.KerasAdam
    learning_rate: float = 1e-3  # Keras Adam default
    lr_schedule: str = "constant"  # compile(optimizer="adam"): a constant rate
    beta_1: float = 0.9  # Keras Adam default
    beta_2: float = 0.999  # Keras Adam default
    epsilon: float = 1e-7  # Keras Adam default, Keras' "epsilon hat" form on both sides
    precision: str = "fp32"  # the seed trains in float32; mixed_bf16 / mixed_fp16 (GPU, loss scaling)
    decoder: str = "accurate"  # bit-identical JPEG pixels on both sides (seed: TF's fast IDCT)
    preprocessing: str = "none"  # the seed feeds raw 0..255 pixels (no preprocess_input)
    order: str = "native"  # each framework shuffles its own way, as the seed's tf.data does
    seed: int = 123  # weights and shuffles (the seed leaves them unseeded; 123 is its split seed)
    init: str = "keras"  # both sides start from ONE bundle made by Keras' initialisers
    weights: str | None = None  # the seed loads resnet50_weights_tf_dim_ordering_tf_kernels.h5; opt-in here
    devices: int = 1  # data-parallel devices (the seed: one GPU)
    threads: int | None = None  # intra-op threads on both sides; None: all cores (set explicitly)
    deterministic: bool = False  # deterministic kernels; makes a torch resume bit-identical
    keep_checkpoints: int = 1  # per framework; ResNet-50 + Adam state is ~300 MB a checkpoint
    evaluation: str = "moving"  # validate with the BN moving statistics, as Keras' fit does
    bn_estimate_images: int = 256  # evaluation "precise-bn": training images the statistics are estimated on
    torch_ablation: str | None = None  # a parity ablation planted in the torch model (experiments only)

    def spec_args(self) -> dict[str, Any]:
        return {"model": self.model, "classes": self.classes, "input_size": self.input_size,
                "pooling": self.pooling}

    def optimizer_config(self) -> dict[str, Any]:
        """The dict tf_impl.optim.build and torch_impl.optim.build share."""
        return {"name": self.optimizer, "learning_rate": self.learning_rate, "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}

    def pipeline_options(self) -> dict[str, Any]:
        """bench.manifest.PipelineOptions fields (as a dict: it crosses to the workers as JSON)."""
        return {"image_size": self.input_size, "batch_size": self.batch_size, "decoder": self.decoder,
                "preprocessing": self.preprocessing, "order": self.order, "seed": self.seed}


@dataclass
class QuickProfile(TrainConfig):
    """The demo in minutes on 2 cores, measuring learning rather than batch-norm lag (docs/profiles.md)."""

    classes: int | str = "auto"  # a head for the manifest's classes (4 on the demo)
    input_size: int = 32  # per-op overhead dominates below 64 px (torch b8: 0.37 s/step at 32, 0.58 at 64)
    pooling: str = "global"  # AveragePooling2D(7) needs a 7x7 map (197..228 px); global pooling fits any size
    batch_size: int = 16  # 29 steps an epoch; torch 32 px b16 reached 59-61% val in 4 epochs (lr 1e-4: 51%)
    epochs: int = 4
    preprocessing: str = "caffe"  # Keras' ResNet50 preprocess_input: centred inputs
    order: str = "manifest"  # the same batches on both sides: the verdict is about the port
    evaluation: str = "precise-bn"  # moving statistics lag the weights for ~100 steps: estimate them


PROFILES: dict[str, type[TrainConfig]] = {"seed": TrainConfig, "quick": QuickProfile}
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# What --resume may change: run length and how it runs, never what it computes.
RESUME_OVERRIDES = ("epochs",)


def validate_config(config: TrainConfig) -> None:
    """One-line UserErrors for settings no worker could use (before any work starts)."""
    from bench.spec import build_spec

    def positive(name: str) -> None:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name.replace('_', '-')} must be a positive integer, received {value!r}")

    for name in ("input_size", "batch_size", "epochs", "devices", "keep_checkpoints"):
        positive(name)
    if config.threads is not None:
        positive("threads")
    for name in ("bn_estimate_images",):
        positive(name)
    if config.torch_ablation is not None:
        torch_alignment(config.torch_ablation)  # a UserError for a name that is not a model ablation
    for name, choices in (("precision", PRECISIONS), ("init", INITS), ("optimizer", OPTIMIZERS),
                          ("evaluation", EVALUATIONS), ("lr_schedule", SCHEDULES)):
        if getattr(config, name) not in choices:
            raise UserError(f"unknown {name} {getattr(config, name)!r}: choose one of {', '.join(choices)}")
    for name in ("learning_rate", "epsilon"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{name.replace('_', '-')} must be a positive number, received {value!r}")
    for name in ("beta_1", "beta_2"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UserError(f"{name.replace('_', '-')} must be in [0, 1), received {value!r}")
    if config.batch_size < config.devices:
        raise UserError(f"batch size {config.batch_size} is smaller than --devices {config.devices}: each device "
                        f"needs at least one image of the global batch")
    from bench.manifest import PipelineOptions

    PipelineOptions(**config.pipeline_options())  # decoder, preprocessing, order
    if isinstance(config.classes, int):
        build_spec(config.model, config.classes, config.input_size, config.pooling)


def torch_alignment(ablation: str | None) -> dict[str, Any]:
    """torch_impl.model.Alignment fields for a parity ablation planted in training (a port bug on
    purpose: what the statistics and the chaos control must notice); {} for the aligned model."""
    if ablation is None:
        return {}
    from bench.parity import ABLATIONS

    names = [n for n, a in ABLATIONS.items() if a.align]
    if ablation not in names:
        raise UserError(f"--torch-ablation {ablation!r}: choose one of {', '.join(names)}")
    return dict(ABLATIONS[ablation].align)


# ---- CLI -----------------------------------------------------------------------------------------
def _classes(text: str) -> int | str:
    if text == "auto":
        return text
    return positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, received {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, received {text}")
    return value


def register(sub) -> None:
    from bench.manifest import DECODERS, ORDERS, PREPROCESSINGS

    p = sub.add_parser(
        "train", help="train both frameworks on one split, fairly, and record everything",
        conflict_handler="resolve",  # --classes is re-declared below to accept "auto"
        description="Trains the TensorFlow and the PyTorch model on the same manifest with the same settings "
                    "(one after the other, each in its own worker) and writes a run record (run.json) with "
                    "per-epoch history, timing, peak memory, final metrics, confusion matrices and predictions. "
                    "Profiles: seed (224 px, batch 8, 50 epochs, the 1000-way head, raw pixels: the seed "
                    f"exactly) and quick ({QuickProfile.input_size} px, batch {QuickProfile.batch_size}, global pooling, the "
                    f"manifest's classes, {QuickProfile.epochs} epochs, caffe inputs, manifest order, precise-BN "
                    "evaluation; docs/profiles.md). Every "
                    "setting below overrides the profile; the resolved config is saved with the results.")
    p.add_argument("--framework", choices=("tf", "torch", "both"), default=None,
                   help="which side(s) to train (default both)")
    p.add_argument("--manifest", metavar="MANIFEST",
                   help="the data split (twinbench manifest DATA_DIR -o MANIFEST); default: the demo data")
    p.add_argument("--data-root", metavar="DIR", help="where the manifest's images are now, if they moved")
    p.add_argument("--verify", choices=("hash", "size", "none"), default="hash",
                   help="check the files against the manifest first (default hash)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="seed", help="settings to start from (default seed)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run in RUN_DIR")
    p.add_argument("--out", default="runs", help="where run directories go (default runs/)")
    p.add_argument("--progress-interval", type=_seconds, default=5.0,
                   help="seconds between per-step progress lines (default 5; 0: every step)")
    add_model_options(p)
    group = p.add_argument_group("overrides (default: the profile's value)")
    group.add_argument("--classes", type=_classes, default=None, help="head size, or 'auto' for the manifest's classes")
    group.add_argument("--input-size", "--image-size", dest="input_size", type=positive_int, default=None,
                       help="square input size")
    group.add_argument("--epochs", type=positive_int, default=None)
    group.add_argument("--batch-size", type=positive_int, default=None, help="global batch size")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="adam (Keras' Adam on both sides) or sgd")
    group.add_argument("--learning-rate", "--lr", dest="learning_rate", type=_positive_float, default=None)
    group.add_argument("--lr-schedule", choices=SCHEDULES, default=None,
                       help="constant (the seed) or cosine (decays to 0 over the run; set before every step "
                            "on both sides)")
    group.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="fp32; mixed_bf16 (Keras mixed_bfloat16 / torch autocast bf16); mixed_fp16 (GPU)")
    group.add_argument("--decoder", choices=DECODERS, default=None)
    group.add_argument("--preprocessing", choices=PREPROCESSINGS, default=None)
    group.add_argument("--order", choices=ORDERS, default=None,
                       help="native: each framework's shuffling; manifest: identical batches on both sides")
    group.add_argument("--seed", type=int, default=None, help="seed of weights and shuffles")
    group.add_argument("--init", choices=INITS, default=None,
                       help="starting weights: one bundle from Keras' (default) or torch's initialisers or "
                            "bench.weights.random_bundle; independent: each side its own")
    group.add_argument("--weights", metavar="FILE", default=None,
                       help="start from these weights (.h5 legacy Keras, .npz bundle, .weights.h5, .pt); "
                            "a head of another size is left at --init")
    group.add_argument("--devices", type=positive_int, default=None,
                       help="data-parallel devices: torch DDP (torchrun; gloo on CPU) and tf MirroredStrategy")
    group.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                       help="deterministic kernels (slower)")
    group.add_argument("--keep-checkpoints", type=positive_int, default=None, help="checkpoints kept per framework")
    group.add_argument("--evaluation", choices=EVALUATIONS, default=None,
                       help="moving: validate with the BN moving statistics (Keras, the seed); precise-bn: "
                            "re-estimate them from --bn-estimate-images training images before each validation")
    group.add_argument("--bn-estimate-images", type=positive_int, default=None,
                       help="training images for --evaluation precise-bn")
    group.add_argument("--torch-ablation", default=None, metavar="NAME",
                       help="plant a parity ablation in the torch model (a port bug on purpose, e.g. bn-momentum)")
    stats = p.add_argument_group("repeats and statistics")
    stats.add_argument("--repeats", type=positive_int, default=None,
                       help="independent runs per framework; run i of every framework uses seed+i and one "
                            "starting bundle (paired). Default 1; twinbench run: 3 in the quick profile")
    stats.add_argument("--margin", type=_positive_float, default=None,
                       help="equivalence margin in percentage points of validation accuracy (default 5)")
    stats.add_argument("--chaos", action=argparse.BooleanOptionalAction, default=None,
                       help="the chaos control: torch trained again from the bundle moved by one ulp "
                            "(manifest order); default off; twinbench run turns it on in the quick profile")
    stats.add_argument("--chaos-steps", type=positive_int, default=None,
                       help="steps the chaos control traces (default: the whole run)")
    add_worker_options(p)
    p.set_defaults(func=cmd_train, model=None, pooling=None)


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, str]]:
    """The profile's config with the command line's overrides; and where each value came from."""
    config = PROFILES[args.profile]()
    sources: dict[str, str] = {}
    for name in CONFIG_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
            sources[name] = "command line"
        else:
            sources[name] = f"profile {args.profile}"
    return config, sources


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        return resume_run(args)
    config, sources = resolve_config(args)
    frameworks = list(FRAMEWORKS) if args.framework in (None, "both") else [args.framework]
    if config.threads is None:
        config.threads = os.cpu_count() or 1  # explicit, so both sides get (and record) the same number
        sources["threads"] = "all cores"
    validate_config(config)  # bad values fail here, before the manifest is even read
    manifest = _load_manifest(args)
    if config.classes == "auto":
        config.classes = manifest.num_classes
        sources["classes"] = "auto: the manifest's classes"
    if config.classes < manifest.num_classes:
        raise UserError(f"--classes {config.classes} is smaller than the manifest's {manifest.num_classes} classes "
                        f"({', '.join(manifest.class_names)}): use --classes auto")
    validate_config(config)
    if config.weights and not Path(config.weights).is_file():
        raise UserError(f"--weights {config.weights}: no such file")
    config.weights = str(Path(config.weights).resolve()) if config.weights else None
    from bench import repeats

    plan = repeats.plan_from_args(args, config)
    if plan.single:
        run_dir = create_run_dir(Path(args.out))
        with RunLock(run_dir):
            return start_run(config, sources, frameworks, manifest, run_dir, args)
    return repeats.start_set(plan, config, sources, frameworks, manifest, args)


def start_run(config: TrainConfig, sources: dict[str, str], frameworks: list[str], manifest, run_dir: Path,
              args: argparse.Namespace, *, repeat: dict[str, Any] | None = None, kind: str = "train",
              init_bundle: Path | None = None, trace: dict[str, Any] | None = None) -> int:
    """One training run in ``run_dir`` (locked by the caller): the record, the starting bundle
    (``init_bundle``: copy this one instead of making it), each framework's worker."""
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
    _say(f"run {run_dir}: {', '.join(LABELS.get(f, f) for f in frameworks)}; {manifest.describe()}", args)
    _say(f"config: {describe_config(config)}", args)
    try:
        if init_bundle is not None:
            from bench.manifest import sha256_file

            shutil.copyfile(init_bundle, run_dir / "init.npz")
            record.init = {"kind": "bundle", "init": config.init, "weights": None, "path": "init.npz",
                           "sha256": sha256_file(run_dir / "init.npz"), "source": str(init_bundle)}
        else:
            record.init = prepare_init(config, run_dir, args)
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
    return train_frameworks(record, config, run_dir, args, trace=trace)


def resume_run(args: argparse.Namespace) -> int:
    from bench import repeats

    if repeats.is_set(Path(args.resume)):
        return repeats.resume_set(Path(args.resume), args)
    return resume_one(Path(args.resume), args)


def resume_one(run_dir: Path, args: argparse.Namespace) -> int:
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
    with RunLock(run_dir):
        record = results.load_record(run_dir)
        record.config = dataclasses.asdict(config)
        record.config_sources = saved["sources"]
        record.command = ["twinbench", *sys.argv[1:]]
        record.invocations.append({"time": results.now_iso(), "command": record.command, "resume": True})
        record.status = "running"
        saved["config"] = record.config
        atomic.write_json(run_dir / CONFIG_NAME, saved)
        args.manifest = str(run_dir / "manifest.json")
        _load_manifest(args)  # the data must still be what the run trained on
        results.save_record(record)
        _say(f"resuming {run_dir}", args)
        return train_frameworks(record, config, run_dir, args, resume=True, trace=saved.get("trace"))


def _say(text: str, args: argparse.Namespace) -> None:
    print(text, file=sys.stderr, flush=True)


def describe_config(c: TrainConfig) -> str:
    return (f"{c.model} {c.input_size}px {c.pooling} pooling, {c.classes} classes, batch {c.batch_size}, "
            f"{c.epochs} epochs, {c.optimizer} lr {c.learning_rate:g}"
            f"{'' if c.lr_schedule == 'constant' else ' ' + c.lr_schedule}, {c.precision}, order {c.order}, "
            f"decoder {c.decoder}, preprocessing {c.preprocessing}, init {c.init}"
            f"{' + ' + c.weights if c.weights else ''}, seed {c.seed}, {c.threads} threads, {c.devices} device(s), "
            f"evaluation {c.evaluation}{', torch ablation ' + c.torch_ablation if c.torch_ablation else ''}")


def _load_manifest(args: argparse.Namespace):
    from bench.manifest import build_manifest, load_manifest

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
def prepare_init(config: TrainConfig, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write ``init.npz``, the one bundle both sides start from; return the record's ``init``."""
    from bench.manifest import sha256_file
    from bench.runner import run_worker
    from bench.spec import spec_from_args
    from bench.weights import WeightBundle, random_bundle, read_legacy_h5, weight_format

    spec = spec_from_args(config.spec_args())
    path = run_dir / "init.npz"
    wconfig = _worker_config(args, config)
    wconfig.quiet = True
    margs = {**config.spec_args(), "seed": config.seed}
    if config.init == "independent" and not config.weights:
        return {"kind": "independent", "path": None, "sha256": None,
                "note": "each framework starts from its own initialisers: initial losses differ"}
    if config.init == "random":
        base = random_bundle(spec, seed=config.seed)
    elif config.init in ("keras", "torch"):
        fw = "tf" if config.init == "keras" else "torch"
        run_worker(fw, "export", {**margs, "out": str(path)}, config=wconfig, job_dir=run_dir / "init-job")
        base = WeightBundle.load(path)
    else:  # independent + --weights: the head (if skipped) comes from Keras' initialisers
        run_worker("tf", "export", {**margs, "out": str(path)}, config=wconfig, job_dir=run_dir / "init-job")
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
            run_worker(fw, "convert", {**config.spec_args(), "src": config.weights, "dst": str(mid)},
                       config=wconfig, job_dir=run_dir / "weights-job")
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
            "sha256": sha256_file(path), "source": base.meta.get("source")}


# ---- orchestration -------------------------------------------------------------------------------
def _worker_config(args: argparse.Namespace, config: TrainConfig):
    wconfig = worker_config(args)
    wconfig.threads = config.threads
    # Per-step lines are the worker's; --quiet keeps its epoch summaries but drops step lines.
    wconfig.quiet = False
    return wconfig


def train_frameworks(record, config: TrainConfig, run_dir: Path, args: argparse.Namespace,
                     resume: bool = False, trace: dict[str, Any] | None = None) -> int:
    """Train each framework in turn in its worker; merge what it reports into the record."""
    from bench import results
    from bench.runner import run_worker

    wconfig = _worker_config(args, config)
    interrupted = False
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
            "trace": trace, "alignment": torch_alignment(config.torch_ablation) if fw == "torch" else {},
        }
        run["status"] = "running"
        results.save_record(record)
        try:
            out = run_worker(fw, "train", job, job_dir=fw_dir / "job", config=wconfig)
            result = out.result
            record.environment.setdefault("frameworks", {})[fw] = result.pop("info", {})
            run.update(result)
        except WorkerError as exc:
            _merge_state(run, fw_dir)
            run["status"] = "failed"
            run["message"] = one_line(str(exc))  # keep the worker's last lines: they say why
        except UserError as exc:
            _merge_state(run, fw_dir)
            run["status"] = "failed"
            run["message"] = str(exc)
            record.status = "failed"
            results.save_record(record)
            raise
        except KeyboardInterrupt:
            _merge_state(run, fw_dir)
            run["status"] = "failed"
            run["message"] = "interrupted (Ctrl-C); continue with --resume"
            interrupted = True
            break
        finally:
            results.save_record(record)
    statuses = [r["status"] for r in record.frameworks.values()]
    if interrupted:
        record.status = "interrupted"
    elif all(s == "complete" for s in statuses):
        record.status = "complete"
    elif any(s == "failed" for s in statuses):
        record.status = "failed"
    else:
        record.status = "stopped"
    results.save_record(record)
    print(summary_table(record))
    print(f"run record: {record.path}")
    if interrupted:
        raise KeyboardInterrupt
    problems = [f"{LABELS[fw]}: {r['message']}" for fw, r in record.frameworks.items() if r["status"] != "complete"]
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
    rows = [f"{'':<11}{'epochs':>7}{'loss':>9}{'acc':>7}{'val_loss':>10}{'val_acc':>9}{'epoch s':>9}"
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

        rows.append(f"{LABELS[fw]:<11}{len(hist):>7}{num('loss', '9.4g')}{num('accuracy', '7.3f')}"
                    f"{num('val_loss', '10.4g')}{num('val_accuracy', '9.3f')}"
                    f"{(statistics.median(later) if later else float('nan')):9.1f}"
                    f"{num('train_throughput', '12.1f')}{mem_text:>24}  {run['status']}")
    return "\n".join(rows)


# ---- the training loop, shared by both workers ---------------------------------------------------
class Trainer(Protocol):
    """What a framework supplies to :func:`run_training` (tf_impl.train / torch_impl.train)."""

    framework: str
    is_main: bool  # rank 0 (prints, evaluates, writes); every rank runs the loop

    def steps_per_epoch(self) -> int: ...

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's global batches (``epoch`` 0-based, as the data pipelines count)."""

    def set_learning_rate(self, rate: float) -> None:
        """The optimizer's learning rate for the next step (bench.schedule)."""

    def train_step(self, batch: Any) -> tuple[float, int, int]:
        """One optimizer step: (mean loss, correct predictions, images) over the global batch,
        as Python numbers (so the clock read after it is synced)."""

    def evaluate(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Validation split in manifest order: (probabilities [N, classes] float32, per-sample
        cross-entropy [N] float64). None on ranks other than the main one."""

    def save_checkpoint(self, stem: Path) -> list[str]:
        """Weights (as a bundle) and optimizer state, written atomically; the file names."""

    def load_checkpoint(self, stem: Path) -> None: ...

    def estimate_bn(self) -> None:
        """Evaluation "precise-bn": re-estimate every BN layer's statistics (see EVALUATIONS)."""

    def weight_sample(self, indices: dict[str, np.ndarray]) -> np.ndarray:
        """The weights at Keras-layout flat ``indices`` per bundle key, concatenated (bench.chaos)."""

    def memory(self) -> dict[str, Any]: ...

    def barrier(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class Progress:
    """Keras ``fit``-style lines on stderr: a step line every ``interval`` seconds (with loss,
    accuracy and ETA), one summary line per epoch. Lines, not carriage returns: they pass intact
    through pipes and CI logs."""

    BAR = 30

    def __init__(self, framework: str, *, quiet: bool, interval: float, enabled: bool = True):
        self.prefix = f"[{framework}]"
        self.quiet, self.interval, self.enabled = quiet, interval, enabled
        self.last = -math.inf

    def _print(self, text: str) -> None:
        if self.enabled:
            print(f"{self.prefix} {text}", file=sys.stderr, flush=True)

    def epoch_start(self, epoch: int, epochs: int) -> None:
        if not self.quiet:
            self._print(f"Epoch {epoch}/{epochs}")

    def step(self, step: int, steps: int, times: list[float], loss: float, accuracy: float) -> None:
        now = time.monotonic()
        if self.quiet or (step < steps and now - self.last < self.interval and step != 1):
            return
        self.last = now
        # ETA from the median step so far, leaving out the first (graph tracing / warm-up):
        # unknown until a second step is done.
        eta = _duration((steps - step) * statistics.median(times[1:])) if len(times) > 1 else "-"
        done = int(self.BAR * step / steps)
        bar = "=" * max(done - 1, 0) + (">" if step < steps else "=") + "." * (self.BAR - done)
        width = len(str(steps))
        self._print(f"{step:>{width}}/{steps} [{bar}] - ETA: {eta} - loss: {loss:.4f} - accuracy: {accuracy:.4f}")

    def epoch_end(self, entry: dict[str, Any], epochs: int) -> None:
        self._print(f"epoch {entry['epoch']}/{epochs} - {entry['time_s']:.1f}s "
                    f"{entry['step_time_median_s'] * 1000:.0f}ms/step - loss: {entry['loss']:.4f} "
                    f"- accuracy: {entry['accuracy']:.4f} - val_loss: {entry['val_loss']:.4f} "
                    f"- val_accuracy: {entry['val_accuracy']:.4f} - {entry['train_throughput']:.1f} img/s "
                    f"- data wait {entry['data_wait_s']:.2f}s")

    def note(self, text: str) -> None:
        self._print(text)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


def read_state(fw_dir: Path) -> dict[str, Any] | None:
    path = fw_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: damaged training state; remove {fw_dir} to train this framework again") from None


def write_state(fw_dir: Path, state: dict[str, Any]) -> None:
    from bench.results import _finite

    atomic.write_json(fw_dir / STATE_NAME, _finite(state))


def _prune_checkpoints(fw_dir: Path, keep_epochs: Iterable[int]) -> None:
    keep = {f"ckpt-epoch-{e:03d}" for e in keep_epochs}
    for path in fw_dir.glob("ckpt-epoch-*"):
        if path.name.split(".", 1)[0] not in keep:
            path.unlink(missing_ok=True)


def peak_rss() -> dict[str, Any]:
    """This process's peak resident set size (and its largest finished child's, e.g. loader workers).

    VmHWM where /proc has it: it belongs to this process's own address space since its exec.
    getrusage's ru_maxrss (the fallback) is not: Linux carries the parent's peak across fork
    and exec, so a worker started by a large parent would report the parent's memory.
    """
    from bench.benchmark import read_peak_rss

    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_bytes": int(read_peak_rss()["peak_bytes"]), "children_peak_bytes": int(child_kb) * 1024}


def evaluation_report(probs: np.ndarray, labels: np.ndarray, class_names: list[str], paths: list[str],
                      classes: int) -> dict[str, Any]:
    """Per-class accuracy, confusion matrix (rows true, columns predicted) and predictions."""
    predicted = probs.argmax(axis=1)
    n = max(classes, len(class_names))
    confusion = np.zeros((len(class_names), n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = float(confusion[i, i] / total) if total else None
    return {
        "per_class_accuracy": per_class,
        # Columns beyond the manifest's classes (the seed's 1000-way head) are "predicted another class".
        "confusion_matrix": [row[:len(class_names)].tolist() + [int(row[len(class_names):].sum())]
                             if n > len(class_names) else row.tolist() for row in confusion],
        "predictions": {"paths": paths, "labels": labels.tolist(), "predicted": predicted.tolist(),
                        "confidence": [round(float(p), 6) for p in probs[np.arange(len(predicted)), predicted]]},
    }


class _WeightTracer:
    """The chaos control's per-step weight samples (``job["trace"] = {"steps": K}``): the starting
    weights and the weights after each of the first K steps, written to ``trace.npz`` after every
    epoch. A resumed run is not traced (its steps before the resume are gone)."""

    def __init__(self, trainer: Trainer, config: TrainConfig, trace: dict[str, Any] | None, fw_dir: Path,
                 fresh: bool):
        from bench import chaos
        from bench.spec import spec_from_args

        self.trainer, self.fw_dir, self.samples = trainer, fw_dir, []
        self.limit = int(trace["steps"]) if trace and fresh and trainer.is_main else 0
        if self.limit:
            self.indices = chaos.sample_indices(spec_from_args(config.spec_args()))
            self.samples.append(trainer.weight_sample(self.indices))

    def step(self) -> None:
        if 0 < len(self.samples) <= self.limit:
            self.samples.append(self.trainer.weight_sample(self.indices))

    def save(self) -> None:
        if self.limit:
            from bench import chaos

            chaos.write_trace(self.fw_dir, self.samples)


@dataclass
class _EpochSums:
    loss: float = 0.0
    correct: int = 0
    images: int = 0
    data_wait: float = 0.0
    step_times: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)


def run_training(trainer: Trainer, job: dict[str, Any], *, started: float | None = None) -> dict[str, Any]:
    """The training loop both workers run: epochs, synced step timing, progress, validation,
    checkpoints, NaN/Inf stop and resume. Returns the FrameworkRun for the record.

    ``started``: ``time.monotonic()`` when the worker began building the trainer (setup time)."""
    from bench.manifest import load_manifest

    started = time.monotonic() if started is None else started
    config = TrainConfig(**job["config"])
    fw_dir = Path(job["fw_dir"])
    manifest = load_manifest(job["manifest"], data_root=job.get("data_root"), verify="none")
    val_paths = [e.path for e in manifest.entries("validation")]
    val_labels = manifest.labels("validation")
    progress = Progress(trainer.framework, quiet=job.get("quiet", False),
                        interval=float(job.get("progress_interval", 5.0)), enabled=trainer.is_main)

    state = read_state(fw_dir) if job.get("resume") else None
    history: list[dict[str, Any]] = list(state.get("history", [])) if state else []
    checkpoint = state.get("checkpoint") if state else None
    if checkpoint:
        trainer.load_checkpoint(fw_dir / checkpoint["stem"])
        progress.note(f"resumed from {checkpoint['stem']} (epoch {len(history)} of {config.epochs})")
    elif history:
        raise UserError(f"{fw_dir / STATE_NAME}: history without a checkpoint; remove {fw_dir} to restart it")
    setup_s = time.monotonic() - started
    from bench.benchmark import read_peak_rss

    rss_before = read_peak_rss().get("current_bytes")
    steps = trainer.steps_per_epoch()
    tracer = _WeightTracer(trainer, config, job.get("trace"), fw_dir, fresh=not history)
    first_step_s: float | None = None
    status, message = "complete", None
    last_eval: tuple[np.ndarray, np.ndarray] | None = None
    resumed_at = len(history) + 1 if history else None

    for epoch in range(len(history) + 1, config.epochs + 1):
        progress.epoch_start(epoch, config.epochs)
        sums = _EpochSums()
        # A full collection now, then freeze the survivors: the model, graphs and traces are
        # millions of long-lived objects, and a generation-2 pass over them inside the timed loop
        # stalled an epoch by 1-11 s (measured, TF side). Garbage made later is still collected.
        gc.collect()
        gc.freeze()
        epoch_start = time.perf_counter()
        batches: Iterator[Any] = iter(trainer.train_batches(epoch - 1))
        sums.data_wait += time.perf_counter() - epoch_start  # building the epoch's pipeline is waiting too
        bad_step = None
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                sums.data_wait += time.perf_counter() - t0
                break
            if config.lr_schedule != "constant":
                trainer.set_learning_rate(learning_rate_at(config.lr_schedule, config.learning_rate,
                                                           (epoch - 1) * steps + len(sums.step_times),
                                                           config.epochs * steps))
            t1 = time.perf_counter()
            loss, correct, n = trainer.train_step(batch)
            t2 = time.perf_counter()
            sums.data_wait += t1 - t0
            sums.step_times.append(t2 - t1)
            sums.step_loss.append(float(loss))
            tracer.step()
            if first_step_s is None:
                first_step_s = t2 - t1
            if not math.isfinite(loss):
                bad_step = len(sums.step_times)
                break
            sums.loss += float(loss) * n
            sums.correct += int(correct)
            sums.images += int(n)
            progress.step(len(sums.step_times), steps, sums.step_times, sums.loss / sums.images,
                          sums.correct / sums.images)
        train_end = time.perf_counter()
        if bad_step is not None:
            status = "stopped"
            message = (f"loss became {sums.step_loss[-1]} at epoch {epoch}, step {bad_step}/{steps}; training "
                       f"stopped. Last good checkpoint: "
                       f"{'epoch ' + str(len(history)) + ' (' + checkpoint['stem'] + ')' if checkpoint else 'none'}")
            progress.note(message)
            break
        evaluated = trainer.evaluate()
        val_end = time.perf_counter()
        entry: dict[str, Any] = {"epoch": epoch}
        if trainer.is_main:
            assert evaluated is not None
            probs, losses = evaluated
            val_loss = float(np.mean(losses, dtype=np.float64))
            val_accuracy = float(np.mean(probs.argmax(axis=1) == val_labels))
            median = statistics.median(sums.step_times)
            train_time = float(sum(sums.step_times))
            entry.update({
                "loss": sums.loss / sums.images, "accuracy": sums.correct / sums.images,
                "val_loss": val_loss, "val_accuracy": val_accuracy,
                "time_s": val_end - epoch_start, "train_wall_s": train_end - epoch_start,
                "train_time_s": train_time, "data_wait_s": sums.data_wait,
                "val_time_s": val_end - train_end, "train_images": sums.images, "val_images": len(val_labels),
                "train_throughput": sums.images / train_time if train_time > 0 else None,
                "val_throughput": len(val_labels) / (val_end - train_end) if val_end > train_end else None,
                "steps": len(sums.step_times), "step_time_median_s": median,
                "overhead": (train_end - epoch_start) / (len(sums.step_times) * median) - 1.0,
                # The issue's measure above also moves with the spread of step times (mean vs
                # median); this one is only what the loop adds around the timed steps.
                "loop_overhead": (train_end - epoch_start) / train_time - 1.0 if train_time > 0 else None,
                "step_times_s": [round(t, 6) for t in sums.step_times],
                "step_loss": sums.step_loss, "resumed": epoch == resumed_at,
            })
            if not math.isfinite(val_loss):
                status = "stopped"
                message = (f"validation loss became {val_loss} after epoch {epoch}; training stopped. Last good "
                           f"checkpoint: {'epoch ' + str(len(history)) if checkpoint else 'none'}")
                progress.note(message)
                break
            last_eval = evaluated
        stem = f"ckpt-epoch-{epoch:03d}"
        files = trainer.save_checkpoint(fw_dir / stem)
        trainer.barrier()
        history.append(entry)
        tracer.save()
        if trainer.is_main:
            checkpoint = {"epoch": epoch, "stem": stem, "files": files}
            write_state(fw_dir, {"framework": trainer.framework, "status": "running", "history": history,
                                 "checkpoint": checkpoint, "checkpoint_path": f"{fw_dir.name}/{stem}.npz"})
            _prune_checkpoints(fw_dir, range(epoch - config.keep_checkpoints + 1, epoch + 1))
            progress.epoch_end(entry, config.epochs)

    gc.unfreeze()
    memory = trainer.memory()  # every rank: DDP gathers the ranks' peaks
    if not trainer.is_main:
        return {}
    if last_eval is None and checkpoint:
        # Nothing trained in this invocation (already done, or stopped in the next epoch): the
        # final figures are those of the last good checkpoint.
        trainer.load_checkpoint(fw_dir / checkpoint["stem"])
        last_eval = trainer.evaluate()
    result: dict[str, Any] = {
        "status": status, "message": message, "epochs_completed": len(history), "history": history,
        "checkpoint": f"{fw_dir.name}/{checkpoint['stem']}.npz" if checkpoint else None,
        "devices": config.devices,
        "timing": {"setup_s": setup_s, "first_step_s": first_step_s, "total_s": time.monotonic() - started},
    }
    if rss_before is not None:
        memory.setdefault("rss_before_training_bytes", rss_before)
    result["memory"] = memory
    if history:
        last = history[-1]
        best = max(history, key=lambda e: e["val_accuracy"])
        later = [e["time_s"] for e in history[1:]] or [e["time_s"] for e in history]
        result["final"] = {"loss": last["loss"], "accuracy": last["accuracy"], "val_loss": last["val_loss"],
                           "val_accuracy": last["val_accuracy"], "best_val_accuracy": best["val_accuracy"],
                           "best_epoch": best["epoch"], "mean_epoch_time_s": float(np.mean(later))}
    else:
        result["final"] = {}
    if last_eval is not None:
        probs, losses = last_eval
        result.update(evaluation_report(probs, val_labels, manifest.class_names, val_paths, config.classes))
        atomic.write_npz(fw_dir / "predictions.npz", {"probabilities": probs.astype(np.float32),
                                                      "loss": losses.astype(np.float64), "labels": val_labels})
    write_state(fw_dir, {"framework": trainer.framework, "status": status, "message": message,
                         "history": history, "checkpoint": checkpoint,
                         "checkpoint_path": result["checkpoint"]})
    result["info"] = trainer.info()
    return result


def write_pid(fw_dir: Path, name: str = "worker.pid") -> None:
    """The worker's pid, for tools (and tests) that must signal it."""
    atomic.write_text(fw_dir / name, f"{os.getpid()}\n")
