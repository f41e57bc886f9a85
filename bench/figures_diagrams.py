"""The block diagrams of a report, drawn from ``bench.spec``: the main path F(x) on the left, the
shortcut on the right (a C3 stage: cv1, the residual units, the cv2 bypass, concat, cv3)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from bench.figures import footer
from bench.spec import BlockSpec, ModelSpec

_BOX = {"conv": "#d2e3fc", "bn": "#fef7e0", "relu": "#e6f4ea", "io": "#f1f3f4", "add": "#fce8e6", "unit": "#e8eaed"}
Box = tuple[float, float, float, float]  # centre x, centre y, width, height


def _box(ax, x: float, y: float, text: str, kind: str, w: float = 2.6, h: float = 0.5) -> Box:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=_BOX[kind], edgecolor="#5f6368", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=7.5)
    return x, y, w, h


def _arrow(ax, src: Box, dst: Box, text: str = "", rad: float = 0.0) -> None:
    """From the bottom edge of ``src`` to the top edge of ``dst``."""
    start, end = (src[0], src[1] - src[3] / 2), (dst[0], dst[1] + dst[3] / 2)
    ax.annotate("", xy=end, xytext=start,
                arrowprops={"arrowstyle": "->", "color": "#3c4043", "lw": 0.9, "shrinkA": 1, "shrinkB": 1,
                            "connectionstyle": f"arc3,rad={rad}"})
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.1, (start[1] + end[1]) / 2, text, fontsize=6.5, color="#5f6368",
                va="center")


def _conv_text(layer) -> str:
    stride = f", stride {layer.stride}" if layer.stride != 1 else ""
    bias = "" if layer.use_bias else ", no bias"
    return f"{layer.kernel}x{layer.kernel} conv, {layer.out_channels}{stride}{bias}"


def _layer_text(layer) -> str:
    return f"{layer.local}: {_conv_text(layer)}" if layer.kind == "conv" else f"{layer.local}: BatchNorm"


def _draw_bottleneck(ax, block: BlockSpec, size: int) -> None:
    """Main path on the left, shortcut on the right, from the block's layers in bench.spec."""
    layers = {layer.local: layer for layer in block.layers()}
    out = block.out_size(size)
    top = 9.0
    inp = _box(ax, 1.5, top, f"input {size}x{size}x{block.in_channels}", "io", w=3.0)
    y = top - 0.9
    prev = inp
    for i in (1, 2, 3):
        conv = _box(ax, 0, y, _layer_text(layers[f"conv{i}"]), "conv", w=3.0)
        _arrow(ax, prev, conv)
        bn = _box(ax, 0, y - 0.7, _layer_text(layers[f"bn{i}"]), "bn", w=3.0)
        _arrow(ax, conv, bn)
        prev = bn
        y -= 1.4
        if i < 3:
            relu = _box(ax, 0, y, "ReLU", "relu", w=1.2)
            _arrow(ax, prev, relu)
            prev = relu
            y -= 0.7
    add = _box(ax, 1.5, y, "add: F(x) + shortcut(x)", "add", w=2.8)
    _arrow(ax, prev, add)
    ax.text(0.55, y + 0.2, "F(x)", fontsize=6.5, color="#5f6368", ha="right")
    if block.kind == "conv_block":
        sc = _box(ax, 3.4, top - 2.5, _layer_text(layers["res_conv"]), "conv", w=3.0)
        _arrow(ax, inp, sc)
        sbn = _box(ax, 3.4, top - 3.2, _layer_text(layers["res_bn"]), "bn", w=3.0)
        _arrow(ax, sc, sbn)
        _arrow(ax, sbn, add, "shortcut(x)")
    else:
        _arrow(ax, (2.6, top, 0, 0.5), (2.6, y, 0, 0.5), rad=-0.25)
        ax.text(3.5, (top + y) / 2, "identity\nshortcut(x) = x", fontsize=7, color="#5f6368", ha="center")
    relu = _box(ax, 1.5, y - 0.7, "ReLU", "relu", w=1.2)
    _arrow(ax, add, relu)
    o = _box(ax, 1.5, y - 1.4, f"output {out}x{out}x{block.out_channels}", "io", w=3.0)
    _arrow(ax, relu, o)


def _draw_c3(ax, block: BlockSpec, size: int) -> None:
    """A C3 stage: cv1 -> n residual units; cv2 bypasses them; concat -> cv3."""
    layers = {layer.local: layer for layer in block.layers()}
    out = block.out_size(size)
    top = 9.0
    inp = _box(ax, 1.7, top, f"input {size}x{size}x{block.in_channels}", "io", w=3.0)
    cv1 = _box(ax, 0, top - 1.1, f"cv1: {_conv_text(layers['cv1.conv'])}\n+ BN + ReLU", "conv", w=3.2, h=0.7)
    cv2 = _box(ax, 3.5, top - 1.1, f"cv2: {_conv_text(layers['cv2.conv'])}\n+ BN + ReLU", "conv", w=3.2, h=0.7)
    _arrow(ax, inp, cv1)
    _arrow(ax, inp, cv2)
    unit = [layers[f"m.0.conv{i}"] for i in (1, 2, 3)]
    widths = " -> ".join(f"{l.kernel}x{l.kernel} {l.out_channels}" for l in unit)
    m = _box(ax, 0, top - 3.2, f"m: {block.depth} x residual unit\n(the seed's identity_block)\n{widths}\n"
             "+ identity shortcut, ReLU", "unit", w=3.2, h=1.5)
    _arrow(ax, cv1, m)
    cat = _box(ax, 1.7, top - 5.0, "concat (channels)", "add", w=2.6)
    _arrow(ax, m, cat)
    _arrow(ax, cv2, cat, "bypass")
    cv3 = _box(ax, 1.7, top - 6.0, f"cv3: {_conv_text(layers['cv3.conv'])}\n+ BN + ReLU", "conv", w=3.4, h=0.7)
    _arrow(ax, cat, cv3)
    o = _box(ax, 1.7, top - 7.0, f"output {out}x{out}x{block.out_channels}", "io", w=3.0)
    _arrow(ax, cv3, o)


def block_diagrams(spec: ModelSpec, *, size: int | None = None) -> Figure:
    """A drawn diagram of each block kind of ``spec`` (ResNet-50: a conv_block and an
    identity_block), generated from the spec's layers."""
    size = spec.input_size if size is None else size
    shapes = spec.shapes(size)
    # Per kind, the first block that downsamples if there is one (it shows where the stride sits:
    # ResNet v1 strides the first 1x1 and the shortcut), else the first of its kind.
    inputs = dict(zip((b.id for b in spec.blocks), ["stem"] + [b.id for b in spec.blocks[:-1]]))
    chosen_by_kind: dict[str, BlockSpec] = {}
    for block in spec.blocks:
        first = chosen_by_kind.get(block.kind)
        if first is None or (first.strides == 1 and block.strides > 1):
            chosen_by_kind[block.kind] = block
    chosen = [(b, shapes[inputs[b.id]][0]) for b in chosen_by_kind.values()]
    fig = Figure(figsize=(5.6 * len(chosen), 7.0))
    axes = np.atleast_1d(fig.subplots(1, len(chosen)))
    for ax, (block, in_size) in zip(axes, chosen):
        if block.kind == "c3_block":
            _draw_c3(ax, block, in_size)
        else:
            _draw_bottleneck(ax, block, in_size)
        ax.set_xlim(-1.8, 5.4)
        ax.set_ylim(0.7, 9.5)
        ax.axis("off")
        ax.set_title(f"{block.kind} (block {block.id}, filters {'-'.join(map(str, block.filters))}"
                     f"{', stride ' + str(block.strides) if block.strides != 1 else ''})", fontsize=10)
    footer(fig, f"{spec.name}, input {size} px; drawn from bench.spec (layer names are the canonical ones); "
                "every conv is followed by BN, and ReLU where shown")
    return fig
