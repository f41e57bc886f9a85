"""``twinbench train``: both frameworks trained on one split, under the same conditions.

    twinbench train --framework both --profile quick               # the demo data, ~5 min on 2 cores
    twinbench train --framework both --manifest M --profile seed   # the seed: 224 px, batch 8, 50 epochs
    twinbench train --manifest M --profile quick --epochs 8 --order manifest --init keras
    twinbench train --resume runs/train-20250101-120000-ab12       # continue a killed run

The command: its parser and :func:`train`, which ``twinbench run`` calls too. One resolved
:class:`~bench.training.TrainConfig` for both sides, one starting weight bundle, each side in its own
worker, one after the other (``bench.trainrun``). Fairness, the run directory and resume: docs/profiles.md.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from bench import executor, repeats, trainrun
from bench.errors import UserError
from bench.frameworks import ARMS, FRAMEWORKS, KERAS_TORCH
from bench.results import RECORD_NAME
from bench.options import add_executor_options, add_model_options, add_worker_options, csv_choices, positive_int
from bench.schedule import SCHEDULES
from bench.profiles import PROFILES, QuickProfile, SteadyProfile
from bench.training import EVALUATIONS, INITS, OPTIMIZERS, PRECISIONS, validate_config


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
    from bench.dataset import DECODERS, PREPROCESSINGS
    from bench.orders import ORDERS

    p = sub.add_parser(
        "train", help="train both frameworks on one split, fairly, and record everything",
        conflict_handler="resolve",  # --classes is re-declared below to accept "auto"
        description="Trains the TensorFlow and the PyTorch model on the same manifest with the same settings "
                    "(one after the other, each in its own worker) and writes a run record (run.json) with "
                    "per-epoch history, timing, peak memory, final metrics, confusion matrices and predictions. "
                    "Profiles: seed (224 px, batch 8, 50 epochs, the 1000-way head, raw pixels: the seed "
                    f"exactly) and quick ({QuickProfile.input_size} px, batch {QuickProfile.batch_size}, global pooling, the "
                    f"manifest's classes, {QuickProfile.epochs} epochs, caffe inputs, manifest order, the "
                    "second half's weights averaged for validation, with precise BN statistics) and steady (quick at "
                    f"{SteadyProfile.input_size} px for {SteadyProfile.epochs} epochs, the last third averaged: a spread "
                    "within about 3 points; docs/profiles.md). Every "
                    "setting below overrides the profile; the resolved config is saved with the results.")
    p.add_argument("--framework", choices=("tf", "torch", "both"), default=None,
                   help="which side(s) to train (default both); shorthand for --frameworks")
    p.add_argument("--frameworks", type=csv_choices(ARMS), default=None, metavar="LIST",
                   help=f"the arms to train, in order, e.g. tf,torch,{KERAS_TORCH} ({KERAS_TORCH}: the seed's Keras "
                        "model unchanged on Keras 3's torch backend); default tf,torch")
    p.add_argument("--manifest", metavar="MANIFEST",
                   help="the data split (twinbench manifest DATA_DIR -o MANIFEST); default: the demo data")
    p.add_argument("--data-root", metavar="DIR", help="where the images are now, if they moved (--executor ray: a path all nodes mount)")
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
                       help="native: each framework's shuffling; manifest: identical batches on both sides; "
                            "fixed-batches: identical batches that keep their images every epoch (as TF's native)")
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
                            "re-estimate them from --bn-estimate-images training images before each validation; "
                            "swa: validate the mean of the weights from --average-from on, statistics as precise-bn")
    group.add_argument("--bn-estimate-images", type=positive_int, default=None,
                       help="training images for --evaluation precise-bn and swa")
    group.add_argument("--average-from", type=positive_int, default=None, metavar="EPOCH",
                       help="--evaluation swa: the first epoch whose weights are averaged (default: the second half)")
    group.add_argument("--average-every", type=positive_int, default=None, metavar="STEPS",
                       help="--evaluation swa: steps between the snapshots averaged (and each epoch's last step)")
    group.add_argument("--torch-ablation", default=None, metavar="NAME",
                       help="plant a parity ablation in the torch model (a port bug on purpose, e.g. bn-momentum)")
    _add_statistics_options(p)
    add_worker_options(p)
    add_executor_options(p)
    p.set_defaults(func=cmd_train, model=None, pooling=None)


def _add_statistics_options(p) -> None:
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


def cmd_train(args: argparse.Namespace) -> int:
    train(args)
    return 0  # a failed framework or repeat raised CheckFailed (exit 1)


def train(args: argparse.Namespace, run_dir: Path | None = None) -> Path:
    """``twinbench train`` as a function: trains (or resumes) and returns the record it wrote,
    ``RUN/run.json`` or a set's ``repeats.json``. ``run_dir``: a new, empty directory to train in
    (default: a new one under ``--out``). Raises CheckFailed when a framework or a repeat failed,
    after its record is saved."""
    with executor.for_command(args):  # a Ray cluster it started stops with it
        return _train(args, run_dir)


def _train(args: argparse.Namespace, run_dir: Path | None) -> Path:
    if args.resume:
        return resume_run(args)
    config, sources = trainrun.resolve_config(args)
    frameworks = chosen_frameworks(args)
    if config.threads is None:
        # Explicit, so both sides get (and record) the same number; --parallel N shares the cores.
        slots = getattr(executor.from_args(args), "slots", 1)
        config.threads = max(1, (os.cpu_count() or 1) // slots)
        sources["threads"] = "all cores" if slots == 1 else f"all cores / --parallel {slots}"
    validate_config(config)  # bad values fail here, before the manifest is even read
    manifest = trainrun.load_train_manifest(args)
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
    plan = repeats.plan_from_args(args, config)
    run_dir = run_dir or trainrun.create_run_dir(Path(args.out))
    if plan.single:
        with trainrun.RunLock(run_dir):
            trainrun.start_run(config, sources, frameworks, manifest, run_dir, args)
        return run_dir / RECORD_NAME
    repeats.start_set(plan, config, sources, frameworks, manifest, args, run_dir)
    return run_dir / repeats.SET_NAME


def chosen_frameworks(args: argparse.Namespace) -> list[str]:
    """``--frameworks`` (any arms), else ``--framework`` (tf, torch or both)."""
    frameworks = getattr(args, "frameworks", None)
    if frameworks and args.framework not in (None, "both"):
        raise UserError(f"--framework {args.framework} and --frameworks {','.join(frameworks)}: give one of them")
    if frameworks:
        if len(set(frameworks)) != len(frameworks):
            raise UserError(f"--frameworks {','.join(frameworks)}: each arm once")
        return list(frameworks)
    return list(FRAMEWORKS) if args.framework in (None, "both") else [args.framework]


def resume_run(args: argparse.Namespace) -> Path:
    run_dir = Path(args.resume)
    if repeats.is_set(run_dir):
        repeats.resume_set(run_dir, args)
        return run_dir / repeats.SET_NAME
    trainrun.resume_one(run_dir, args)
    return run_dir / RECORD_NAME
