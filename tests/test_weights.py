"""WeightBundle and the legacy ImageNet h5 mapping (framework-free)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bench.errors import UserError
from bench.spec import build_spec
from bench.weights import (
    WeightBundle, convert_file, legacy_layer_order, random_bundle, read_legacy_h5, weight_format,
    write_legacy_h5,
)

SPEC = build_spec()


@pytest.fixture(scope="module")
def bundle() -> WeightBundle:
    return random_bundle(SPEC, seed=3)


def test_random_bundle_fits_the_spec_with_nontrivial_bn(bundle):
    bundle.check(SPEC)
    assert {k: v.shape for k, v in bundle.arrays.items()} == SPEC.weight_shapes()
    var = bundle.arrays["bn_conv1/moving_variance"]
    mean = bundle.arrays["2a_conv_block_bn1/moving_mean"]
    assert var.min() > 0.4 and var.std() > 0.1 and np.abs(mean).max() > 0.05


def test_bundle_round_trip_is_bit_exact(tmp_path, bundle):
    bundle.save(tmp_path / "b.npz")
    back = WeightBundle.load(tmp_path / "b.npz")
    assert back.equal(bundle) and back.meta["model"] == "resnet50"
    changed = WeightBundle(dict(back.arrays), back.meta)
    changed.arrays["fc1000/bias"] = np.nextafter(changed.arrays["fc1000/bias"], np.float32(1))
    assert not changed.equal(bundle)


def test_check_names_the_first_offending_layer(bundle):
    wrong = WeightBundle(dict(bundle.arrays))
    wrong.arrays["3a_conv_block_conv2/kernel"] = np.zeros((1, 1, 128, 128), "float32")
    with pytest.raises(UserError, match="'3a_conv_block_conv2' kernel has shape"):
        wrong.check(SPEC)
    missing = WeightBundle({k: v for k, v in bundle.arrays.items() if not k.startswith("4c_")})
    with pytest.raises(UserError, match="4c_identity_block_conv1"):
        missing.check(SPEC)
    with pytest.raises(UserError, match="expects \\(2048, 4\\)"):
        bundle.check(build_spec(classes=4))


@pytest.mark.parametrize("style", ["keras1", "keras2"])
def test_legacy_h5_maps_by_name_not_order(tmp_path, bundle, style):
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    write_legacy_h5(bundle, path, SPEC, weight_style=style, extra_layers=["zero_padding2d_1"])
    # The file has keras-applications names and their interleaved order.
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names.index("res2a_branch1") == names.index("res2a_branch2c") + 1
        assert names.index("bn2a_branch2c") == names.index("res2a_branch1") + 1
        wn = [w.decode() for w in f["bn_conv1"].attrs["weight_names"]]
        assert wn[-1] == ("bn_conv1_running_std:0" if style == "keras1" else "bn_conv1/moving_variance:0")
    assert weight_format(path) == "legacy_h5"
    back = read_legacy_h5(path, SPEC)
    assert back.equal(bundle)
    # Stage 2's branch2c and branch1 kernels have the same shape: by order they would swap.
    a = back.arrays["2a_conv_block_conv3/kernel"]
    b = back.arrays["2a_conv_block_res_conv/kernel"]
    assert a.shape == b.shape == (1, 1, 64, 256)
    assert np.array_equal(a, bundle.arrays["2a_conv_block_conv3/kernel"]) and not np.array_equal(a, b)


def test_legacy_order_interleaves_branch1():
    order = legacy_layer_order(SPEC)
    assert order[:10] == ["conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a", "res2a_branch2b",
                          "bn2a_branch2b", "res2a_branch2c", "res2a_branch1", "bn2a_branch2c", "bn2a_branch1"]
    assert len(order) == len(SPEC.layers())


def test_legacy_h5_from_another_model_is_rejected(tmp_path, bundle):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1"])
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = np.array([b"block1_conv1/kernel:0"])
        g.create_dataset("block1_conv1/kernel:0", data=np.zeros((3, 3, 3, 64), "float32"))
    with pytest.raises(UserError, match="'block1_conv1' has weights but no place in resnet50"):
        read_legacy_h5(path, SPEC)


def test_truncated_h5_is_a_clear_error(tmp_path, bundle):
    path = tmp_path / "cut.h5"
    write_legacy_h5(bundle, path, SPEC)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="cut.h5"):
        read_legacy_h5(path, SPEC)


def test_legacy_h5_head_mismatch_can_be_skipped(tmp_path, bundle):
    path = tmp_path / "imagenet.h5"
    write_legacy_h5(bundle, path, SPEC)
    four = build_spec(classes=4)
    with pytest.raises(UserError, match="fc1000"):
        read_legacy_h5(path, four)
    backbone = read_legacy_h5(path, four, skip_head=True)
    assert "fc1000/kernel" not in backbone.arrays and "5c_identity_block_bn3/gamma" in backbone.arrays


def test_bundle_from_a_newer_version_is_refused(tmp_path, bundle):
    import json

    arrays = dict(bundle.arrays)
    arrays["__meta__"] = np.array(json.dumps({"format": "twinbench.weights", "version": 99}))
    np.savez(tmp_path / "new.npz", **arrays)
    with pytest.raises(UserError, match="newer"):
        WeightBundle.load(tmp_path / "new.npz")


def test_unknown_weight_format(tmp_path):
    with pytest.raises(UserError, match="unknown weight format"):
        weight_format(tmp_path / "w.bin")


def test_convert_writes_bundle_legacy_or_the_workers_own_format_and_refuses_the_rest(tmp_path, bundle):
    src = tmp_path / "src.npz"
    bundle.save(src)
    saved = []
    kwargs = {"load_file": lambda path, spec: WeightBundle.load(path), "own_format": "torch_pt",
              "save_own": lambda b, path, spec: saved.append((b.equal(bundle), path)), "worker": "torch"}
    counts = convert_file(str(src), str(tmp_path / "copy.npz"), SPEC, **kwargs)
    assert counts == {"layers": len(bundle.layer_names()), "tensors": len(bundle.arrays)}
    assert WeightBundle.load(tmp_path / "copy.npz").equal(bundle)
    convert_file(str(src), str(tmp_path / "legacy.h5"), SPEC, **kwargs)
    assert read_legacy_h5(tmp_path / "legacy.h5", SPEC).equal(bundle)
    convert_file(str(src), str(tmp_path / "w.pt"), SPEC, **kwargs)
    assert saved == [(True, str(tmp_path / "w.pt"))]
    with pytest.raises(UserError, match="the torch worker does not write keras_h5"):
        convert_file(str(src), str(tmp_path / "w.weights.h5"), SPEC, **kwargs)
