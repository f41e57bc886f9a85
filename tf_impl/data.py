"""tf.data input pipeline that reads only the manifest. Mirror: ``torch_impl/data.py``.

Per image as Keras' ``image_dataset_from_directory``; the ``accurate`` decoder uses the integer
IDCT (bit-identical to PIL on the torch side); ``PipelineOptions.order`` ``native`` is the seed's
shuffling and caching, ``manifest`` and ``fixed-batches`` follow ``bench.orders.epoch_order``.
Details: docs/records.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from bench.dataset import CAFFE_MEAN_BGR, SPLITS, Manifest, PipelineOptions, load_manifest
from bench.orders import epoch_order
from bench.pipeline_timing import alternate_feeds

AUTOTUNE = tf.data.AUTOTUNE


# ---- one image -------------------------------------------------------------------------------------
def decode_image(data: tf.Tensor, decoder: str) -> tf.Tensor:
    """Encoded bytes -> uint8 (H, W, 3), as ``tf.io.decode_image(channels=3, expand_animations=False)``."""
    if decoder == "seed":
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    else:
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """Keras' resize: ``tf.image.resize(method="bilinear")`` (antialias=False) -> float32."""
    return tf.image.resize(image, (size, size), method="bilinear")


def preprocess(x: tf.Tensor, mode: str) -> tf.Tensor:
    """``none``: raw 0..255 (the seed). ``caffe``: Keras ResNet50 ``preprocess_input``: RGB -> BGR,
    then adds minus the ImageNet BGR means, as ``imagenet_utils._preprocess_tensor_input`` does."""
    if mode == "none":
        return x
    return x[..., ::-1] + tf.constant([-m for m in CAFFE_MEAN_BGR], dtype=x.dtype)


def load_image(path: tf.Tensor, options: PipelineOptions) -> tf.Tensor:
    """File path -> float32 (size, size, 3), the pipeline's per-image function."""
    image = resize_image(decode_image(tf.io.read_file(path), options.decoder), options.image_size)
    image.set_shape((options.image_size, options.image_size, 3))
    return preprocess(image, options.preprocessing)


# ---- datasets --------------------------------------------------------------------------------------
def _parallel(options: PipelineOptions) -> int:
    return AUTOTUNE if options.workers is None else max(1, options.workers)


def _decode_pairs(ds: tf.data.Dataset, options: PipelineOptions) -> tf.data.Dataset:
    return ds.map(lambda p, y: (load_image(p, options), y), num_parallel_calls=_parallel(options))


def _split_tensors(manifest: Manifest, split: str) -> tuple[list[str], np.ndarray]:
    # Keras' labels are int32 (dataset_utils.index_directory).
    return [str(p) for p in manifest.paths(split)], manifest.labels(split).astype(np.int32)


def sequential_dataset(manifest: Manifest, split: str, options: PipelineOptions,
                       indices: Sequence[int] | None = None) -> tf.data.Dataset:
    """The split (or ``indices`` of it) in manifest order, batched; nothing cached or shuffled."""
    paths, labels = _split_tensors(manifest, split)
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64)
        paths, labels = [paths[i] for i in idx], labels[idx]
    ds = _decode_pairs(tf.data.Dataset.from_tensor_slices((paths, labels)), options)
    return ds.batch(options.batch_size)


def _epoch_indices(options: PipelineOptions, n: int, epoch: int | None) -> tf.data.Dataset:
    """Indices of one epoch's shared order (``bench.orders.epoch_order``). ``epoch=None``: the
    k-th iteration of the dataset (Keras' ``fit`` iterates it once per epoch) follows epoch k,
    counting from 0."""
    state = {"next": 0 if epoch is None else int(epoch)}

    def generate():
        e = state["next"]
        if epoch is None:
            state["next"] += 1
        yield from epoch_order(options, n, e).tolist()

    return tf.data.Dataset.from_generator(generate, output_signature=tf.TensorSpec((), tf.int64))


def make_dataset(manifest: Manifest, split: str, options: PipelineOptions, *,
                 epoch: int | None = None) -> tf.data.Dataset:
    """Batches of (x: float32 NHWC, y: int32) for ``split`` of ``manifest`` (see module docstring).

    ``epoch`` matters for ``order="manifest"`` and ``"fixed-batches"`` only: that epoch's order on
    every iteration; None: iteration k follows epoch k. The native order reshuffles per iteration.
    """
    split = manifest.split_name(split)
    if split != "training":
        ds = sequential_dataset(manifest, split, options)
        if options.order == "native":
            ds = ds.cache()  # the seed: val_ds.cache().prefetch(AUTOTUNE)
        return ds.prefetch(AUTOTUNE)
    paths, labels = _split_tensors(manifest, split)
    if options.order == "native":
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        # image_dataset_from_directory: dataset.shuffle(buffer_size=batch_size * 8, seed=seed).
        ds = ds.shuffle(options.batch_size * 8, seed=manifest.seed)
        ds = _decode_pairs(ds, options).batch(options.batch_size)
        # The seed: train_ds.cache().shuffle(1000).prefetch(buffer_size=AUTOTUNE).
        ds = ds.cache().shuffle(options.shuffle_buffer, seed=options.seed)
        return ds.prefetch(AUTOTUNE)
    paths_t, labels_t = tf.constant(paths), tf.constant(labels)
    ds = _epoch_indices(options, len(paths), epoch)  # the run's seed: repeats differ in order too
    ds = ds.map(lambda i: (load_image(tf.gather(paths_t, i), options), tf.gather(labels_t, i)),
                num_parallel_calls=_parallel(options))
    return ds.batch(options.batch_size).prefetch(AUTOTUNE)


def load_images(manifest: Manifest, split: str, indices: Sequence[int],
                options: PipelineOptions) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's images ``indices`` of ``split`` as (float32 NHWC, int64 labels): the exact
    batch the parity suite feeds both models."""
    xs, ys = [], []
    for x, y in sequential_dataset(manifest, manifest.split_name(split), options, indices):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        return np.zeros((0, options.image_size, options.image_size, 3), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


# ---- worker tasks ----------------------------------------------------------------------------------
def data_check(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Decode every image of every split with each decoder in ``args['decoders']``; write them to
    ``job_dir/tf-<decoder>-<split>.npy`` (float32 NHWC) for the torch worker to compare against."""
    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")
    base = PipelineOptions.from_dict(args["pipeline"])
    quiet = bool(args.get("quiet"))
    result: dict[str, Any] = {"images": {}}
    arrays: dict[str, np.ndarray] = {}
    for decoder in args["decoders"]:
        options = base.replace(decoder=decoder)
        for split in SPLITS:
            n, size = len(manifest.entries(split)), options.image_size
            out = Path(job_dir) / f"tf-{decoder}-{split}.npy"
            images = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, size, size, 3))
            labels = np.empty((n,), np.int64)
            done, start, last = 0, time.monotonic(), time.monotonic()
            for x, y in sequential_dataset(manifest, split, options):
                b = int(x.shape[0])
                images[done:done + b] = x.numpy()
                labels[done:done + b] = y.numpy()
                done += b
                if not quiet and time.monotonic() - last > 2:
                    last = time.monotonic()
                    print(f"  tf  decode ({decoder}) {split}: {done}/{n} images, "
                          f"{done / (last - start):.0f} img/s", file=sys.stderr, flush=True)
            images.flush()
            del images
            result["images"].setdefault(decoder, {})[split] = str(out)
            arrays[f"labels_{decoder}_{split}"] = labels
    return result, arrays


def pipeline_speed(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Training steps fed by the real pipeline vs the same kind of batches already in memory, in
    alternating blocks (``bench.pipeline_timing.alternate_feeds``)."""
    import keras

    from bench.spec import spec_from_args
    from tf_impl import model as tfm

    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")
    options = PipelineOptions.from_dict(args["pipeline"])
    steps, rounds, warmup = int(args.get("steps", 8)), int(args.get("rounds", 2)), int(args.get("warmup", 2))
    spec = spec_from_args(args)
    keras.utils.set_random_seed(0)
    model = tfm.build(spec)
    optimizer = keras.optimizers.Adam()  # the seed's compile(optimizer="adam")
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    memory = [(tf.identity(x), tf.identity(y)) for x, y in sequential_dataset(manifest, "training", options).take(steps)]
    for i in range(warmup):  # tracing and first-step allocations, excluded
        float(train_step(*memory[i % len(memory)]))
    real = iter(make_dataset(manifest, "training", options).repeat())
    float(train_step(*next(real)))  # starts the pipeline's threads and fills its prefetch buffer

    runs = alternate_feeds(lambda x, y: float(train_step(x, y)),  # float(): the step has finished
                           lambda k: next(real), memory, steps=steps, rounds=rounds, prefix="  tf  ",
                           quiet=bool(args.get("quiet")))
    return {"framework": "tf", "runs": runs, "steps": steps, "rounds": rounds, "warmup": warmup}, None
