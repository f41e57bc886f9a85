"""The step ``twinbench train`` runs on the TF side (Keras' ``train_step`` in our tf.function) is the
step the parity trajectory verifies (``compile`` + ``train_on_batch``, the seed's ``fit`` path):
from one bundle, on the same batches, both give the same losses and weights, bit for bit."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from bench import parity
from bench.manifest import build_manifest
from bench.spec import build_spec
from bench.train import TrainConfig
from tests.data_fixtures import make_class_folder
from tf_impl import model as tfm
from tf_impl import probes
from tf_impl import weights as tfw
from tf_impl.train import Trainer


def test_training_loop_step_is_the_parity_trajectory_step(tmp_path):
    spec = build_spec("resnet50", 2, 32, "global")
    keras.utils.set_random_seed(3)
    bundle = tfw.to_bundle(tfm.build(spec), spec)
    bundle_path = tmp_path / "init.npz"
    bundle.save(bundle_path)
    manifest = build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5, seed=1)
    manifest.save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=32, pooling="global", batch_size=4, learning_rate=1e-2)

    g = np.random.default_rng(0)
    xs = (g.standard_normal((3, 4, 32, 32, 3)) * 50).astype(np.float32)
    ys = g.integers(0, 2, (3, 4)).astype(np.int32)

    trainer = Trainer({"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json"),
                       "init": str(bundle_path)})
    loop_losses = [trainer.train_step((tf.constant(x), tf.constant(y)))[0] for x, y in zip(xs, ys)]
    after = tfw.to_bundle(trainer.model, spec)

    twin = probes.Twin(spec, bundle, "float32")
    traj = probes.trajectory(twin, {"traj_x": xs, "traj_y": ys}, {"optimizer": config.optimizer_config()},
                             quiet=True)

    np.testing.assert_array_equal(traj["traj/loss"], np.asarray(loop_losses, np.float32))
    assert len(set(loop_losses)) == 3  # the weights moved: three different losses
    index = parity.trajectory_sample(spec)
    sampled = np.concatenate([after.arrays[k].ravel()[idx] for k, idx in index.items()])
    np.testing.assert_array_equal(traj["traj/sample"][-1], sampled)
