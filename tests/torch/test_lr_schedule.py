"""Trainer.set_learning_rate reaches the torch optimizer's next step: at rate 0 the weights stay,
at the configured rate they move."""

from __future__ import annotations

import torch

from bench.spec import build_spec
from tests.bench_fixtures import SCHEDULE_SPEC, check_learning_rate_takes_effect, schedule_batch, schedule_trainer_job
from torch_impl import model as tm
from torch_impl import probes
from torch_impl import weights as tw
from torch_impl.train import Trainer


def test_set_learning_rate_takes_effect_on_the_next_step(tmp_path):
    spec = build_spec(*SCHEDULE_SPEC)

    def save_init(path):
        torch.manual_seed(3)
        tw.to_bundle(tm.build(spec), spec).save(path)

    trainer = Trainer(schedule_trainer_job(tmp_path, save_init))
    x, y = schedule_batch()
    check_learning_rate_takes_effect(trainer, (probes.to_torch(x, torch.float32), torch.tensor(y.tolist())),
                                     lambda: [p.detach().cpu().numpy().copy() for p in trainer.model.parameters()])
