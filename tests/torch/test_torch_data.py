"""torch_impl.data: TF's decoding rules with PIL, loader layout, and the manifest order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.dataset import PipelineOptions
from bench.orders import epoch_permutation, fixed_batches_order
from tests.bench_fixtures import format_zoo
from torch_impl import data as td


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return format_zoo(tmp_path_factory.mktemp("zoo"))


def test_decode_follows_tf_where_pil_convert_differs(zoo):
    _, files, _ = zoo
    # 16-bit grayscale PNG: TF keeps the high byte; PIL's convert("RGB") would clip at 255.
    with Image.open(files["gray16_png"]) as im:
        raw = np.asarray(im).astype(np.uint32)
    got = td.decode_image(files["gray16_png"].read_bytes())
    np.testing.assert_array_equal(got, np.repeat((raw >> 8).astype(np.uint8)[..., None], 3, axis=2))
    # Transparent GIF: TF paints the transparent index black.
    with Image.open(files["transparent_gif"]) as im:
        index, palette_rgb = np.asarray(im), np.asarray(im.convert("RGB"))
    got = td.decode_image(files["transparent_gif"].read_bytes())
    assert np.any(index == 0) and np.all(got[index == 0] == 0) and np.any(palette_rgb[index == 0] != 0)
    np.testing.assert_array_equal(got[index != 0], palette_rgb[index != 0])
    # 8-bit palette BMP: TF reads the stored values as gray levels.
    with Image.open(files["palette_bmp"]) as im:
        index = np.asarray(im)
    np.testing.assert_array_equal(td.decode_image(files["palette_bmp"].read_bytes()),
                                  np.repeat(index[..., None], 3, axis=2))
    # Everything else: PIL's RGB conversion, three channels, uint8.
    for kind, path in files.items():
        rgb = td.decode_image(path.read_bytes())
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, kind


def test_loader_layout_and_caffe(zoo):
    _, _, manifest = zoo
    options = PipelineOptions(image_size=24, batch_size=4, preprocessing="caffe", workers=0)
    x, y = next(iter(td.make_loader(manifest, "validation", options)))
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw, _ = td.load_images(manifest, "validation", range(4), options.replace(preprocessing="none"))
    expected = raw[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), expected)
    np.testing.assert_array_equal(y.numpy(), manifest.labels("validation")[:4])


@pytest.mark.parametrize("order", ["manifest", "fixed-batches"])
def test_shared_orders_follow_bench_orders(zoo, order):
    _, _, manifest = zoo
    options = PipelineOptions(image_size=8, batch_size=3, order=order, seed=7, workers=0)
    labels = manifest.labels("training")
    n = len(labels)
    loader = td.make_loader(manifest, "training", options)
    expected = {"manifest": lambda e: epoch_permutation(7, n, e),
                "fixed-batches": lambda e: fixed_batches_order(7, n, 3, e)}[order]
    for epoch in range(3):  # each iteration is the next epoch
        got = torch.cat([y for _, y in loader]).numpy()
        np.testing.assert_array_equal(got, labels[expected(epoch)])
    pinned = td.make_loader(manifest, "training", options, epoch=3)
    a = torch.cat([x for x, _ in pinned])
    b = torch.cat([x for x, _ in pinned])
    assert torch.equal(a, b)
    x_all, _ = td.load_images(manifest, "training", range(n), options)
    np.testing.assert_array_equal(a.permute(0, 2, 3, 1).numpy(), x_all[expected(3)])


def test_native_order_is_seeded_and_reshuffles(zoo):
    _, _, manifest = zoo
    options = PipelineOptions(image_size=8, batch_size=50, workers=0, seed=3)
    order = lambda loader: torch.cat([x.flatten(1).sum(1) for x, _ in loader]).numpy()  # noqa: E731
    first = td.make_loader(manifest, "training", options)
    e0, e1 = order(first), order(first)
    assert not np.array_equal(e0, e1)  # a new permutation each epoch
    np.testing.assert_array_equal(order(td.make_loader(manifest, "training", options)), e0)  # same seed


@pytest.mark.parametrize("order", ["native", "manifest", "fixed-batches"])
def test_run_loader_gives_each_epoch_the_batches_of_a_fresh_loader(zoo, order):
    """The trainer keeps one loader (persistent workers) and sets its epoch; a resumed run makes a
    fresh loader per epoch: both must see the same images in the same batches."""
    _, _, manifest = zoo
    options = PipelineOptions(image_size=8, batch_size=3, order=order, seed=11)
    index = lambda x: x.flatten(1).sum(1)  # noqa: E731  (an image's fingerprint)
    kept = td.run_loader(manifest, options, workers=2)
    seen = []
    for epoch in (0, 1, 2, 1):  # back to an epoch, as a resume's fresh trainer would ask
        kept.sampler.set_epoch(epoch)
        got = [index(x) for x, _ in kept]
        fresh = [index(x) for x, _ in td.make_loader(manifest, "training", options, epoch=epoch, workers=0)]
        assert len(got) == len(fresh)
        assert all(torch.equal(a, b) for a, b in zip(got, fresh)), f"{order}: epoch {epoch} differs"
        seen.append(torch.cat(got))
    assert not torch.equal(seen[0], seen[1])  # the epochs really differ (a pinned order would pass the rest)
    assert torch.equal(seen[1], seen[3])


def test_worker_processes_give_the_same_batches(zoo):
    _, _, manifest = zoo
    options = PipelineOptions(image_size=20, batch_size=4)
    single = [x for x, _ in td.make_loader(manifest, "validation", options, workers=0)]
    multi = [x for x, _ in td.make_loader(manifest, "validation", options, workers=2)]
    assert len(single) == len(multi)
    assert all(torch.equal(a, b) for a, b in zip(single, multi))
