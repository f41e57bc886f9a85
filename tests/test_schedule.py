"""The learning-rate schedule: its values, and that the shared loop sets them before every step,
continuing at the right step after a resume."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from bench import training as bt
from bench.schedule import learning_rate_at
from tests.test_train import NumpyTrainer, tiny  # noqa: F401  (tiny: the module-scoped manifest fixture)


def test_cosine_starts_at_the_rate_halves_midway_and_ends_above_zero():
    assert learning_rate_at("constant", 1e-3, 7, 10) == float(np.float32(1e-3))
    rates = [learning_rate_at("cosine", 1e-3, i, 116) for i in range(116)]
    assert rates[0] == float(np.float32(1e-3))
    assert rates[58] == float(np.float32(0.5e-3))  # cos(pi/2) = 0
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0
    assert rates[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 115 / 116)), rel=1e-6)
    assert all(r == float(np.float32(r)) for r in rates)  # the float32 value both optimizers hold
    with pytest.raises(ValueError, match="outside a run of 116 steps"):
        learning_rate_at("cosine", 1e-3, 116, 116)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        learning_rate_at("step", 1e-3, 0, 116)


class ScheduledTrainer(NumpyTrainer):
    """NumpyTrainer whose SGD step uses the rate the loop sets, and which records every rate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rates: list[float] = []
        self.rate = None

    def set_learning_rate(self, rate):
        self.rates.append(rate)
        self.rate = rate

    def train_step(self, idx):
        assert self.rate is not None, "the loop stepped before setting the learning rate"
        out = super().train_step(idx)
        self.rate = None  # each step must get its own rate
        return out


def _job(tiny, fw_dir: Path, schedule: str, resume: bool = False) -> dict:
    fw_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(bt.TrainConfig(classes=2, epochs=3, learning_rate=0.5, lr_schedule=schedule))
    return {"config": config, "manifest": str(tiny), "fw_dir": str(fw_dir), "resume": resume,
            "quiet": True, "progress_interval": 0}


def test_loop_sets_the_cosine_rate_before_every_step_and_resumes_at_the_right_step(tiny, tmp_path):
    trainer = ScheduledTrainer(tiny)
    bt.run_training(trainer, _job(tiny, tmp_path / "a", "cosine"))
    total = 3 * trainer.steps_per_epoch()
    assert trainer.rates == [learning_rate_at("cosine", 0.5, i, total) for i in range(total)]

    with pytest.raises(KeyboardInterrupt):
        bt.run_training(ScheduledTrainer(tiny, crash_at=(2, 3)), _job(tiny, tmp_path / "b", "cosine"))
    resumed = ScheduledTrainer(tiny)
    bt.run_training(resumed, _job(tiny, tmp_path / "b", "cosine", resume=True))
    steps = trainer.steps_per_epoch()
    assert resumed.rates == trainer.rates[steps:]  # epoch 2 restarts from its first step


def test_constant_schedule_never_touches_the_rate(tiny, tmp_path):
    trainer = NumpyTrainer(tiny)
    trainer.set_learning_rate = lambda rate: pytest.fail("constant schedule set a rate")
    out = bt.run_training(trainer, _job(tiny, tmp_path / "c", "constant"))
    assert out["status"] == "complete"
