"""The seed's ResNet-50 as a PyTorch ``nn.Module``, built from ``bench.spec``.

The same function as ``tf_impl.model``, block for block:

- every conv has a bias (Keras' ``use_bias=True``); BN uses Keras' defaults, ``eps=1e-3`` and
  Keras momentum 0.99, which is torch ``momentum=0.01`` (torch weights the NEW batch statistic);
- Keras updates the moving variance with the biased batch variance, torch with the unbiased
  one (factor n/(n-1)): :class:`KerasBatchNorm2d` corrects the update, on C-length vectors only;
- the stride sits on the first 1x1 and on the shortcut (ResNet v1), not on the 3x3 (v1.5);
- the stem's max pool has no padding (55x55 at 224 px; torchvision pads to 56x56);
- 'same' 3x3 at stride 1 is padding 1.

``forward`` returns LOGITS (what fc1000 computes before its softmax); ``probabilities`` applies
the softmax where Keras' Dense(activation='softmax') does. Losses take ``log_softmax`` of the
logits: Keras' TF backend recovers those logits from the softmax output, so this is the exact
loss, with no 1e-7 clipping of probabilities.

Input layout is NCHW; ``channels_last`` memory format is a runtime option, not a model change.
Module names map to canonical names by :func:`module_name` (stem and head by name,
block layers as ``blocks.<block id>.<local name>``): the one mapping, defined once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench import spec as specs
from bench.spec import BlockSpec, Layer, ModelSpec


@dataclass(frozen=True)
class Alignment:
    """The choices that make the torch model match Keras. Parity ablations switch one off."""

    bn_eps: float = specs.BN_EPSILON  # torch default 1e-5
    bn_momentum: float = 1.0 - specs.BN_MOMENTUM  # torch default 0.1
    bn_biased_variance: bool = True  # Keras' moving-variance update; torch uses the unbiased one
    maxpool_padding: int = 0  # torchvision pads its stem pool by 1
    stride_on_3x3: bool = False  # torchvision's v1.5 places the stride on the 3x3
    # Backward-only switches (training mode): the forward and the moving statistics stay the same,
    # only gradients change; only a gradient check can see them.
    bn_mean_grad: bool = True  # False: the batch mean is detached from the graph
    bn_var_grad: bool = True  # False: the batch variance is detached from the graph
    bn_affine_grad: bool = True  # False: gamma and beta get no gradient (torchvision's FrozenBatchNorm2d)


class KerasBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose running variance follows Keras: the biased batch variance.

    torch updates ``running_var = (1-m) * running_var + m * var_unbiased``. Keras uses the biased
    variance. After torch's update we rescale the increment by (n-1)/n, which needs only the
    old running variance (C values), not another pass over the activations.
    """

    def __init__(self, num_features: int, eps: float, momentum: float, biased_variance: bool = True,
                 detach: tuple[str, ...] = ()):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.biased_variance = biased_variance
        self.detach = detach  # parity ablations: "mean", "var", "affine" cut off the backward pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.detach:
            return self._detached_forward(x)
        if not (self.training and self.biased_variance and self.track_running_stats):
            return super().forward(x)
        n = x.numel() // x.shape[1]
        # batch_norm saves the running buffers it is given for its backward: updating those same
        # tensors in place afterwards fails loss.backward(). It updates copies; we write them back.
        old = self.running_var.detach().clone()
        running_mean, running_var = self.running_mean.clone(), old.clone()
        out = F.batch_norm(x, running_mean, running_var, self.weight, self.bias, True, self.momentum, self.eps)
        with torch.no_grad():
            keep = 1.0 - self.momentum
            increment = running_var - keep * old  # m * var_unbiased
            self.running_mean.copy_(running_mean)
            self.running_var.copy_(keep * old + increment * ((n - 1) / n))
            self.num_batches_tracked.add_(1)
        return out

    def _detached_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same forward and moving-statistics update with the ``detach``ed parts cut off
        the graph (a parity ablation; the aligned model never takes this path)."""
        weight, bias = self.weight, self.bias
        if "affine" in self.detach:
            weight, bias = weight.detach(), bias.detach()
        if not self.training or not ({"mean", "var"} & set(self.detach)):
            if not self.training:
                return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps)
            n = x.numel() // x.shape[1]
            old = self.running_var.detach().clone()
            running_mean, running_var = self.running_mean.clone(), old.clone()
            out = F.batch_norm(x, running_mean, running_var, weight, bias, True, self.momentum, self.eps)
            with torch.no_grad():
                keep = 1.0 - self.momentum
                factor = (n - 1) / n if self.biased_variance else 1.0
                self.running_mean.copy_(running_mean)
                self.running_var.copy_(keep * old + (running_var - keep * old) * factor)
                self.num_batches_tracked.add_(1)
            return out
        n = x.numel() // x.shape[1]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1.0 - m).add_(mean, alpha=m)
            self.running_var.mul_(1.0 - m).add_(var if self.biased_variance else var * (n / (n - 1)), alpha=m)
            self.num_batches_tracked.add_(1)
        if "mean" in self.detach:
            mean = mean.detach()
        if "var" in self.detach:
            var = var.detach()
        scale = torch.rsqrt(var + self.eps) * weight
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] + bias[None, :, None, None]


def _conv(layer: Layer, align: Alignment, stride: int | None = None) -> nn.Conv2d:
    padding = (layer.kernel - 1) // 2 if layer.padding == "same" else 0
    return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel,
                     stride=layer.stride if stride is None else stride, padding=padding, bias=layer.use_bias)


def _bn(layer: Layer, align: Alignment) -> KerasBatchNorm2d:
    detach = tuple(part for part, keep in (("mean", align.bn_mean_grad), ("var", align.bn_var_grad),
                                           ("affine", align.bn_affine_grad)) if not keep)
    return KerasBatchNorm2d(layer.out_channels, eps=align.bn_eps, momentum=align.bn_momentum,
                            biased_variance=align.bn_biased_variance, detach=detach)


class Bottleneck(nn.Module):
    """conv_block (1x1 shortcut conv + BN) or identity_block (identity shortcut).

    Children are named by the spec's local names: conv1, bn1, conv2, bn2, conv3, bn3 and, for
    a conv_block, res_conv, res_bn.
    """

    def __init__(self, block: BlockSpec, align: Alignment = Alignment()):
        super().__init__()
        self.kind = block.kind
        by_local = {layer.local: layer for layer in block.layers()}
        stride = block.strides if block.kind == "conv_block" else 1
        v15 = align.stride_on_3x3 and stride > 1
        self.conv1 = _conv(by_local["conv1"], align, stride=1 if v15 else None)
        self.bn1 = _bn(by_local["bn1"], align)
        self.conv2 = _conv(by_local["conv2"], align, stride=stride if v15 else None)
        self.bn2 = _bn(by_local["bn2"], align)
        self.conv3 = _conv(by_local["conv3"], align)
        self.bn3 = _bn(by_local["bn3"], align)
        if block.kind == "conv_block":
            self.res_conv = _conv(by_local["res_conv"], align)
            self.res_bn = _bn(by_local["res_bn"], align)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual branch F(x), shortcut(x)), before the add."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = self.res_bn(self.res_conv(x)) if self.kind == "conv_block" else x
        return y, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, shortcut = self.branches(x)
        return F.relu(y + shortcut)


# Block kind -> module class. Models with other block kinds register theirs here.
BLOCK_MODULES: dict[str, type[nn.Module]] = {
    "conv_block": Bottleneck,
    "identity_block": Bottleneck,
}


class ResNet(nn.Module):
    """Stem, the spec's blocks in order, pooling and fc1000."""

    def __init__(self, spec: ModelSpec, align: Alignment = Alignment()):
        super().__init__()
        self.spec = spec
        self.align = align
        conv1, bn_conv1 = spec.stem_layers()
        self.conv1 = _conv(conv1, align)
        self.bn_conv1 = _bn(bn_conv1, align)
        self.blocks = nn.ModuleDict({b.id: BLOCK_MODULES[b.kind](b, align) for b in spec.blocks})
        dense = spec.head_layers()[0]
        self.fc1000 = nn.Linear(dense.in_channels, dense.out_channels, bias=dense.use_bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (3, 3, 3, 3))  # ZeroPadding2D((3, 3))
        x = F.relu(self.bn_conv1(self.conv1(x)))
        return F.max_pool2d(x, 3, stride=2, padding=self.align.maxpool_padding)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.pooling == "avg7":
            # AveragePooling2D(7) + Flatten; Flatten of NHWC (1, 1, C) equals flatten of NCHW.
            return torch.flatten(F.avg_pool2d(x, 7), 1)
        return x.mean(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for block in self.blocks.values():
            x = block(x)
        return self.pool(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc1000(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (pre-softmax). Use :meth:`probabilities` for what the Keras model outputs."""
        return self.forward_head(self.forward_features(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=-1)


def build(spec: ModelSpec, align: Alignment = Alignment()) -> ResNet:
    return ResNet(spec, align)


def ResNet50(input_shape=(224, 224, 3), classes: int = 1000, pooling: str = "avg7",  # noqa: N802
             model: str = "resnet50", align: Alignment = Alignment()) -> ResNet:
    """Mirror of ``tf_impl.model.ResNet50``: same arguments (input_shape is HWC, as in Keras)."""
    height, width = input_shape[0], input_shape[1]
    if height != width or input_shape[2] != 3:
        raise ValueError(f"square RGB input expected, received input_shape={tuple(input_shape)}")
    return build(specs.build_spec(model, classes, height, pooling), align)


def module_name(layer: Layer) -> str:
    """Canonical layer -> torch module path: the one mapping between the two name spaces."""
    return layer.name if layer.block is None else f"blocks.{layer.block}.{layer.local}"


def param_count(model: nn.Module) -> dict[str, int]:
    """Counted the Keras way: parameters + BN running statistics, no ``num_batches_tracked``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return {"total": trainable + frozen + stats, "trainable": trainable, "non_trainable": frozen + stats}


# ---- resnet50_c3 ----------------------------------------------------------------------------------
# C3 stages of ResNet bottleneck units; the design and its reasons: bench.spec.resnet50_c3_blocks.
# Children mirror YOLOv5's C3 (cv1, m, cv2, cv3), so the spec's dotted locals are module paths;
# they are registered in the spec's order (the order the forward runs them), as Keras lists them.
class ConvBnRelu(nn.Module):
    """YOLOv5's Conv (conv without bias -> BN -> activation), with ReLU where YOLOv5 has SiLU."""

    def __init__(self, conv: Layer, bn: Layer, align: Alignment = Alignment()):
        super().__init__()
        self.conv = _conv(conv, align)
        self.bn = _bn(bn, align)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class C3Unit(nn.Module):
    """One bottleneck unit: the seed's identity_block (1x1 -> 3x3 -> 1x1, identity shortcut)."""

    def __init__(self, unit: list[Layer], align: Alignment = Alignment()):
        super().__init__()
        conv1, bn1, conv2, bn2, conv3, bn3 = unit
        self.conv1, self.bn1 = _conv(conv1, align), _bn(bn1, align)
        self.conv2, self.bn2 = _conv(conv2, align), _bn(bn2, align)
        self.conv3, self.bn3 = _conv(conv3, align), _bn(bn3, align)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual branch F(x), shortcut(x) = x), before the add."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y)), x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, shortcut = self.branches(x)
        return F.relu(y + shortcut)


class C3Stage(nn.Module):
    """cv3(cat(m(cv1(x)), cv2(x))): ``depth`` units on cv1's half; cv2's half bypasses them.

    The stride sits on cv1 and cv2 (the stage's 1x1 entry convs, as the seed's conv_block), so
    ``Alignment.stride_on_3x3`` (a ResNet v1.5 ablation) has no C3 counterpart and is ignored.
    """

    def __init__(self, block: BlockSpec, align: Alignment = Alignment()):
        super().__init__()
        by_local = {layer.local: layer for layer in block.layers()}
        self.cv1 = ConvBnRelu(by_local["cv1.conv"], by_local["cv1.bn"], align)
        self.m = nn.Sequential(*(C3Unit(unit, align) for unit in specs.c3_unit_layers(block)))
        self.cv2 = ConvBnRelu(by_local["cv2.conv"], by_local["cv2.bn"], align)
        self.cv3 = ConvBnRelu(by_local["cv3.conv"], by_local["cv3.bn"], align)
        self.unit_names = [specs.c3_unit_prefix(block, i).rstrip("_") for i in range(len(self.m))]

    def unit_branches(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor, torch.Tensor]]]:
        """The stage's output and (unit name, F(h), shortcut h) for each residual unit, from one pass.

        A stage has no residual add of its own (its skip is cv2's half, joined by a concat), so
        the residual structure lives in the units: ``2_c3_block_m0`` .. per stage.
        """
        units = []
        h = self.cv1(x)
        for name, unit in zip(self.unit_names, self.m):
            y, shortcut = unit.branches(h)
            units.append((name, y, shortcut))
            h = F.relu(y + shortcut)
        return self.cv3(torch.cat((h, self.cv2(x)), dim=1)), units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # YOLOv5 concatenates m's output first; dim 1 is channels in NCHW.
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


BLOCK_MODULES["c3_block"] = C3Stage
