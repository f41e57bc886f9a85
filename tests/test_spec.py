"""bench.spec against the seed: counts, shapes and names, all read from the one spec."""

from __future__ import annotations

import pytest

from bench.errors import UserError
from bench.spec import build_spec

# The seed's calls, copied from ../shared/seed (stage, block, filters, kind).
SEED_CALLS = [
    (2, "a", (64, 64, 256), "conv_block"), (2, "b", (64, 64, 256), "identity_block"),
    (2, "c", (64, 64, 256), "identity_block"),
    (3, "a", (128, 128, 512), "conv_block"), (3, "b", (128, 128, 512), "identity_block"),
    (3, "c", (128, 128, 512), "identity_block"), (3, "d", (128, 128, 512), "identity_block"),
    (4, "a", (256, 256, 1024), "conv_block"), (4, "b", (256, 256, 1024), "identity_block"),
    (4, "c", (256, 256, 1024), "identity_block"), (4, "d", (256, 256, 1024), "identity_block"),
    (4, "e", (256, 256, 1024), "identity_block"), (4, "f", (256, 256, 1024), "identity_block"),
    (5, "a", (512, 512, 2048), "conv_block"), (5, "b", (512, 512, 2048), "identity_block"),
    (5, "c", (512, 512, 2048), "identity_block"),
]


def seed_weighted_names() -> list[str]:
    """The seed's weighted layer names, spelled the seed's way (not through bench.spec)."""
    names = ["conv1", "bn_conv1"]
    for stage, block, _, kind in SEED_CALLS:
        base = f"{stage}{block}_{kind}_"
        names += [base + n for n in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
        if kind == "conv_block":
            names += [f"{stage}{block}_conv_block_res_conv", f"{stage}{block}_conv_block_res_bn"]
    return names + ["fc1000"]


def test_parameter_counts_match_the_seed_summary():
    counts = build_spec().param_counts()
    assert counts == {"total": 25_636_712, "trainable": 25_583_592, "non_trainable": 53_120}


def test_blocks_follow_the_seed_calls():
    spec = build_spec()
    got = [(b.stage, b.id[1], b.filters, b.kind) for b in spec.blocks]
    assert got == SEED_CALLS
    strides = {b.id: b.strides for b in spec.blocks if b.kind == "conv_block"}
    assert strides == {"2a": 1, "3a": 2, "4a": 2, "5a": 2}


def test_layer_names_are_the_seeds():
    assert [layer.name for layer in build_spec().layers()] == seed_weighted_names()


def test_block_output_shapes_at_224():
    shapes = build_spec().shapes()
    assert shapes["conv1"] == (112, 112, 64)
    assert shapes["stem"] == (55, 55, 64)  # valid 3x3/2 pool: 55, not torchvision's 56
    assert [shapes[s + "c"][0] for s in "2345"] == [55, 28, 14, 7]
    assert shapes["5c"] == (7, 7, 2048) and shapes["pool"] == (2048,) and shapes["logits"] == (1000,)


def test_stride_sits_on_the_first_1x1_and_the_shortcut():
    spec = build_spec()
    layers = {layer.name: layer for layer in spec.layers()}
    assert layers["3a_conv_block_conv1"].stride == 2 and layers["3a_conv_block_conv1"].kernel == 1
    assert layers["3a_conv_block_conv2"].stride == 1 and layers["3a_conv_block_conv2"].padding == "same"
    assert layers["3a_conv_block_res_conv"].stride == 2
    assert all(layer.use_bias for layer in spec.layers() if layer.kind == "conv")


def test_flops_at_224():
    spec = build_spec()
    # Hand count of the stem: 112*112 outputs x 7*7*3 inputs x 64 filters x 2.
    assert spec.block_flops()["stem"] == 2 * 112 * 112 * 7 * 7 * 3 * 64
    # 2a: all convs at 55x55 (stride 1): 1x1 64->64, 3x3 64->64, 1x1 64->256, shortcut 64->256.
    macs_2a = 55 * 55 * (64 * 64 + 9 * 64 * 64 + 64 * 256 + 64 * 256)
    assert spec.block_flops()["2a"] == 2 * macs_2a
    assert spec.forward_flops() == sum(spec.block_flops().values())
    assert 7.5e9 < spec.forward_flops() < 7.8e9  # v1 is a little cheaper than v1.5's ~8.2 GFLOPs


def test_block_params_sum_to_total():
    spec = build_spec(classes=4)
    assert sum(spec.block_params().values()) == spec.param_counts()["total"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"input_size": 128}, "use --pooling global"),
    ({"input_size": 16, "pooling": "global"}, "too small"),
    ({"pooling": "max"}, "unknown pooling"),
    ({"model": "vgg16"}, "unknown model"),
    ({"classes": 0}, "positive integer"),
])
def test_bad_model_options_are_user_errors(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        build_spec(**kwargs)


def test_global_pooling_accepts_small_inputs():
    spec = build_spec(classes=4, input_size=64, pooling="global")
    assert spec.shapes()["5c"] == (2, 2, 2048)
