"""What a parity run is, shared by its parent and its workers (framework-free): the checks and
columns, the fixed tolerances, the ablations, :class:`ParityConfig`, the array keys the workers
return and the parent reads, the trajectory's weight sample, a probe's :class:`Phases` and its trajectory runs (:func:`trajectories`).

``bench.parity`` (the command) runs the workers; ``tf_impl.probes`` and ``torch_impl.probes``
compute the arrays; ``bench.parity_table`` compares them. Tolerances, measurements and the judge's
reasoning: docs/parity.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.errors import UserError
from bench.spec import ModelSpec, build_spec

# Check groups (what --checks takes) -> the table columns they fill.
CHECK_GROUPS: dict[str, tuple[str, ...]] = {
    "forward": ("isolated", "forward"),
    "train": ("train-iso", "train", "bn"),
    "grad": ("grad-iso", "grad"),
    "step": ("adam", "sgd"),
    "trajectory": ("traj",),
}
# Pipeline order; within a pair the isolated check first: it pins the block exactly.
COLUMNS = ("input", "isolated", "forward", "train-iso", "train", "bn", "grad-iso", "grad", "adam", "sgd", "traj")
DEFAULT_CHECKS = ("forward", "train", "grad", "step")
DEFAULT_STEPS = 20

# FIXED tolerances on max|a-b| / max|ref|: the float64 checks, the input row, and float32 with
# --fixed-tolerances (a float32 run is otherwise judged by tolerances calibrated in the run,
# bench.parity_metrics). Set from the largest aligned cell measured at 224 px; the measurements
# behind each number: docs/parity.md, "The fixed tables".
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"input": 1e-4, "forward": 1e-3, "isolated": 1e-5, "train": 1e-3, "train-iso": 1e-5,
                "bn": 1e-6, "grad": 0.5, "grad-iso": 0.5, "adam": 1e-6, "sgd": 1e-6, "traj": 1.0},
    "float64": {"input": 1e-4, "forward": 1e-10, "isolated": 1e-12, "train": 1e-10, "train-iso": 1e-11,
                "bn": 1e-13, "grad": 1e-9, "grad-iso": 1e-10, "adam": 1e-14, "sgd": 1e-14, "traj": 0.1},
}
# The trajectory's "still together" level: agree_steps counts the leading steps whose loss and
# weights stay within it (float64 agrees to ~1e-10 until a last-bit event; docs/parity.md).
TRAJECTORY_ONSET = {"float32": 1e-2, "float64": 1e-8}

# Adam and SGD with Keras' defaults; SGD uses Adam's learning rate.
ADAM_CONFIG = {"name": "adam", "learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
SGD_CONFIG = {"name": "sgd", "learning_rate": 1e-3, "momentum": 0.0}


# (reference, candidate) pairs ``twinbench parity --arms`` compares: the port against the Keras
# original; the seed's Keras model on Keras' torch backend against the original (same Keras code,
# another backend) and as the reference the port is compared with (same backend, another model).
PARITY_ARMS = (("tf", "torch"), ("tf", "keras-torch"), ("keras-torch", "torch"))


# ---- ablations -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ablation:
    """One alignment switched off on the torch side, and what parity should then show."""

    description: str
    align: dict[str, Any] = field(default_factory=dict)  # torch_impl.model.Alignment fields
    optimizer: dict[str, Any] | None = None  # the torch side's Adam config instead of KerasAdam
    pipeline: str | None = None  # "tf" or "torch": whose data options change (input row)
    options: dict[str, Any] = field(default_factory=dict)  # data options for that pipeline
    # (check, block) of the first failure, measured at 224 px, batch 2, seed 0 (the block can
    # move with the input size: bn-variance's n/(n-1) grows as the feature maps shrink).
    expect: tuple[str, str] = ("isolated", "stem")


ABLATIONS: dict[str, Ablation] = {
    "bn-eps": Ablation("BN epsilon 1e-5 (torch default) instead of Keras' 1e-3",
                       align={"bn_eps": 1e-5}, expect=("isolated", "2a")),
    "bn-momentum": Ablation("BN momentum 0.1 read as Keras' 0.1 (Keras 0.99 is torch 0.01)",
                            align={"bn_momentum": 0.1}, expect=("bn", "stem")),
    # float32 at 224 px: the stem, 3.5x its calibrated limit (4.5e-7 vs own 6.5e-8, demo images);
    # the fixed 1e-6 saw it only at 2a.
    "bn-variance": Ablation("moving variance updated with the unbiased batch variance (torch) "
                            "instead of Keras' biased one", align={"bn_biased_variance": False},
                            expect=("bn", "stem")),
    "adam-eps": Ablation("torch.optim.Adam with eps 1e-8 instead of Keras' epsilon-hat 1e-7",
                         optimizer={"name": "torch-adam", "epsilon": 1e-8}, expect=("adam", "stem")),
    "maxpool-pad": Ablation("stem max pool padded by 1 (torchvision) instead of 'valid'",
                            align={"maxpool_padding": 1}, expect=("isolated", "stem")),
    "stride-3x3": Ablation("stride on the 3x3 conv (torchvision's v1.5) instead of the first 1x1 (v1)",
                           align={"stride_on_3x3": True}, expect=("isolated", "3a")),
    # Backward only: forward, train-mode outputs and moving statistics as aligned; gradients not.
    "bn-var-detached": Ablation("BN batch variance detached from the graph in training mode (forward "
                                "identical, gradients not)", align={"bn_var_grad": False},
                                expect=("grad-iso", "stem")),
    "bn-stats-detached": Ablation("BN batch mean and variance detached from the graph in training mode",
                                  align={"bn_mean_grad": False, "bn_var_grad": False},
                                  expect=("grad-iso", "stem")),
    "bn-frozen-affine": Ablation("BN gamma and beta get no gradient (as torchvision's FrozenBatchNorm2d); "
                                 "forward identical", align={"bn_affine_grad": False},
                                 expect=("grad-iso", "stem")),
    "decoder": Ablation("TF decodes JPEG with its default fast IDCT (tf.io.decode_image, as the "
                        "seed) instead of INTEGER_ACCURATE", pipeline="tf",
                        options={"decoder": "seed"}, expect=("input", "input")),
    "resize-antialias": Ablation("torch resizes with antialias=True (torchvision's Resize default)",
                                 pipeline="torch", options={"antialias": True}, expect=("input", "input")),
}


# ---- the configuration -----------------------------------------------------------------------------
@dataclass
class ParityConfig:
    """What one parity run compares. Defaults: the seed's model at 224 px, a small batch."""

    model: str = "resnet50"
    classes: int = 1000
    input_size: int = 224
    pooling: str = "avg7"
    dtype: str = "float32"  # float32 | float64
    batch: int = 2  # images in the parity batch
    seed: int = 0  # random weights, inputs, labels, calibration
    checks: tuple[str, ...] = DEFAULT_CHECKS  # groups of CHECK_GROUPS
    ablations: tuple[str, ...] = ()  # names of ABLATIONS, applied together
    steps: int = DEFAULT_STEPS  # trajectory length
    weights: str | None = None  # a weight file; None: random_bundle(seed)
    manifest: str | None = None  # real images from this manifest
    calibrate: bool | None = None  # None: calibrate random weights only
    work_dir: str | None = None  # keep jobs and arrays here (default: a temporary directory)
    fixed_tolerances: bool = False  # float32 judged by TOLERANCES instead of calibrated in the run
    arms: tuple[str, str] = ("tf", "torch")  # (reference, candidate): PARITY_ARMS

    def calibrated(self) -> bool:
        """Tolerances calibrated in the run (float32; float64 keeps the fixed table)."""
        return self.dtype == "float32" and not self.fixed_tolerances

    def model_args(self) -> dict[str, Any]:
        return {"model": self.model, "classes": self.classes, "input_size": self.input_size, "pooling": self.pooling}

    def validate(self) -> ModelSpec:
        spec = build_spec(self.model, self.classes, self.input_size, self.pooling)
        if self.dtype not in TOLERANCES:
            raise UserError(f"--dtype {self.dtype!r}: choose one of {', '.join(TOLERANCES)}")
        bad = [c for c in self.checks if c not in CHECK_GROUPS]
        if bad or not self.checks:
            raise UserError(f"--checks {','.join(self.checks) or '(empty)'}: choose from "
                            f"{', '.join(CHECK_GROUPS)} or 'all'")
        if tuple(self.arms) not in PARITY_ARMS:
            raise UserError(f"--arms {','.join(self.arms)}: choose one of "
                            f"{'; '.join(','.join(p) for p in PARITY_ARMS)} (reference first)")
        if self.ablations and self.arms[1] != "torch":
            raise UserError(f"--ablate switches alignments off in the torch port: with --arms {','.join(self.arms)} "
                            "the candidate is not the port; drop --ablate")
        bad = [a for a in self.ablations if a not in ABLATIONS]
        if bad:
            raise UserError(f"--ablate {bad[0]!r}: choose one of {', '.join(ABLATIONS)}")
        needs = [a for a in self.ablations if ABLATIONS[a].pipeline]
        if needs and not self.manifest:
            raise UserError(f"--ablate {needs[0]} compares the data pipelines: it needs --manifest M")
        # Calibration runs batch norm in training mode too (random weights, unless --no-calibrate):
        # at batch 1 torch refuses a 1x1 last stage deep inside the worker.
        calibrates = self.calibrate if self.calibrate is not None else self.weights is None
        if self.batch < 2 and ("train" in self.checks or calibrates):
            raise UserError("--batch 1: training-mode checks need at least 2 images (batch statistics)")
        if self.weights and not Path(self.weights).exists():
            raise UserError(f"{self.weights}: no such weight file")
        if self.manifest and not Path(self.manifest).exists():
            raise UserError(f"{self.manifest}: no such manifest")
        return spec

    def columns(self) -> list[str]:
        wanted = {c for g in self.checks for c in CHECK_GROUPS[g]}
        if self.manifest and "tf" in self.arms:  # the input row compares TF's pipeline with torch's
            wanted.add("input")
        return [c for c in COLUMNS if c in wanted]


# ---- array keys ------------------------------------------------------------------------------------
# A worker returns its arrays (Keras layout) keyed ``kind/name``: ``name`` is a probe point
# (``spec.probe_points``), a bundle key ``layer/weight``, or one of the names below.
FWD = "fwd"          # inference, chained, per point
ISO = "iso"          # inference, isolated: each stage fed the reference's input of that stage
TRAIN = "train"      # training mode (batch statistics), chained, per point; train/loss
TRISO = "triso"      # training mode, isolated
DTRAIN = "dtrain"    # TF: dL/d(the point's output), training mode: the isolated backward's upstream
BN = "bn"            # the moving statistics after one isolated training-mode update, per bundle key
GRAD = "grad"        # gradients of the loss, chained, per trainable bundle key
GRADISO = "gradiso"  # gradients of the isolated backward, per trainable bundle key
DXISO = "dxiso"      # the isolated backward's input gradient, per point
ADAM, SGD = "adam", "sgd"  # the weights after one optimizer step; moments under adam_m/, adam_v/
TRAJ = "traj"        # traj/loss (K,) and traj/sample (K, S): the K-step trajectory
TRAJ_K = "trajK"     # parent only: each sampled tensor after step K (views of traj/sample)
REF = "ref"          # the reference's arrays as fed to the torch side: ref/<kind>/<name>
CHAOS = "chaos"      # the trajectory from the one-ulp bundle: chaos/traj/...
LOSS, SAMPLE = "loss", "sample"
BN_STATS = ("moving_mean", "moving_variance")
# Job arrays into a probe: the parity batch and the trajectory's batches.
X, Y, TRAJ_X, TRAJ_Y = "x", "y", "traj_x", "traj_y"


def key(*parts: str) -> str:
    """``kind/name``; with an empty last part, the prefix (``key(REF, FWD, "")`` is ``ref/fwd/``)."""
    return "/".join(parts)


def keyed(kind: str, arrays: dict[str, Any]) -> dict[str, Any]:
    """``{name: array}`` -> ``{kind/name: array}``."""
    return {key(kind, name): a for name, a in arrays.items()}


def unkeyed(prefix: str, arrays: dict[str, Any]) -> dict[str, Any]:
    """The arrays under ``prefix`` (``key(REF, FWD, "")``), keyed by the rest of their key."""
    return {k[len(prefix):]: a for k, a in arrays.items() if k.startswith(prefix)}


def moment_key(step: str, moment: str, name: str) -> str:
    """An optimizer moment after the step: ``adam_m/<key>``, ``adam_v/<key>``."""
    return key(f"{step}_{moment}", name)


TRAIN_LOSS = key(TRAIN, LOSS)
TRAJ_LOSS, TRAJ_SAMPLE = key(TRAJ, LOSS), key(TRAJ, SAMPLE)
INPUT_X = key("input", X)  # parent only: the two pipelines' batches (the input row)
# The reference array an isolated array compares with: the chained one of the same name.
_CHAINED = {ISO: FWD, TRISO: TRAIN, GRADISO: GRAD}


def is_stat(bundle_key: str) -> bool:
    """A BN moving statistic (not trained by the optimizer)."""
    return bundle_key.endswith(tuple("/" + s for s in BN_STATS))


def previous_point(spec: ModelSpec, point: str) -> str | None:
    """The probe point whose output feeds ``point`` in the isolated backward (None for stem)."""
    if point == "logits":
        return "pool"
    points = ["stem"] + [b.id for b in spec.blocks]
    return points[points.index(point) - 1] if point in points[1:] else None


def reference_key(spec: ModelSpec, other_key: str) -> str | None:
    """The reference's (TF's chained) array that an array of the other side is compared with:
    isolated outputs and gradients with the chained ones, an isolated input gradient with the
    upstream gradient of the point before it (None for the stem), the rest with the same key."""
    kind, name = other_key.split("/", 1)
    if kind == DXISO:
        before = previous_point(spec, name)
        return key(DTRAIN, before) if before else None
    return key(_CHAINED.get(kind, kind), name)


# ---- the trajectory's weight sample ----------------------------------------------------------------
TRAJECTORY_SAMPLE = 2048  # weights sampled per tensor per trajectory step (all of smaller ones)


def trajectory_sample(spec: ModelSpec, per_tensor: int = TRAJECTORY_SAMPLE) -> dict[str, np.ndarray]:
    """Bundle key -> flat indices (Keras layout) sampled at every trajectory step: all elements of
    small tensors, ``per_tensor`` evenly spaced ones of larger kernels. Both workers use it."""
    out = {}
    for name, shape in spec.weight_shapes().items():
        size = math.prod(shape)
        out[name] = np.arange(size) if size <= per_tensor else np.linspace(0, size - 1, per_tensor).astype(np.int64)
    return out


def sample_offsets(spec: ModelSpec) -> dict[str, slice]:
    """Bundle key -> its slice in the concatenated trajectory sample."""
    offsets, start = {}, 0
    for name, idx in trajectory_sample(spec).items():
        offsets[name] = slice(start, start + len(idx))
        start += len(idx)
    return offsets


# ---- a worker's phases -----------------------------------------------------------------------------
class Phases:
    """A probe's phases: ``phases(name)`` starts one (and says so unless ``quiet``);
    :meth:`seconds` ends the last and gives each one's duration."""

    def __init__(self, framework: str, quiet: bool):
        self.framework, self.quiet = framework, quiet
        self.starts: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.starts[name] = time.perf_counter()
        if not self.quiet:
            print(f"[{self.framework}] parity: {name}", flush=True)

    def seconds(self) -> dict[str, float]:
        self.starts["end"] = time.perf_counter()
        names = list(self.starts)
        return {names[i]: round(self.starts[names[i + 1]] - self.starts[names[i]], 3) for i in range(len(names) - 1)}


# ---- a worker's trajectory runs --------------------------------------------------------------------
def trajectories(twin: Any, inputs: dict[str, np.ndarray], args: dict[str, Any], phase: Phases,
                 trajectory: Callable[..., dict[str, np.ndarray]],
                 load_file: Callable[[str, ModelSpec], Any]) -> dict[str, np.ndarray]:
    """The trajectory check of a probe: ``trajectory(twin, inputs, args, quiet=...)`` from the twin's
    bundle and, with ``args['chaos_weights']``, again from that (one-ulp perturbed) bundle, read by
    ``load_file`` and keyed under CHAOS. The twin gets its own bundle back."""
    phase("trajectory")
    arrays = trajectory(twin, inputs, args, quiet=phase.quiet)
    if args.get("chaos_weights"):
        phase("trajectory-chaos")
        bundle = twin.bundle
        twin.bundle = load_file(args["chaos_weights"], twin.spec)
        arrays.update(keyed(CHAOS, trajectory(twin, inputs, args, quiet=phase.quiet)))
        twin.bundle = bundle
    return arrays
