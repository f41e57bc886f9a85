"""The step ``twinbench train`` runs on the torch side is the step the parity trajectory verifies:
from one bundle, on the same batches, both give the same losses and weights, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bench import parity_spec
from bench.dataset import build_manifest
from bench.spec import build_spec
from bench.training import TrainConfig
from tests.data_fixtures import make_class_folder
from torch_impl import model as tm
from torch_impl import probes
from torch_impl import weights as tw
from torch_impl.train import Trainer


def test_training_loop_step_is_the_parity_trajectory_step(tmp_path):
    spec = build_spec("resnet50", 2, 32, "global")
    torch.manual_seed(3)
    bundle = tw.to_bundle(tm.build(spec), spec)
    bundle_path = tmp_path / "init.npz"
    bundle.save(bundle_path)
    manifest = build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5, seed=1)
    manifest.save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=32, pooling="global", batch_size=4, learning_rate=1e-2)

    g = np.random.default_rng(0)
    xs = (g.standard_normal((3, 4, 32, 32, 3)) * 50).astype(np.float32)  # NHWC, as parity feeds both sides
    ys = g.integers(0, 2, (3, 4)).astype(np.int64)

    trainer = Trainer({"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json"),
                       "init": str(bundle_path)})
    loop_losses = [trainer.train_step((probes.to_torch(x, torch.float32), torch.from_numpy(y)))[0]
                   for x, y in zip(xs, ys)]

    twin = probes.Twin(spec, bundle, "float32", tm.Alignment())
    traj = probes.trajectory(twin, {"traj_x": xs, "traj_y": ys}, {"optimizer": config.optimizer_config()},
                             quiet=True)

    np.testing.assert_array_equal(traj["traj/loss"], np.asarray(loop_losses, np.float32))
    assert len(set(loop_losses)) == 3  # the weights moved: three different losses
    after = tw.to_bundle(trainer.model, spec)
    index = parity_spec.trajectory_sample(spec)
    sampled = np.concatenate([after.arrays[k].ravel()[idx] for k, idx in index.items()])
    np.testing.assert_array_equal(traj["traj/sample"][-1], sampled)
