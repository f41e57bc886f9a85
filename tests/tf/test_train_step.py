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
