"""Trainer.set_learning_rate reaches the torch optimizer's next step: at rate 0 the weights stay,
at the configured rate they move."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bench.dataset import build_manifest
from bench.spec import build_spec
from bench.training import TrainConfig
from tests.data_fixtures import make_class_folder
from torch_impl import model as tm
from torch_impl import probes
from torch_impl import weights as tw
from torch_impl.train import Trainer


def test_set_learning_rate_takes_effect_on_the_next_step(tmp_path):
    spec = build_spec("resnet50", 2, 32, "global")
    torch.manual_seed(3)
    tw.to_bundle(tm.build(spec), spec).save(tmp_path / "init.npz")
    build_manifest(make_class_folder(tmp_path / "data", {"a": 3, "b": 3}), validation_split=0.5,
                   seed=1).save(tmp_path / "manifest.json")
    config = TrainConfig(classes=2, input_size=32, pooling="global", batch_size=4, lr_schedule="cosine")
    trainer = Trainer({"config": dataclasses.asdict(config), "manifest": str(tmp_path / "manifest.json"),
                       "init": str(tmp_path / "init.npz")})
    g = np.random.default_rng(0)
    batch = (probes.to_torch((g.standard_normal((4, 32, 32, 3)) * 50).astype(np.float32), torch.float32),
             torch.tensor([0, 1, 0, 1]))

    def weights():
        return [p.detach().clone() for p in trainer.model.parameters()]

    trainer.train_step(batch)  # Adam's first step at the configured rate
    trainer.set_learning_rate(0.0)
    before = weights()
    trainer.train_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, weights()))
    trainer.set_learning_rate(1e-3)
    trainer.train_step(batch)
    assert sum(float((a - b).abs().max()) > 0 for a, b in zip(before, weights())) > 100
