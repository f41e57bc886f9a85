"""The profiles, once: what ``quick`` and ``seed`` mean for every step (a library, numpy-free).

:class:`TrainConfig` is every training setting, its defaults the seed; :class:`QuickProfile` changes
what the quick profile changes. ``twinbench train --profile``, ``twinbench bench --profile`` (``--quick``), ``twinbench run --profile``
and the parity, datacheck and residual steps of a run all read their settings from here. How they
were chosen, with the measurements: docs/profiles.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


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
    average_from: int | None = None  # evaluation "swa": the first epoch averaged (None: the second half)
    average_every: int = 5  # evaluation "swa": steps between the weight snapshots averaged
    torch_ablation: str | None = None  # a parity ablation planted in the torch model (experiments only)

    def spec_args(self) -> dict[str, Any]:
        return {"model": self.model, "classes": self.classes, "input_size": self.input_size,
                "pooling": self.pooling}

    def optimizer_config(self) -> dict[str, Any]:
        """The dict tf_impl.optim.build and torch_impl.optim.build share."""
        return {"name": self.optimizer, "learning_rate": self.learning_rate, "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}

    def pipeline_options(self) -> dict[str, Any]:
        """bench.dataset.PipelineOptions fields (as a dict: it crosses to the workers as JSON)."""
        return {"image_size": self.input_size, "batch_size": self.batch_size, "decoder": self.decoder,
                "preprocessing": self.preprocessing, "order": self.order, "seed": self.seed}


def evaluation_text(config: dict[str, Any]) -> str:
    """The evaluation a config (as a record stores it) validates with, in words for reports."""
    evaluation = config.get("evaluation", "moving")
    if evaluation != "swa":
        return evaluation
    epochs = int(config.get("epochs") or 1)
    first = config.get("average_from") or epochs // 2 + 1
    window = f"epoch {epochs}" if first >= epochs else f"epochs {first}-{epochs}"
    return f"swa (weights averaged over {window}, every {config.get('average_every', 5)} steps; precise BN)"


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
    # Torch, seeds 123-127, Zen 4: final val acc 58.2 +- 4.1 with swa (epochs 3-4), 54.2 +- 7.3 with precise-bn.
    evaluation: str = "swa"  # moving statistics lag the weights (precise-BN); the last steps' noise (the average)


@dataclass
class SteadyProfile(QuickProfile):
    """The quick profile trained to its plateau: a verdict whose spread is within 3 points (docs/profiles.md)."""

    # Seeds 123-127, Zen 4, final val acc: 32 px 4 epochs tf 58.2 +- 5.9, torch 58.8 +- 5.9; this profile tf 95.6 +- 2.2,
    # torch 97.5 +- 2.3 (torch at 64 px: 4 epochs 80.0 +- 7.8, 8 epochs 94.7 +- 3.8); the demo's shapes need 64 px.
    input_size: int = 64
    epochs: int = 12  # still climbing at epoch 8 (89.4-99.1%)
    average_from: int | None = 9  # the last third (torch 3.1 -> 2.3 against epochs 7-12: a lagging seed's 72% phase)


# Parity always runs at the seed's configuration (224 px, avg7, the 1000-way head), where its
# tolerances were measured: at 64 px with global pooling the 2x2 stage-5 maps make gradients
# ill-conditioned (measured: grad errors ~1e-2 against a 1e-4 tolerance).
PARITY_MODEL_ARGS = {"input_size": 224, "pooling": "avg7", "classes": 1000}
RESIDUAL_IMAGES = 32  # validation images for the residual ratios (their spread is per image)


@dataclass(frozen=True)
class Profile:
    """One profile for every step. ``train``: the training config; ``bench``: the benchmark
    settings it changes (``bench.benchmark.Settings`` fields); ``budget_s``: expected seconds per
    step of ``twinbench run`` on an otherwise idle 2-core machine, for the ETA."""

    name: str
    train: type[TrainConfig]
    bench: dict[str, Any]
    datacheck_decoders: tuple[str, ...]
    ablations: tuple[str, ...] | None  # parity ablations run alone (None: every one)
    budget_s: dict[str, float] = field(default_factory=dict)
    repeats: int = 1  # training runs per framework in twinbench run (twinbench train --repeats)
    chaos: bool = False  # the chaos control in twinbench run (twinbench train --chaos)
    chaos_steps: int | None = None  # steps it traces (twinbench train --chaos-steps; None: the whole run)
    parallel: int = 1  # training workers at a time in twinbench run (--parallel; the local executor)
    parity_stop_at_expected: bool = False  # each parity ablation runs only the checks up to the one it must fail
    parity_model: dict[str, Any] = field(default_factory=lambda: dict(PARITY_MODEL_ARGS))
    residual_images: int = RESIDUAL_IMAGES

    @property
    def input_size(self) -> int:
        return self.train.input_size

    @property
    def pooling(self) -> str:
        return self.train.pooling


PROFILES = {
    # make run: training at QuickProfile's size (32 px); the benchmark's quick subset (both frameworks, ours vs
    # reference, train and infer, fp32 eager at 64 px: ~1/12 of the 224 px FLOPs, under two minutes on two
    # cores); parity with one ablation per check it catches (forward, bn, adam, input), each costing a torch
    # worker run except decoder. resize-antialias is left out: the demo's images are already 224 px, so
    # resizing them to 224 is the identity and antialiasing changes nothing.
    "quick": Profile("quick", QuickProfile,
                     {"precisions": ("fp32",), "layouts": ("nhwc",), "compiles": ("eager",), "input_size": 64,
                      "pooling": "global", "warmup": 2, "repeats": 5, "steps": 2, "memory_steps": 2,
                      "peak_size": 1024},
                     ("accurate",), ("bn-eps", "bn-momentum", "adam-eps", "decoder"),
                     {"data": 5, "manifest": 5, "datacheck": 10, "parity": 100, "train": 320, "bench": 85,
                      "residuals": 15, "report": 5}, repeats=3, chaos=True,
                     # The cheap chaos control: one epoch on the demo (29 steps at batch 16); its factor reads
                     # steps 1-10, the rest shows the saturation. Saves 3 of the 1-ulp run's 4 epochs.
                     chaos_steps=29, parity_stop_at_expected=True,
                     # Two training workers at a time, 1 thread each: at 32 px a step on 1 thread takes 1.6x (TF)
                     # and 1.8x (torch) its 2-thread time, and tracing, validation and checkpoints overlap.
                     parallel=2),
    # The seed: 224 px, 50 epochs, batch 8, the seed's 1000-way head; the bench at the seed's
    # conditions (batch 8, 224 px, fp32 and bf16, NHWC, eager; the full matrix is twinbench bench).
    "seed": Profile("seed", TrainConfig,
                    {"batches": (8,), "input_size": 224, "precisions": ("fp32", "bf16"), "layouts": ("nhwc",),
                     "compiles": ("eager",)},
                    ("accurate", "seed"), None,
                    {"data": 5, "manifest": 5, "datacheck": 60, "parity": 400, "train": 2 * 70 * 60,
                     "bench": 600, "residuals": 90, "report": 20}),
}
# quick's steps with SteadyProfile's training: each framework's seed-to-seed spread within 3 points; twinbench run
# 18 min on 2 cores, 903 s of it training (docs/profiles.md, 2026-12-08). Every other step is quick's, by construction.
PROFILES["steady"] = replace(PROFILES["quick"], name="steady", train=SteadyProfile,
                             budget_s={**PROFILES["quick"].budget_s, "train": 900})
