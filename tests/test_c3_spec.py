"""resnet50_c3 in bench.spec, framework-free: counts by hand, shapes, names, the C3 scheme."""

from __future__ import annotations

import argparse
import re

import pytest

from bench.options import add_model_options, model_args
from bench.errors import UserError
from bench.spec import MODELS, RESNET50_STAGES, build_spec, c3_unit_layers
from bench.weights import random_bundle, write_legacy_h5

C3 = build_spec("resnet50_c3")
R50 = build_spec("resnet50")
STAGE_ENDS = {"2": "2c", "3": "3d", "4": "4f", "5": "5c"}  # the ResNet-50 block each C3 stage replaces


def c3_counts_by_hand(classes: int = 1000) -> tuple[int, int]:
    """(trainable, BN statistics) written from the design, not through bench.spec's Layer maths."""
    trainable = 7 * 7 * 3 * 64 + 64 + 2 * 64  # stem conv1 with bias, bn_conv1 gamma/beta
    stats = 2 * 64
    c1 = 64
    for _, (f1, f2, c2), n, _ in RESNET50_STAGES:
        c_ = c2 // 2
        convs = 2 * c1 * c_ + 2 * c_ * c2  # cv1, cv2, cv3: no bias
        unit = (c_ * f1 + f1) + (9 * f1 * f2 + f2) + (f2 * c_ + c_)  # the seed's identity_block, with bias
        bn_channels = 2 * c_ + c2 + n * (f1 + f2 + c_)  # cv1, cv2, cv3, units
        trainable += convs + n * unit + 2 * bn_channels
        stats += 2 * bn_channels
        c1 = c2
    trainable += 2048 * classes + classes
    return trainable, stats


def c3_flops_by_hand(size: int) -> int:
    """2 x MACs of every conv and the dense layer, stage by stage, for one image."""
    conv = (size + 6 - 7) // 2 + 1
    s = (conv - 3) // 2 + 1
    flops = 2 * conv * conv * 7 * 7 * 3 * 64
    c1 = 64
    for _, (f1, f2, c2), n, stride in RESNET50_STAGES:
        s = (s - 1) // stride + 1
        c_ = c2 // 2
        macs = 2 * c1 * c_ + 2 * c_ * c2 + n * (c_ * f1 + 9 * f1 * f2 + f2 * c_)
        flops += 2 * s * s * macs
        c1 = c2
    return flops + 2 * 2048 * 1000


def test_parameter_counts_equal_the_hand_count():
    trainable, stats = c3_counts_by_hand()
    assert C3.param_counts() == {"total": trainable + stats, "trainable": trainable, "non_trainable": stats}
    assert C3.param_counts()["total"] == 26_851_560  # the figure the design docstring quotes
    assert build_spec("resnet50_c3", classes=4, input_size=64, pooling="global").param_counts()["trainable"] \
        == c3_counts_by_hand(classes=4)[0]


@pytest.mark.parametrize("size", [224, 64])
def test_flops_equal_the_hand_count(size):
    spec = build_spec("resnet50_c3", input_size=size, pooling="avg7" if size == 224 else "global")
    assert spec.forward_flops() == c3_flops_by_hand(size)
    assert sum(row["flops"] for row in spec.block_table()) == spec.forward_flops()
    assert sum(row["params"] for row in spec.block_table()) == spec.param_counts()["total"]
    if size == 224:
        assert spec.forward_flops() == 7_893_508_096


@pytest.mark.parametrize("size,pooling", [(224, "avg7"), (64, "global"), (97, "global")])
def test_stage_shapes_equal_the_resnet50_stage_ends(size, pooling):
    c3, r50 = build_spec("resnet50_c3", input_size=size, pooling=pooling), build_spec(input_size=size, pooling=pooling)
    c3_shapes, r50_shapes = c3.shapes(), r50.shapes()
    assert c3.probe_points == ["stem", "2", "3", "4", "5", "pool", "logits", "probs"]
    for stage, end in STAGE_ENDS.items():
        assert c3_shapes[stage] == r50_shapes[end], stage
    for point in ("conv1", "stem", "pool", "logits", "probs"):
        assert c3_shapes[point] == r50_shapes[point]
    if size == 224:
        assert [c3_shapes[s] for s in STAGE_ENDS] == [(55, 55, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)]


def test_names_are_unique_valid_and_follow_the_scheme():
    names = [layer.name for layer in C3.layers()]
    assert len(names) == len(set(names))
    r50_only = {layer.name for layer in R50.layers()} - {"conv1", "bn_conv1", "fc1000"}
    assert not r50_only & set(names)  # a resnet50 bundle can never half-load into resnet50_c3
    for block in C3.blocks:
        assert block.prefix == f"{block.id}_c3_block_"
        locals_ = [layer.local for layer in block.layers()]
        assert len(locals_) == len(set(locals_))
        for layer in block.layers():
            assert re.fullmatch(r"(cv[123]\.(conv|bn))|(m\.\d+\.(conv|bn)[123])", layer.local), layer.local
            # canonical name = prefix + local without the dots between 'm' and its index
            assert layer.name == block.prefix + layer.local.replace("m.", "m", 1).replace(".", "_"), layer.name
    assert C3.layer("3_c3_block_m3_conv2").local == "m.3.conv2"
    assert names[:2] == ["conv1", "bn_conv1"] and names[-1] == "fc1000"


def test_layer_order_is_cv1_units_cv2_cv3():
    block = C3.blocks[0]
    locals_ = [layer.local for layer in block.layers()]
    assert locals_[:2] == ["cv1.conv", "cv1.bn"]
    assert locals_[-4:] == ["cv2.conv", "cv2.bn", "cv3.conv", "cv3.bn"]
    assert locals_[2:8] == [f"m.0.{n}" for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]


@pytest.mark.parametrize("index", range(4))
def test_each_stage_is_c3_with_resnet_bottleneck_units(index):
    block = C3.blocks[index]
    stage, (f1, f2, c2), depth, stride = RESNET50_STAGES[index]
    assert (block.kind, block.stage, block.depth, block.strides) == ("c3_block", stage, depth, stride)
    c_ = c2 // 2
    assert block.filters == (f1, f2, c_, c2) and block.in_channels == (64 if index == 0 else c2 // 2)
    by_local = {layer.local: layer for layer in block.layers()}
    for cv, cin, cout in (("cv1", block.in_channels, c_), ("cv2", block.in_channels, c_), ("cv3", 2 * c_, c2)):
        conv, bn = by_local[f"{cv}.conv"], by_local[f"{cv}.bn"]
        assert (conv.kind, conv.in_channels, conv.out_channels, conv.kernel) == ("conv", cin, cout, 1)
        assert not conv.use_bias
        assert conv.weight_names == ("kernel",)
        assert (bn.kind, bn.out_channels) == ("bn", cout)
        # The stride sits on the two entry convs, as on the seed's conv_block's first 1x1 and shortcut.
        assert conv.stride == (stride if cv != "cv3" else 1)
    units = c3_unit_layers(block)
    assert len(units) == depth
    for unit in units:
        conv1, bn1, conv2, bn2, conv3, bn3 = unit
        assert [layer.kind for layer in unit] == ["conv", "bn"] * 3
        assert (conv1.in_channels, conv1.out_channels, conv1.kernel) == (c_, f1, 1)
        assert (conv2.in_channels, conv2.out_channels, conv2.kernel, conv2.padding) == (f1, f2, 3, "same")
        assert (conv3.in_channels, conv3.out_channels, conv3.kernel) == (f2, c_, 1)  # identity shortcut fits
        assert all(c.use_bias and c.stride == 1 for c in (conv1, conv2, conv3))
        assert (bn1.out_channels, bn2.out_channels, bn3.out_channels) == (f1, f2, c_)


def test_only_the_entry_convs_stride():
    strided = [layer.name for layer in C3.layers() if layer.kind == "conv" and layer.stride > 1]
    assert strided == ["conv1"] + [f"{s}_c3_block_{cv}_conv" for s in (3, 4, 5) for cv in ("cv1", "cv2")]


def test_bundles_fit_only_their_model():
    small = build_spec("resnet50_c3", classes=4, input_size=64, pooling="global")
    bundle = random_bundle(small, seed=3)
    bundle.check(small)
    assert "2_c3_block_cv1_conv/bias" not in bundle.arrays and "2_c3_block_m0_conv1/bias" in bundle.arrays
    assert bundle.arrays["5_c3_block_cv3_conv/kernel"].shape == (1, 1, 2048, 2048)
    with pytest.raises(UserError, match="'2_c3_block_cv1_conv' has no 'kernel'.*resnet50_c3"):
        random_bundle(build_spec("resnet50", classes=4, input_size=64, pooling="global")).check(small)
    with pytest.raises(UserError, match="'2a_conv_block_conv1' has no 'kernel'"):
        bundle.check(build_spec("resnet50", classes=4, input_size=64, pooling="global"))


def test_legacy_h5_is_refused_for_resnet50_c3(tmp_path):
    # keras-applications names exist only for ResNet-50's blocks: no silently empty .h5 for C3.
    small = build_spec("resnet50_c3", classes=4, input_size=64, pooling="global")
    with pytest.raises(UserError, match="ResNet-50 only"):
        write_legacy_h5(random_bundle(small), tmp_path / "c3.h5", small)
    assert not (tmp_path / "c3.h5").exists()


def test_build_spec_validates_resnet50_c3_like_resnet50():
    with pytest.raises(UserError, match="--pooling global"):
        build_spec("resnet50_c3", input_size=64)
    with pytest.raises(UserError, match="at least 32"):
        build_spec("resnet50_c3", input_size=16, pooling="global")
    with pytest.raises(UserError, match="resnet50_c3"):
        build_spec("resnet50_c4")
    assert list(MODELS)[:2] == ["resnet50", "resnet50_c3"]


def test_model_option_offers_resnet50_c3():
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    args = parser.parse_args(["--model", "resnet50_c3", "--input-size", "64", "--pooling", "global"])
    assert model_args(args) == {"model": "resnet50_c3", "classes": 1000, "input_size": 64, "pooling": "global"}
