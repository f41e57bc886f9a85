"""Trainer.set_learning_rate reaches the traced TF step: after the step is traced at the
configured rate, rate 0 leaves the weights where they are and a rate moves them again."""

from __future__ import annotations

import keras
import tensorflow as tf

from bench.spec import build_spec
from tests.bench_fixtures import SCHEDULE_SPEC, check_learning_rate_takes_effect, schedule_batch, schedule_trainer_job
from tf_impl import model as tfm
from tf_impl import weights as tfw
from tf_impl.train import Trainer


def test_set_learning_rate_takes_effect_in_the_traced_step(tmp_path):
    spec = build_spec(*SCHEDULE_SPEC)

    def save_init(path):
        keras.utils.set_random_seed(3)
        tfw.to_bundle(tfm.build(spec), spec).save(path)

    trainer = Trainer(schedule_trainer_job(tmp_path, save_init))
    x, y = schedule_batch()
    check_learning_rate_takes_effect(trainer, (tf.constant(x), tf.constant(y.tolist())),
                                     lambda: [w.numpy() for w in trainer.model.trainable_weights])
