"""tf_impl.data: the seed's pipeline reproduced exactly, the accurate decoder, the manifest order."""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf
from PIL import Image

from bench.dataset import PipelineOptions
from bench.orders import epoch_permutation, fixed_batches_order
from tests.bench_fixtures import format_zoo
from tf_impl import data as tfd

SIZE = 40


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return format_zoo(tmp_path_factory.mktemp("zoo"))


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def assert_same_batches(ours, theirs):
    assert len(ours) == len(theirs)
    for (x1, y1), (x2, y2) in zip(ours, theirs):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_seed_decoder_equals_keras_pipeline(zoo):
    """decoder="seed", order="native": exactly image_dataset_from_directory's numbers, every format,
    and the training set in the seed's order: Keras' dataset + .cache().shuffle(1000), two epochs."""
    root, _, manifest = zoo
    options = PipelineOptions(image_size=SIZE, batch_size=4, decoder="seed", seed=5)
    train, val = keras.utils.image_dataset_from_directory(
        str(root), validation_split=0.3, subset="both", seed=11, image_size=(SIZE, SIZE), batch_size=4, verbose=False)
    assert_same_batches(batches(tfd.make_dataset(manifest, "validation", options)), batches(val))
    seed_train = train.cache().shuffle(options.shuffle_buffer, seed=options.seed)
    ours = tfd.make_dataset(manifest, "training", options)
    for _ in range(2):
        assert_same_batches(batches(ours), batches(seed_train))


def test_accurate_decoder_matches_pil_and_differs_from_seed_on_jpeg(zoo):
    _, files, _ = zoo
    differs = 0
    for kind, path in files.items():
        data = tf.io.read_file(str(path))
        accurate = tfd.decode_image(data, "accurate").numpy()
        seed = tfd.decode_image(data, "seed").numpy()
        assert accurate.shape[-1] == 3 and accurate.dtype == np.uint8
        if path.read_bytes().startswith(b"\xff\xd8\xff"):
            with Image.open(path) as im:
                np.testing.assert_array_equal(accurate, np.asarray(im.convert("RGB")), err_msg=kind)
            differs += int(np.any(accurate != seed))
        else:  # decode_image either way
            np.testing.assert_array_equal(accurate, seed, err_msg=kind)
    assert differs >= 4  # the fast IDCT really is another decoder on colour JPEGs


def test_caffe_equals_keras_preprocess_input():
    from keras.applications.resnet50 import preprocess_input

    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    ours = tfd.preprocess(tf.constant(x), "caffe").numpy()
    np.testing.assert_array_equal(ours, np.asarray(preprocess_input(x.copy())))
    assert not np.array_equal(ours, x)
    np.testing.assert_array_equal(tfd.preprocess(tf.constant(x), "none").numpy(), x)


@pytest.mark.parametrize("order", ["manifest", "fixed-batches"])
def test_shared_orders_follow_bench_orders(zoo, order):
    _, _, manifest = zoo
    options = PipelineOptions(image_size=16, batch_size=3, order=order, seed=7)
    labels = manifest.labels("training")
    n = len(labels)
    ds = tfd.make_dataset(manifest, "training", options)
    expected = {"manifest": lambda e: epoch_permutation(7, n, e),
                "fixed-batches": lambda e: fixed_batches_order(7, n, 3, e)}[order]
    for epoch in range(3):  # each iteration is the next epoch
        got = np.concatenate([y for _, y in batches(ds)])
        np.testing.assert_array_equal(got, labels[expected(epoch)])
    pinned = tfd.make_dataset(manifest, "training", options, epoch=3)
    first, second = batches(pinned), batches(pinned)
    assert_same_batches(first, second)
    x_all, _ = tfd.load_images(manifest, "training", range(n), options)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in first]), x_all[expected(3)])


def test_load_images_is_the_pipeline_batch(zoo):
    _, _, manifest = zoo
    options = PipelineOptions(image_size=SIZE, batch_size=4, preprocessing="caffe")
    x, y = tfd.load_images(manifest, "validation", [2, 0], options)
    assert x.shape == (2, SIZE, SIZE, 3) and x.dtype == np.float32
    val = batches(tfd.make_dataset(manifest, "validation", options))
    all_x = np.concatenate([b[0] for b in val])
    np.testing.assert_array_equal(x, all_x[[2, 0]])
    np.testing.assert_array_equal(y, manifest.labels("validation")[[2, 0]])
