"""Evaluation "swa": the loop validates the mean of the weights snapshot in the averaging window,
puts the current weights back for training, and a resumed run averages on from the saved sums."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bench import training as bt
from bench.errors import UserError
from tests.test_train import NumpyTrainer, tiny  # noqa: F401  (tiny: the module-scoped manifest fixture)


class AveragingTrainer(NumpyTrainer):
    """NumpyTrainer with get/set_weights; it logs (epoch, step, weights) after every step. Its
    get_weights hands out the live array, as torch on the CPU does: the loop must copy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after: list[tuple[int, int, np.ndarray]] = []
        self.evaluated: list[np.ndarray] = []

    def train_step(self, idx):
        out = super().train_step(idx)
        self.after.append((self.epoch, self.step, self.w.copy()))
        return out

    def evaluate(self):
        self.evaluated.append(self.w.copy())
        return super().evaluate()

    def get_weights(self):
        return {"dense/kernel": self.w}

    def set_weights(self, arrays):
        self.w[...] = arrays["dense/kernel"]


def _job(tiny, fw_dir: Path, resume: bool = False, **config) -> dict:
    fw_dir.mkdir(parents=True, exist_ok=True)
    settings = {"classes": 2, "epochs": 4, "evaluation": "swa", "average_from": 3, "average_every": 2, **config}
    return {"config": dataclasses.asdict(bt.TrainConfig(**settings)), "manifest": str(tiny), "fw_dir": str(fw_dir),
            "resume": resume, "quiet": True, "progress_interval": 0}


def test_swa_validates_the_window_mean_and_trains_on_from_the_current_weights(tiny, tmp_path):
    trainer = AveragingTrainer(tiny)
    out = bt.run_training(trainer, _job(tiny, tmp_path / "fw"))
    steps = trainer.steps_per_epoch()
    assert steps >= 3  # the window then holds every 2nd step and each epoch's last
    snapshots = [w for e, s, w in trainer.after if e >= 3 and (s % 2 == 0 or s == steps)]
    per_epoch = len(snapshots) // 2
    assert [e["averaged_snapshots"] for e in out["history"]] == [0, 0, per_epoch, 2 * per_epoch]
    # Epochs 1-2 validate the current weights; epochs 3-4 the mean of the window so far.
    assert np.array_equal(trainer.evaluated[1], trainer.after[2 * steps - 1][2])
    assert np.allclose(trainer.evaluated[2], np.mean(snapshots[:per_epoch], axis=0), rtol=0, atol=1e-12)
    mean = np.mean(snapshots, axis=0)
    assert np.allclose(trainer.evaluated[3], mean, rtol=0, atol=1e-12)
    assert not np.allclose(mean, trainer.after[-1][2])  # averaging changed what was validated
    assert np.array_equal(trainer.w, trainer.after[-1][2])  # ... and training goes on from its own weights
    _, probs = NumpyTrainer._loss(trainer, trainer.features["validation"], trainer.labels["validation"])
    with np.load(tmp_path / "fw" / "predictions.npz") as saved:
        assert not np.array_equal(saved["probabilities"], probs.astype(np.float32))
    w_final = trainer.w.copy()
    trainer.w[...] = mean
    _, probs = NumpyTrainer._loss(trainer, trainer.features["validation"], trainer.labels["validation"])
    with np.load(tmp_path / "fw" / "predictions.npz") as saved:
        assert np.allclose(saved["probabilities"], probs, atol=1e-6)
    assert out["final"]["val_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == trainer.labels["validation"])))
    assert (tmp_path / "fw" / "ckpt-epoch-004.avg.npz").is_file()
    assert not (tmp_path / "fw" / "ckpt-epoch-003.avg.npz").exists()  # pruned with its checkpoint
    assert not np.array_equal(w_final, mean)


def test_swa_resume_averages_on_from_the_saved_sums(tiny, tmp_path):
    straight = AveragingTrainer(tiny)
    bt.run_training(straight, _job(tiny, tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        bt.run_training(AveragingTrainer(tiny, crash_at=(4, 2)), _job(tiny, tmp_path / "b"))
    resumed = AveragingTrainer(tiny)
    out = bt.run_training(resumed, _job(tiny, tmp_path / "b", resume=True))
    assert out["history"][-1]["averaged_snapshots"] == 2 * (len([s for e, s, _ in straight.after if e == 3 and (s % 2 == 0 or s == straight.steps_per_epoch())]))
    assert np.array_equal(resumed.evaluated[-1], straight.evaluated[-1])  # the same mean, bit for bit
    with np.load(tmp_path / "a" / "predictions.npz") as a, np.load(tmp_path / "b" / "predictions.npz") as b:
        assert np.array_equal(a["probabilities"], b["probabilities"])


def test_swa_resume_without_the_saved_sums_says_what_to_do(tiny, tmp_path):
    bt.run_training(AveragingTrainer(tiny), _job(tiny, tmp_path / "c", epochs=3))
    (tmp_path / "c" / "ckpt-epoch-003.avg.npz").unlink()
    with pytest.raises(UserError, match=r"ckpt-epoch-003\.avg\.npz: missing: .*remove .* to train this framework again"):
        bt.run_training(AveragingTrainer(tiny), _job(tiny, tmp_path / "c", epochs=4, resume=True))


def test_average_from_after_the_last_epoch_is_refused():
    with pytest.raises(UserError, match="average-from 9 is after the last epoch"):
        bt.validate_config(bt.TrainConfig(classes=4, epochs=8, average_from=9))
    with pytest.raises(UserError, match="average-every must be a positive integer"):
        bt.validate_config(bt.TrainConfig(classes=4, average_every=0))
    bt.validate_config(bt.TrainConfig(classes=4, epochs=8, evaluation="swa", average_from=8))


def test_reports_name_the_averaging_window():
    from bench.profiles import QuickProfile, evaluation_text

    assert evaluation_text(dataclasses.asdict(QuickProfile())) == (
        "swa (weights averaged over epochs 3-4, every 5 steps; precise BN)")
    assert evaluation_text({"evaluation": "swa", "epochs": 8, "average_from": 8, "average_every": 2}) == (
        "swa (weights averaged over epoch 8, every 2 steps; precise BN)")
    assert evaluation_text({"evaluation": "precise-bn", "epochs": 4}) == "precise-bn"
    assert evaluation_text({}) == "moving"  # records from before the field
