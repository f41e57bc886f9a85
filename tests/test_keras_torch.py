"""The keras-torch arm where it needs no TensorFlow: a run that trains no TF side draws the Keras
initialisers in the keras-torch worker (a GPU machine here has PyTorch and no TensorFlow)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench import trainrun
from bench.profiles import TrainConfig
from bench.spec import spec_from_args
from bench.weights import WeightBundle


def _args() -> argparse.Namespace:
    return argparse.Namespace(tf_python=sys.executable, torch_python=sys.executable, threads=1, quiet=True)


def test_keras_initialisers_come_from_the_keras_torch_worker_without_tf(tmp_path):
    config = TrainConfig(classes=2, input_size=32, pooling="global", seed=5, threads=1)
    spec = spec_from_args(config.spec_args())
    no_tf = tmp_path / "no-tf"
    no_tf.mkdir()
    init = trainrun.prepare_init(config, no_tf, _args(), ("torch", "keras-torch"))
    assert init["drawn_by"] == "keras-torch" and init["kind"] == "keras"
    bundle = WeightBundle.load(no_tf / init["path"])
    bundle.check(spec)
    # Keras' initialisers, not zeros or a constant: He-normal kernels with unit BN scales.
    kernel = bundle.arrays["conv1/kernel"]
    assert kernel.std() > 0 and np.all(bundle.arrays["bn_conv1/gamma"] == 1)
    # With a TF side the bundle stays TF's (as every run before the arm existed).
    assert trainrun.keras_initialiser_worker(("tf", "keras-torch")) == "tf"
    assert trainrun.keras_initialiser_worker(("tf", "torch")) == "tf"
    assert trainrun.keras_initialiser_worker(("keras-torch",)) == "keras-torch"
