"""The architecture as data: one description that both frameworks build their model from.

ResNet-50 exactly as the seed's Keras functional model writes it (``../shared/seed/``), which is
ResNet v1 (He et al. 2015), not torchvision's v1.5:

- stem: ZeroPadding2D(3) -> Conv 7x7/2 'valid' with bias -> BN -> ReLU -> MaxPool 3x3/2 'valid'
  (no padding: 55x55 at 224 px, where torchvision's padded pool gives 56x56);
- conv_block: the stride sits on the FIRST 1x1 conv and on the 1x1 shortcut conv (v1.5 moves it
  to the 3x3); identity_block: 1x1 -> 3x3 'same' -> 1x1, identity shortcut;
- every conv carries a bias (Keras' default ``use_bias=True``), every BN uses Keras' defaults;
- head: AveragePooling2D(7) -> Flatten -> Dense(classes, softmax) named ``fc1000``.

Canonical layer names are the seed's Keras names (``conv1``, ``bn_conv1``,
``2a_conv_block_conv1``, ..., ``2a_conv_block_res_conv``, ``2b_identity_block_bn3``, ``fc1000``).
The weight bundle, the legacy-h5 mapping, the parity probes and the reports all key on them.

FLOPs here are 2 x multiply-accumulates of the conv and dense layers (the convention of
``torch.utils.flop_counter`` and of the ResNet/CSPNet papers); BN, ReLU, additions, pooling and
bias additions are left out (well under 1% of the total).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from bench.errors import UserError

# Keras BatchNormalization defaults (keras/src/layers/normalization/batch_normalization.py).
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Keras: moving = momentum * moving + (1 - momentum) * batch; torch momentum = 0.01

# (stage, filters, number of blocks, stride of the stage's conv_block), as in the seed.
RESNET50_STAGES: tuple[tuple[int, tuple[int, int, int], int, int], ...] = (
    (2, (64, 64, 256), 3, 1),
    (3, (128, 128, 512), 4, 2),
    (4, (256, 256, 1024), 6, 2),
    (5, (512, 512, 2048), 3, 2),
)

POOLINGS = ("avg7", "global")
BLOCK_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Names the seed leaves to Keras' automatic naming; set explicitly to what a fresh Keras session
# gives them, so the names stay stable however many models a process builds.
STEM_PAD = "zero_padding2d"
STEM_RELU = "activation"
STEM_POOL = "max_pooling2d"
HEAD_POOL = "avg_pool"
HEAD_FLATTEN = "flatten"
HEAD_DENSE = "fc1000"


@dataclass(frozen=True)
class Layer:
    """One weighted layer (conv, batch norm or dense), named canonically."""

    name: str  # canonical (seed Keras) name
    kind: str  # "conv" | "bn" | "dense"
    block: str | None  # block id ("2a") or None for stem and head
    local: str  # name inside its block ("conv1", "res_bn"); equals ``name`` outside blocks
    in_channels: int
    out_channels: int  # for "bn": the channel count
    kernel: int = 1
    stride: int = 1
    padding: str = "valid"  # "valid" | "same"
    use_bias: bool = True

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Variable names in Keras order (the bundle's keys are ``f"{name}/{weight}"``)."""
        if self.kind == "bn":
            return ("gamma", "beta", "moving_mean", "moving_variance")
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Keras layouts: conv HWIO, dense (in, out), BN vectors."""
        if self.kind == "conv":
            shapes = {"kernel": (self.kernel, self.kernel, self.in_channels, self.out_channels)}
        elif self.kind == "dense":
            shapes = {"kernel": (self.in_channels, self.out_channels)}
        else:
            return {w: (self.out_channels,) for w in self.weight_names}
        if self.use_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    @property
    def trainable_params(self) -> int:
        shapes = self.weight_shapes()
        if self.kind == "bn":
            return 2 * self.out_channels
        return sum(math.prod(s) for s in shapes.values())

    @property
    def non_trainable_params(self) -> int:
        return 2 * self.out_channels if self.kind == "bn" else 0


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: what it is, its widths, its stride, its layers."""

    id: str  # "2a"
    kind: str  # "conv_block" | "identity_block" (other models add kinds)
    stage: int
    in_channels: int
    filters: tuple[int, ...]
    kernel_size: int = 3
    strides: int = 1
    depth: int = 1  # inner residual units (used by stage-level blocks such as C3)

    @property
    def prefix(self) -> str:
        return f"{self.id}_{self.kind}_"

    @property
    def out_channels(self) -> int:
        return self.filters[-1]

    def layers(self) -> list[Layer]:
        builder = BLOCK_LAYERS.get(self.kind)
        if builder is None:
            raise ValueError(f"unknown block kind {self.kind!r}")
        return builder(self)

    def out_size(self, size: int) -> int:
        """Spatial size after this block for an input of ``size`` (1x1 'valid' conv, stride s)."""
        return (size - 1) // self.strides + 1


def _bottleneck_layers(block: BlockSpec) -> list[Layer]:
    f1, f2, f3 = block.filters
    p, k = block.prefix, block.kernel_size
    stride = block.strides if block.kind == "conv_block" else 1
    layers = [
        Layer(p + "conv1", "conv", block.id, "conv1", block.in_channels, f1, 1, stride),
        Layer(p + "bn1", "bn", block.id, "bn1", f1, f1),
        Layer(p + "conv2", "conv", block.id, "conv2", f1, f2, k, 1, "same"),
        Layer(p + "bn2", "bn", block.id, "bn2", f2, f2),
        Layer(p + "conv3", "conv", block.id, "conv3", f2, f3, 1, 1),
        Layer(p + "bn3", "bn", block.id, "bn3", f3, f3),
    ]
    if block.kind == "conv_block":
        rp = f"{block.id}_conv_block_res_"
        layers += [
            Layer(rp + "conv", "conv", block.id, "res_conv", block.in_channels, f3, 1, stride),
            Layer(rp + "bn", "bn", block.id, "res_bn", f3, f3),
        ]
    return layers


# Block kind -> its layers. Models with other block kinds register them here.
BLOCK_LAYERS: dict[str, Callable[[BlockSpec], list[Layer]]] = {
    "conv_block": _bottleneck_layers,
    "identity_block": _bottleneck_layers,
}


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: stem, blocks in order, head; plus its input size and class count."""

    name: str
    classes: int
    input_size: int
    pooling: str
    blocks: tuple[BlockSpec, ...]
    stem_filters: int = 64
    notes: dict = field(default_factory=dict, compare=False)

    # ---- layers and names -------------------------------------------------------------------
    def stem_layers(self) -> list[Layer]:
        return [
            Layer("conv1", "conv", None, "conv1", 3, self.stem_filters, 7, 2),
            Layer("bn_conv1", "bn", None, "bn_conv1", self.stem_filters, self.stem_filters),
        ]

    def head_layers(self) -> list[Layer]:
        return [Layer(HEAD_DENSE, "dense", None, HEAD_DENSE, self.blocks[-1].out_channels, self.classes)]

    def layers(self) -> list[Layer]:
        out = self.stem_layers()
        for block in self.blocks:
            out += block.layers()
        return out + self.head_layers()

    def layer(self, name: str) -> Layer:
        for layer in self.layers():
            if layer.name == name:
                return layer
        raise KeyError(name)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Bundle key (``layer/weight``) -> Keras-layout shape, in model order."""
        return {
            f"{layer.name}/{w}": shape
            for layer in self.layers()
            for w, shape in layer.weight_shapes().items()
        }

    @property
    def probe_points(self) -> list[str]:
        """Where parity compares activations: stem, each block, pooled features, logits, probs."""
        return ["stem"] + [b.id for b in self.blocks] + ["pool", "logits", "probs"]

    # ---- shapes -----------------------------------------------------------------------------
    def stem_sizes(self, size: int | None = None) -> tuple[int, int]:
        """(after conv1, after the max pool) spatial sizes."""
        size = self.input_size if size is None else size
        conv = (size + 6 - 7) // 2 + 1  # ZeroPadding2D(3), 7x7/2 valid
        pool = (conv - 3) // 2 + 1  # 3x3/2 valid
        return conv, pool

    def shapes(self, size: int | None = None) -> dict[str, tuple[int, ...]]:
        """Output shape (H, W, C) per probe point, for one image (channels last)."""
        size = self.input_size if size is None else size
        conv, s = self.stem_sizes(size)
        out: dict[str, tuple[int, ...]] = {"conv1": (conv, conv, self.stem_filters), "stem": (s, s, self.stem_filters)}
        for block in self.blocks:
            s = block.out_size(s)
            out[block.id] = (s, s, block.out_channels)
        out["pool"] = (self.blocks[-1].out_channels,)
        out["logits"] = (self.classes,)
        out["probs"] = (self.classes,)
        return out

    # ---- counts -----------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        layers = self.layers()
        trainable = sum(layer.trainable_params for layer in layers)
        non_trainable = sum(layer.non_trainable_params for layer in layers)
        return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}

    def block_params(self) -> dict[str, int]:
        """Parameters (trainable + BN statistics) per probe point that owns weights."""
        out = {"stem": sum(l.trainable_params + l.non_trainable_params for l in self.stem_layers())}
        for block in self.blocks:
            out[block.id] = sum(l.trainable_params + l.non_trainable_params for l in block.layers())
        out["logits"] = sum(l.trainable_params for l in self.head_layers())
        return out

    def layer_flops(self, size: int | None = None) -> dict[str, int]:
        """Forward FLOPs (2 x MACs) per conv/dense layer for one image."""
        size = self.input_size if size is None else size
        out: dict[str, int] = {}
        conv_size, s = self.stem_sizes(size)
        conv1 = self.stem_layers()[0]
        out[conv1.name] = 2 * conv_size * conv_size * conv1.kernel**2 * conv1.in_channels * conv1.out_channels
        for block in self.blocks:
            out.update(BLOCK_FLOPS.get(block.kind, _plain_block_flops)(block, s))
            s = block.out_size(s)
        for layer in self.head_layers():
            out[layer.name] = 2 * layer.in_channels * layer.out_channels
        return out

    def block_flops(self, size: int | None = None) -> dict[str, int]:
        """Forward FLOPs per probe point (stem, each block, logits) for one image."""
        per_layer = self.layer_flops(size)
        out = {"stem": per_layer["conv1"]}
        for block in self.blocks:
            out[block.id] = sum(per_layer[l.name] for l in block.layers() if l.kind != "bn")
        out["logits"] = sum(per_layer[l.name] for l in self.head_layers())
        return out

    def forward_flops(self, size: int | None = None) -> int:
        return sum(self.layer_flops(size).values())

    def train_flops(self, size: int | None = None) -> int:
        """Approximate training FLOPs per image: forward + backward (about 2 x forward)."""
        return 3 * self.forward_flops(size)

    def block_table(self, size: int | None = None) -> list[dict]:
        """One row per probe point: kind, filters, stride, output shape, params, FLOPs."""
        size = self.input_size if size is None else size
        shapes, params, flops = self.shapes(size), self.block_params(), self.block_flops(size)
        rows = [{"block": "stem", "kind": "stem", "filters": str(self.stem_filters), "stride": 4,
                 "output": "x".join(map(str, shapes["stem"])), "params": params["stem"], "flops": flops["stem"]}]
        for b in self.blocks:
            rows.append({"block": b.id, "kind": b.kind, "filters": "-".join(map(str, b.filters)),
                         "stride": b.strides, "output": "x".join(map(str, shapes[b.id])),
                         "params": params[b.id], "flops": flops[b.id]})
        rows.append({"block": "head", "kind": f"{self.pooling} pool + dense", "filters": str(self.classes),
                     "stride": 1, "output": str(self.classes), "params": params["logits"], "flops": flops["logits"]})
        return rows


def _plain_block_flops(block: BlockSpec, size: int) -> dict[str, int]:
    """FLOPs of a block whose convs run in sequence, each at the block's output size except
    convs with stride 1 that come before a strided one (none in ResNet v1's bottleneck)."""
    out_size = block.out_size(size)
    return {
        layer.name: 2 * out_size * out_size * layer.kernel**2 * layer.in_channels * layer.out_channels
        for layer in block.layers()
        if layer.kind == "conv"
    }


# Block kind -> per-layer FLOPs at a given input size. Other models register their kinds here.
BLOCK_FLOPS: dict[str, Callable[[BlockSpec, int], dict[str, int]]] = {
    "conv_block": _plain_block_flops,
    "identity_block": _plain_block_flops,
}


def resnet50_blocks() -> tuple[BlockSpec, ...]:
    blocks = []
    in_ch = 64
    for stage, filters, count, stride in RESNET50_STAGES:
        for i in range(count):
            kind = "conv_block" if i == 0 else "identity_block"
            blocks.append(BlockSpec(f"{stage}{BLOCK_LETTERS[i]}", kind, stage, in_ch, filters, 3,
                                    stride if i == 0 else 1))
            in_ch = filters[-1]
    return tuple(blocks)


# Model name -> function returning its blocks. An explicit dict, not a name lookup.
MODELS: dict[str, Callable[[], tuple[BlockSpec, ...]]] = {
    "resnet50": resnet50_blocks,
}


def min_input_size(pooling: str) -> int:
    """Smallest square input the network accepts with this pooling."""
    return 197 if pooling == "avg7" else 32


def build_spec(model: str = "resnet50", classes: int = 1000, input_size: int = 224,
               pooling: str = "avg7") -> ModelSpec:
    """The spec for a model name, head size, input size and pooling, validated."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    if not isinstance(classes, int) or classes < 1:
        raise UserError(f"classes must be a positive integer, got {classes!r}")
    spec = ModelSpec(model, classes, int(input_size), pooling, MODELS[model]())
    final = spec.shapes()[spec.blocks[-1].id][0]
    if pooling == "avg7" and final != 7:
        raise UserError(
            f"input size {input_size} gives a {final}x{final} final feature map; the seed's "
            f"AveragePooling2D(7) needs 7x7 (input 197..228, e.g. 224): use --pooling global")
    if pooling == "global" and input_size < min_input_size("global"):
        raise UserError(f"input size {input_size} is too small for {model}: use at least "
                        f"{min_input_size('global')} px")
    return spec


def spec_from_args(args: dict) -> ModelSpec:
    """The spec named by a job's model arguments (what every worker task receives)."""
    return build_spec(args.get("model", "resnet50"), int(args.get("classes", 1000)),
                      int(args.get("input_size", 224)), args.get("pooling", "avg7"))


# ---- resnet50_c3 ----------------------------------------------------------------------------------
C3_HIDDEN_RATIO = 0.5  # YOLOv5: C3(c1, c2, n, e=0.5) -> c_ = int(c2 * e)


def resnet50_c3_blocks() -> tuple[BlockSpec, ...]:
    """The four stages of ``resnet50_c3``: ResNet-50 with each stage rebuilt as a YOLOv5-style C3
    stage of ResNet bottleneck units. Filters are (f1, f2, c_, c2); ``depth`` is the unit count.

    The seed's third task asks whether ResNet's residual module can be merged into YOLOv5's C3
    (CSP bottleneck with 3 convolutions). ``resnet50_c3`` keeps the seed's stem and head unchanged
    and replaces each of the four stages (depths 3, 4, 6, 3) by ONE stage block of kind ``c3_block``:

        y = relu(bn(cv3(concat(m(cv1(x)), cv2(x)))))      cv1, cv2: relu(bn(conv1x1(x)))
        m = n ResNet bottleneck units on c_ channels:      u(h) = relu(h + bn3(conv3(relu(bn2(conv2(
                                                                    relu(bn1(conv1(h)))))))))

    Design choices, and why:

    - Widths. A stage's output width c2 is the seed's (256, 512, 1024, 2048), so every probe shape
      equals ResNet-50's and the seed's head (AveragePooling2D(7) + fc1000 on 2048 features) is
      unchanged. The hidden width is YOLOv5's ``c_ = c2 * 0.5``: cv1 and cv2 each carry half the
      channels, and the bottleneck units run on cv1's half only (the cross-stage partial split).
      Inside a unit the 1x1 -> 3x3 widths stay the seed's (64, 128, 256, 512), so the 3x3 convs -
      the spatial work - are ResNet-50's, and a unit is 128 -> 64 -> 64 -> 128 in stage 2 (expansion
      2 instead of 4). That is how CSPNet's CSPResNet-50 sizes its units (timm's ``cspresnet50``:
      bottle_ratio 0.5 on the split half), and it keeps the model at ResNet-50's budget (26.85M
      parameters, +4.7%; 7.89 GFLOPs at 224 px, +2.9%), so a difference in accuracy reflects the
      topology rather than the size. Halving the units' widths as well (32 -> 32 -> 128 in stage 2)
      would give 15.83M parameters and 4.32 GFLOPs: a different question (a smaller model).
    - Stride. Downsampling sits at the stage entry, on the two 1x1 entry convs cv1 and cv2 (stride 2
      in stages 3-5), just as the seed's conv_block strides its first 1x1 and its 1x1 shortcut
      (ResNet v1). All units then see c_ -> c_ at the stage's output size, so every unit has an
      IDENTITY shortcut and no projection conv (C3 needs none: cv1 already maps c1 -> c_).
    - Activation. ReLU everywhere, also in cv1/cv2/cv3 where YOLOv5's ``Conv`` uses SiLU: one
      activation across the whole network, so that resnet50 vs resnet50_c3 isolates the C3
      topology; the seed is a ReLU network. The units keep ResNet's ReLU after the add (YOLOv5's
      own Bottleneck has none); the stage output is cv3's ReLU.
    - Bias. cv1, cv2, cv3 are YOLOv5 ``Conv``s: no bias (BN follows, a bias would be absorbed by
      beta). The units are the seed's identity_block verbatim, so their convs keep Keras' default
      bias (``use_bias=True``). BN everywhere uses the Keras defaults (BN_EPSILON, BN_MOMENTUM).
    - Probe points: one per stage (``2``..``5``), the stage's output, not one per unit: a C3 stage
      is not a chain of units (cv2's half bypasses all of them and joins at the concat), so a unit
      output is not a point where both models hold the same tensor as the next block's input, and
      four stage points line up one to one with the ends of ResNet-50's stages (2c, 3d, 4f, 5c).
      Each unit is still a residual unit with its own F(x) and identity shortcut, for per-unit
      branch-to-shortcut ratios (torch ``C3Stage.unit_branches``; Keras ``<prefix>m<i>_add``).

    Canonical names follow the seed's scheme ``<block id>_<kind>_<layer>``: block ids are the stage
    numbers, e.g. ``3_c3_block_cv1_conv``, ``3_c3_block_cv1_bn``, ``3_c3_block_m0_conv1`` ..
    ``3_c3_block_m3_bn3``, ``3_c3_block_cv3_bn``; activations ``..._cv1_relu``, ``..._m0_relu1``,
    ``..._m0_add``, ``..._m0_relu4`` (the unit's names are the seed's identity_block names),
    ``..._concat``, ``..._cv3_relu`` (the stage's output). A layer's ``local`` is its dotted torch
    path inside the stage module (``cv1.conv``, ``m.0.conv1``, ``cv3.bn``), YOLOv5's own structure.
    """
    blocks = []
    in_ch = 64
    for stage, (f1, f2, f3), count, stride in RESNET50_STAGES:
        hidden = int(f3 * C3_HIDDEN_RATIO)
        blocks.append(BlockSpec(str(stage), "c3_block", stage, in_ch, (f1, f2, hidden, f3), 3, stride, depth=count))
        in_ch = f3
    return tuple(blocks)


def c3_unit_prefix(block: BlockSpec, unit: int) -> str:
    """Canonical name prefix of a C3 stage's ``unit``-th bottleneck (``2_c3_block_m0_``)."""
    return f"{block.prefix}m{unit}_"


def c3_unit_layers(block: BlockSpec) -> list[list[Layer]]:
    """A C3 stage's bottleneck units, each as its six layers (conv1, bn1, conv2, bn2, conv3, bn3)."""
    units: dict[int, list[Layer]] = {}
    for layer in block.layers():
        if layer.local.startswith("m."):
            units.setdefault(int(layer.local.split(".")[1]), []).append(layer)
    return [units[i] for i in sorted(units)]


def _c3_layers(block: BlockSpec) -> list[Layer]:
    """cv1, ``depth`` bottleneck units on c_ channels, cv2, cv3: the order in which YOLOv5's
    forward runs them (``cv3(cat(m(cv1(x)), cv2(x)))``) and Keras lists them (depth-first from
    the output, concat inputs in order), so spec, Keras and torch list the layers alike."""
    f1, f2, hidden, c2 = block.filters
    p, b, k, s = block.prefix, block.id, block.kernel_size, block.strides

    def conv_bn(name: str, cin: int, cout: int, stride: int) -> list[Layer]:
        # YOLOv5's Conv: conv without bias, then BN (the activation is not a weighted layer).
        return [Layer(f"{p}{name}_conv", "conv", b, f"{name}.conv", cin, cout, 1, stride, use_bias=False),
                Layer(f"{p}{name}_bn", "bn", b, f"{name}.bn", cout, cout)]

    layers = conv_bn("cv1", block.in_channels, hidden, s)
    for i in range(block.depth):
        up, lp = c3_unit_prefix(block, i), f"m.{i}."
        layers += [
            Layer(up + "conv1", "conv", b, lp + "conv1", hidden, f1, 1, 1),
            Layer(up + "bn1", "bn", b, lp + "bn1", f1, f1),
            Layer(up + "conv2", "conv", b, lp + "conv2", f1, f2, k, 1, "same"),
            Layer(up + "bn2", "bn", b, lp + "bn2", f2, f2),
            Layer(up + "conv3", "conv", b, lp + "conv3", f2, hidden, 1, 1),
            Layer(up + "bn3", "bn", b, lp + "bn3", hidden, hidden),
        ]
    return layers + conv_bn("cv2", block.in_channels, hidden, s) + conv_bn("cv3", 2 * hidden, c2, 1)


BLOCK_LAYERS["c3_block"] = _c3_layers
# Every conv of a C3 stage runs at the stage's output size (the stride is on the 1x1 entry convs).
BLOCK_FLOPS["c3_block"] = _plain_block_flops
MODELS["resnet50_c3"] = resnet50_c3_blocks
