"""Trainer.set_learning_rate reaches the traced TF step: after the step is traced at the
configured rate, rate 0 leaves the weights where they are and a rate moves them again."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from bench.dataset import build_manifest
from bench.spec import build_spec
from bench.training import TrainConfig
from tests.data_fixtures import make_class_folder
from tf_impl import model as tfm
from tf_impl import weights as tfw
from tf_impl.train import Trainer


def test_set_learning_rate_takes_effect_in_the_traced_step(tmp_path):
    spec = build_spec("resnet50", 2, 32, "global")
    keras.utils.set_random_seed(3)
    tfw.to_bundle(tfm.build(spec), spec).save(tmp_path / "init.npz")
    build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5,
                   seed=1).save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=32, pooling="global", batch_size=4, lr_schedule="cosine")
    trainer = Trainer({"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json"),
                       "init": str(tmp_path / "init.npz")})
    g = np.random.default_rng(0)
    batch = (tf.constant((g.standard_normal((4, 32, 32, 3)) * 50).astype(np.float32)), tf.constant([0, 1, 0, 1]))

    def weights():
        return [w.numpy() for w in trainer.model.trainable_weights]

    trainer.train_step(batch)  # traces the step at the configured rate
    trainer.set_learning_rate(0.0)
    before = weights()
    trainer.train_step(batch)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights()))
    trainer.set_learning_rate(1e-3)
    trainer.train_step(batch)
    assert sum(float(np.abs(a - b).max()) > 0 for a, b in zip(before, weights())) > 100
