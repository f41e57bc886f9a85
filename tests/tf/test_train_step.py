"""The step ``twinbench train`` runs on the TF side (Keras' ``train_step`` in our tf.function) is the
step the parity trajectory verifies (``compile`` + ``train_on_batch``, the seed's ``fit`` path).

Two graphs of the same step are not bit-identical (measured: the second of three steps' losses differ
by 3e-5 relative; TF chooses kernels per traced graph, ours has a batch dimension of None), and a few
steps of a fresh ResNet on 4-image batches amplify that to O(1). So the test takes one step from one
bundle and compares the update each path makes: the same function moves the weights by the same
amount up to float32 rounding of the gradients; a different step (another loss, inference-mode batch
norm, another optimizer setting) moves them differently by far more than that."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from bench import parity_spec
from bench.dataset import build_manifest
from bench.spec import build_spec
from bench.training import TrainConfig
from tests.data_fixtures import make_class_folder
from tf_impl import model as tfm
from tf_impl import probes
from tf_impl import weights as tfw
from tf_impl.train import Trainer


def test_training_loop_step_is_the_parity_trajectory_step(tmp_path):
    spec = build_spec("resnet50", 2, 64, "global")
    keras.utils.set_random_seed(3)
    bundle = tfw.to_bundle(tfm.build(spec), spec)
    bundle_path = tmp_path / "init.npz"
    bundle.save(bundle_path)
    manifest = build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5, seed=1)
    manifest.save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=64, pooling="global", batch_size=8, optimizer="sgd", learning_rate=1e-2)

    g = np.random.default_rng(0)
    x = (g.standard_normal((8, 64, 64, 3)) * 50).astype(np.float32)
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1], np.int32)

    trainer = Trainer({"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json"),
                       "init": str(bundle_path)})
    loop_loss = trainer.train_step((tf.constant(x), tf.constant(y)))[0]
    after = tfw.to_bundle(trainer.model, spec)

    twin = probes.Twin(spec, bundle, "float32")
    traj = probes.trajectory(twin, {"traj_x": x[None], "traj_y": y[None]}, {"optimizer": config.optimizer_config()},
                             quiet=True)

    assert traj["traj/loss"][0] == np.float32(loop_loss)  # the same forward pass and loss, bit for bit
    index = parity_spec.trajectory_sample(spec)
    before = np.concatenate([bundle.arrays[k].ravel()[idx] for k, idx in index.items()])
    loop_update = np.concatenate([after.arrays[k].ravel()[idx] for k, idx in index.items()]) - before
    traj_update = traj["traj/sample"][0] - before
    assert np.linalg.norm(loop_update) > 1e-3 * np.linalg.norm(before)  # the step moved the weights
    rel = np.linalg.norm(loop_update - traj_update) / np.linalg.norm(traj_update)
    assert rel < 1e-4, f"the loop's update differs from the trajectory's by {rel:.2e} (normwise)"


def _running_estimate(model, batches):
    """The precise-BN estimate by its definition, eagerly: momentum (k-1)/k at the k-th batch,
    i.e. the running mean of the batch means and biased batch variances (the pre-2026-12-07 code)."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    for k, x in enumerate(batches, 1):
        for layer in layers:
            layer.momentum = (k - 1) / k
        model(x, training=True)
    for layer, momentum in zip(layers, saved):
        layer.momentum = momentum
    return [(keras.ops.convert_to_numpy(la.moving_mean), keras.ops.convert_to_numpy(la.moving_variance)) for la in layers]


def test_traced_precise_bn_estimate_is_the_running_mean_of_the_batch_moments(tmp_path):
    """The estimate's arithmetic (momentum 0 per batch, float64 sums) is the running mean of the
    batch moments up to float32 rounding; the trainer's traced step gives the eager step's
    statistics up to the rounding of another graph; momentum is left as it was and the traced
    step keeps estimating (a step traced at Keras' momentum 0.99, or frozen at its first call's
    values, would be off by O(1))."""
    from tf_impl.keras_tasks import estimate_bn

    size = 64  # stage 5 has 2x2 maps; at 32 px its 1x1 maps leave 4 values per channel a batch
    manifest = build_manifest(make_class_folder(tmp_path / "data", {"a": 12, "b": 12}), validation_split=0.25, seed=1)
    manifest.save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=size, pooling="global", batch_size=4, preprocessing="caffe",
                         evaluation="precise-bn", bn_estimate_images=12)
    trainer = Trainer({"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json")})
    layers = [layer for layer in trainer.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    read = lambda: [(keras.ops.convert_to_numpy(la.moving_mean).astype(np.float64),  # noqa: E731
                     keras.ops.convert_to_numpy(la.moving_variance).astype(np.float64)) for la in layers]
    initial = read()

    def worst(got, want):
        """max relative error of the variances, and of the means in units of the std."""
        return (max(float(np.max(np.abs(g[1] - w[1]) / (w[1] + 1e-6))) for g, w in zip(got, want)),
                max(float(np.max(np.abs(g[0] - w[0]) / (np.sqrt(w[1]) + 1e-3))) for g, w in zip(got, want)))

    def check(label):
        trainer.estimate_bn()
        traced = read()
        images, _ = trainer._bn
        assert len(images) == 3  # 12 images, batches of 4
        estimate_bn(trainer.model, images)  # the same arithmetic, eager
        eager = read()
        want = [(m.astype(np.float64), v.astype(np.float64)) for m, v in _running_estimate(trainer.model, images)]
        # float32 rounding of a 3-term running mean: ~1e-7 (measured 2e-7)
        assert max(worst(eager, want)) < 1e-5, f"{label}: the arithmetic is not the running mean"
        # another graph's kernels: measured 7e-5 here (2.7e-3 at 32 px, 1x1 maps)
        assert max(worst(traced, eager)) < 1e-3, f"{label}: the traced step is not the eager one"
        assert max(worst(traced, initial)) > 1e-1  # it estimated something
        assert all(layer.momentum == 0.99 for layer in layers)
        return traced

    first = check("first call")
    x = tf.constant(np.random.default_rng(0).normal(0, 50, (4, size, size, 3)).astype(np.float32))
    trainer.train_step((x, tf.constant([0, 1, 0, 1], tf.int32)))  # new weights: new statistics
    second = check("after a training step")
    assert max(worst(second, first)) > 1e-3
