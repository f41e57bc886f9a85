"""``twinbench train``: profiles and overrides, the shared loop (NaN stop, checkpoints, resume),
the run record, and both real workers end to end on a tiny manifest (2 classes x 12 JPEGs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench import results
from bench import trainrun
from bench import profiles, training
from bench.cli import build_parser, main
from bench.errors import UserError

REPO = Path(__file__).resolve().parent.parent
TINY = ["--profile", "quick", "--input-size", "32", "--batch-size", "4", "--init", "random"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A manifest of 2 classes x 12 JPEGs (48 px): 20 training, 4 validation images."""
    from bench.dataset import build_manifest

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["circle", "square"]):
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for i in range(12):
            image = Image.fromarray(rng.integers(0, 60, (48, 48, 3), dtype=np.uint8))
            x, y = (int(v) for v in rng.integers(4, 20, 2))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if label == 0 else draw.rectangle)([x, y, x + 22, y + 22], fill=(220, 200, 40))
            image.save(folder / f"{i:02d}.jpg", quality=90)
    manifest = build_manifest(root / "data")
    manifest.save(root / "manifest.json")
    return root / "manifest.json"


def cli(*argv: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kwargs)


# ---- config --------------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_profiles_and_overrides_resolve_with_their_sources():
    config, sources = trainrun.resolve_config(parse())
    seed_values = (config.input_size, config.batch_size, config.epochs, config.classes, config.pooling)
    assert seed_values == (224, 8, 50, 1000, "avg7")
    assert (config.learning_rate, config.beta_1, config.beta_2, config.epsilon) == (1e-3, 0.9, 0.999, 1e-7)
    assert config.preprocessing == "none" and config.init == "keras"
    config, sources = trainrun.resolve_config(parse("--profile", "quick", "--epochs", "7", "--lr", "0.01"))
    quick = profiles.QuickProfile()
    assert (config.input_size, config.pooling, config.classes, config.epochs) == (quick.input_size, "global", "auto", 7)
    assert config.learning_rate == 0.01 and config.batch_size == quick.batch_size
    assert sources["epochs"] == "command line" and sources["input_size"] == "profile quick"


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "2", "--devices", "4"], "smaller than --devices 4"),
    (["--input-size", "100"], "AveragePooling2D(7) needs 7x7"),
    (["--classes", "1"], "smaller than the manifest's 2 classes"),
    (["--weights", "/nonexistent/w.h5"], "no such file"),
])
def test_bad_settings_fail_before_any_work(tiny, tmp_path, capsys, argv, message):
    code = main(["train", "--manifest", str(tiny), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no run directory for a refused run


def test_resume_refuses_changed_settings_and_unknown_directories(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a twinbench training run" in capsys.readouterr().err
    config = dataclasses.asdict(training.TrainConfig(classes=2))
    (tmp_path / trainrun.CONFIG_NAME).write_text(json.dumps({"config": config, "sources": {}, "frameworks": ["torch"]}))
    assert main(["train", "--resume", str(tmp_path), "--batch-size", "16"]) == 2
    assert "--batch-size cannot change on --resume" in capsys.readouterr().err


def test_run_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
    (tmp_path / trainrun.LOCK_NAME).write_text(f"{os.getppid()}\n")  # alive: the process that started pytest
    with pytest.raises(UserError, match=f"in use by twinbench process {os.getppid()}"):
        with trainrun.RunLock(tmp_path):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / trainrun.LOCK_NAME).write_text(dead.stdout)
    with trainrun.RunLock(tmp_path):
        assert (tmp_path / trainrun.LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / trainrun.LOCK_NAME).exists()


def test_evaluation_report_counts_and_the_1000_way_head():
    probs = np.zeros((5, 1000), np.float32)
    for i, cls in enumerate([0, 1, 1, 0, 999]):
        probs[i, cls] = 0.9
    labels = np.array([0, 1, 0, 0, 1])
    report = training.evaluation_report(probs, labels, ["a", "b"], [f"p{i}" for i in range(5)], classes=1000)
    # Rows: true a, b; columns: predicted a, b, and "another of the 1000 classes".
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1]]
    assert report["per_class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 0.5}
    assert report["predictions"]["predicted"] == [0, 1, 1, 0, 999]
    assert report["predictions"]["confidence"] == [pytest.approx(0.9)] * 5


def test_progress_lines_like_keras_fit(capsys):
    progress = training.Progress("tf", quiet=False, interval=0.0)
    progress.epoch_start(1, 3)
    progress.step(2, 4, [9.0, 1.0], 0.5, 0.25)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[tf] Epoch 1/3"
    # ETA from the median step after the first (which carries tracing): 2 steps x 1 s.
    assert err[1].startswith("[tf] 2/4 [") and "ETA: 2s - loss: 0.5000 - accuracy: 0.2500" in err[1]
    quiet = training.Progress("tf", quiet=True, interval=0.0)
    quiet.epoch_start(1, 3)
    quiet.step(1, 4, [1.0], 0.5, 0.25)
    assert capsys.readouterr().err == ""


# ---- the shared loop with a numpy trainer --------------------------------------------------------
class NumpyTrainer:
    """A framework-free Trainer for run_training: a linear softmax model trained by SGD, whose
    steps, checkpoints and evaluation are real, so the loop's bookkeeping can be checked exactly.
    ``nan_at`` = (epoch, step) poisons that step's loss; ``crash_at`` raises there (a killed worker)."""

    framework = "torch"
    is_main = True

    def __init__(self, manifest_path: Path, nan_at=None, crash_at=None):
        from bench.dataset import load_manifest

        manifest = load_manifest(manifest_path, verify="none")
        self.n_train = len(manifest.entries("training"))
        rng = np.random.default_rng(0)
        self.features = {s: rng.normal(size=(len(manifest.entries(s)), 3)) for s in ("training", "validation")}
        self.labels = {s: manifest.labels(s) for s in ("training", "validation")}
        self.w = np.zeros((3, 2))
        self.nan_at, self.crash_at = nan_at, crash_at
        self.epoch = self.step = 0
        self.saved: list[str] = []

    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / 4)

    def train_batches(self, epoch):
        self.epoch = epoch + 1
        order = np.random.default_rng(epoch).permutation(self.n_train)
        for start in range(0, self.n_train, 4):
            yield order[start:start + 4]

    def _loss(self, x, y):
        logits = x @ self.w
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(y)), y], np.exp(logp)

    def train_step(self, idx):
        self.step = self.step + 1 if self.step < self.steps_per_epoch() else 1
        if self.crash_at == (self.epoch, self.step):
            raise KeyboardInterrupt("simulated kill")
        x, y = self.features["training"][idx], self.labels["training"][idx]
        losses, probs = self._loss(x, y)
        grad = probs.copy()
        grad[np.arange(len(y)), y] -= 1
        self.w -= 0.5 * x.T @ grad / len(y)
        loss = float(losses.mean())
        if self.nan_at == (self.epoch, self.step):
            loss = float("nan")
        return loss, int((probs.argmax(1) == y).sum()), len(y)

    def evaluate(self):
        losses, probs = self._loss(self.features["validation"], self.labels["validation"])
        return probs.astype(np.float32), losses

    def save_checkpoint(self, stem):
        np.save(stem.parent / f"{stem.name}.npy", self.w)
        self.saved.append(stem.name)
        return [f"{stem.name}.npy"]

    def load_checkpoint(self, stem):
        self.w = np.load(stem.parent / f"{stem.name}.npy")

    def memory(self):
        return {"measure": "cpu_peak_rss", "peak_bytes": training.peak_rss()["peak_bytes"], "label": "test"}

    def barrier(self):
        pass

    def info(self):
        return {"framework": "numpy"}


def _job(tiny, fw_dir: Path, epochs: int = 3, resume: bool = False, keep: int = 1) -> dict:
    fw_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(training.TrainConfig(classes=2, epochs=epochs, keep_checkpoints=keep))
    return {"config": config, "manifest": str(tiny), "fw_dir": str(fw_dir), "resume": resume,
            "quiet": True, "progress_interval": 0}


def test_loop_records_epochs_timing_and_final_metrics(tiny, tmp_path):
    trainer = NumpyTrainer(tiny)
    out = training.run_training(trainer, _job(tiny, tmp_path / "fw", keep=2))
    assert out["status"] == "complete" and out["epochs_completed"] == 3
    assert [e["epoch"] for e in out["history"]] == [1, 2, 3]
    for entry in out["history"]:
        assert set(entry) == set(results.EPOCH_KEYS) | set(results.OPTIONAL_EPOCH_KEYS)  # bench.results documents them
        # Only the loop's own time lies between the timed steps and the epoch's training wall time.
        assert entry["loop_overhead"] == pytest.approx(entry["train_wall_s"] / entry["train_time_s"] - 1)
        assert entry["loop_overhead"] >= 0  # (the toy steps here are so short that the loop dominates)
        assert entry["steps"] == 5 and len(entry["step_times_s"]) == 5 and entry["train_images"] == 20
        # The epoch's training loss is the sample mean of the per-step losses (the last batch is full here).
        assert entry["loss"] == pytest.approx(np.mean(entry["step_loss"]))
        assert entry["time_s"] >= entry["train_time_s"] + entry["val_time_s"] - 1e-6
    assert trainer.saved == ["ckpt-epoch-001", "ckpt-epoch-002", "ckpt-epoch-003"]
    kept = sorted(p.name for p in (tmp_path / "fw").glob("ckpt-*"))
    assert kept == ["ckpt-epoch-002.npy", "ckpt-epoch-003.npy"]  # --keep-checkpoints 2
    probs, losses = trainer.evaluate()
    assert out["final"]["val_loss"] == pytest.approx(losses.mean())
    assert sum(map(sum, out["confusion_matrix"])) == 4
    assert np.load(tmp_path / "fw" / "predictions.npz")["probabilities"].shape == (4, 2)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    trainer = NumpyTrainer(tiny, nan_at=(2, 3))
    out = training.run_training(trainer, _job(tiny, tmp_path / "fw"))
    assert out["status"] == "stopped"
    assert out["message"].startswith("loss became nan at epoch 2, step 3/5; training stopped")
    assert "epoch 1 (ckpt-epoch-001)" in out["message"]
    assert [e["epoch"] for e in out["history"]] == [1]
    assert out["checkpoint"] == "fw/ckpt-epoch-001.npz" and (tmp_path / "fw" / "ckpt-epoch-001.npy").exists()
    assert not (tmp_path / "fw" / "ckpt-epoch-002.npy").exists()
    state = training.read_state(tmp_path / "fw")
    assert state["status"] == "stopped" and len(state["history"]) == 1
    # The final figures are the last good checkpoint's, not the poisoned model's.
    assert out["final"]["val_accuracy"] == out["history"][0]["val_accuracy"]


def test_resume_after_a_kill_gives_the_straight_history(tiny, tmp_path):
    straight = training.run_training(NumpyTrainer(tiny), _job(tiny, tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        training.run_training(NumpyTrainer(tiny, crash_at=(2, 3)), _job(tiny, tmp_path / "b"))
    assert len(training.read_state(tmp_path / "b")["history"]) == 1
    resumed = training.run_training(NumpyTrainer(tiny), _job(tiny, tmp_path / "b", resume=True))
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "step_loss")
    assert [{k: e[k] for k in keys} for e in resumed["history"]] == [{k: e[k] for k in keys} for e in straight["history"]]
    assert [e["resumed"] for e in resumed["history"]] == [False, True, False]


# ---- both real workers ---------------------------------------------------------------------------
def test_both_frameworks_train_on_one_split_and_record_everything(tiny, tmp_path):
    # Raw pixels, as this bound was measured: with the quick profile's caffe inputs at 32 px and batch 4,
    # one ulp in the weights alone moves the first loss by ~1e-3 (test_repeats_pair_seeds_... bounds that case).
    out = cli("train", "--framework", "both", "--manifest", str(tiny), *TINY, "--epochs", "2",
              "--order", "manifest", "--preprocessing", "none", "--out", str(tmp_path), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next(tmp_path.glob("train-*"))
    record = results.load_record(run_dir)
    assert record.status == "complete" and record.kind == "train"
    assert record.config["classes"] == 2 and record.config_sources["classes"].startswith("auto")
    assert record.config["threads"] == os.cpu_count()
    from bench.dataset import load_manifest

    manifest = load_manifest(tiny, verify="none")
    assert record.manifest["fingerprint"] == manifest.fingerprint
    assert record.init["kind"] == "random" and (run_dir / "init.npz").is_file()
    val_paths = [e.path for e in manifest.entries("validation")]
    first_losses = {}
    for fw in ("tf", "torch"):
        run = record.framework(fw)
        assert run["status"] == "complete" and [e["epoch"] for e in run["history"]] == [1, 2]
        for entry in run["history"]:
            assert all(math.isfinite(entry[k]) for k in ("loss", "val_loss", "time_s", "train_throughput"))
            assert entry["steps"] == 5 and entry["train_images"] == 20 and entry["val_images"] == 4
        memory = run["memory"]
        assert memory["measure"] == "cpu_peak_rss" and "peak resident set size" in memory["label"]
        assert memory["peak_bytes"] > memory["rss_before_training_bytes"] > 50e6
        assert run["predictions"]["paths"] == val_paths  # the same images, in manifest order
        confusion = np.array(run["confusion_matrix"])
        assert confusion.sum() == 4 and confusion.shape == (2, 2)
        predicted = np.array(run["predictions"]["predicted"])
        labels = np.array(run["predictions"]["labels"])
        assert run["final"]["val_accuracy"] == pytest.approx((predicted == labels).mean())
        assert np.trace(confusion) == (predicted == labels).sum()
        probs = np.load(run_dir / fw / "predictions.npz")["probabilities"]
        assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert (run_dir / run["checkpoint"]).is_file()
        info = record.environment["frameworks"][fw]
        assert info["threads"]["intra_op"] == os.cpu_count() and info["versions"]
        first_losses[fw] = run["history"][0]["step_loss"][0]
    # One bundle, one batch (--order manifest), the same function: the first losses agree.
    assert first_losses["tf"] == pytest.approx(first_losses["torch"], rel=1e-3)
    assert "TensorFlow" in out.stdout and "PyTorch" in out.stdout and "run record:" in out.stdout


def test_keras_on_torch_trains_the_seeds_model_from_the_same_bundle(tiny, tmp_path):
    """The third arm: the seed's Keras model on Keras 3's torch backend, one bundle and the same
    batches as the port; its first loss is the port's (the same function), its process held neither
    tensorflow nor our torch model, and the set's statistics pair it with both."""
    out = cli("train", "--manifest", str(tiny), *TINY, "--epochs", "1", "--frameworks", "torch,keras-torch",
              "--out", str(tmp_path), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    record = results.load_record(next(tmp_path.glob("train-*")))
    assert list(record.frameworks) == ["torch", "keras-torch"]
    kt, port = record.framework("keras-torch"), record.framework("torch")
    assert kt["status"] == "complete" and kt["history"][0]["steps"] == 5 and kt["history"][0]["val_images"] == 4
    assert kt["history"][0]["step_loss"][0] == pytest.approx(port["history"][0]["step_loss"][0], rel=1e-3)
    info = record.environment["frameworks"]["keras-torch"]
    assert info["backend"] == "torch" and info["imported_during_training"] == {"tensorflow": False,
                                                                              "torch_impl.model": False}
    assert "Keras on torch" in out.stdout
    bad = cli("train", "--manifest", str(tiny), *TINY, "--framework", "tf", "--frameworks", "torch,keras-torch",
              "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "give one of them" in bad.stderr


def test_nan_loss_in_a_real_worker_stops_the_run(tiny, tmp_path):
    out = cli("train", "--framework", "torch", "--manifest", str(tiny), *TINY, "--epochs", "2",
              "--learning-rate", "1e30", "--out", str(tmp_path), "--quiet")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("twinbench: error: PyTorch: loss became") and "at epoch 1, step" in last
    record = results.load_record(next(tmp_path.glob("train-*")))
    assert record.status == "stopped" and record.framework("torch")["status"] == "stopped"
    assert record.framework("torch")["history"] == [] and record.framework("torch")["checkpoint"] is None


def _wait_for(stream, predicate, timeout: float) -> list[str]:
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if predicate(line):
            return seen
    raise AssertionError("did not see the expected progress line; output:\n" + "".join(seen[-20:]))


def _kill_and_resume(tmp_path: Path, tiny: Path, framework: str, *extra: str):
    """A straight 3-epoch run, and one whose worker gets SIGKILL at step 2 of epoch 2 and is
    resumed; returns both records."""
    common = ["train", "--framework", framework, "--manifest", str(tiny), *TINY, "--epochs", "3",
              "--progress-interval", "0", *extra]
    straight = cli(*common, "--out", str(tmp_path / "straight"), "--quiet")
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *common, "--out", str(tmp_path / "killed")],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        _wait_for(proc.stderr, lambda line: line.startswith(f"[{framework}] Epoch 2/3"), 300)
        _wait_for(proc.stderr, lambda line: line.startswith(f"[{framework}] 2/5 "), 120)  # mid-epoch 2
        run_dir = next((tmp_path / "killed").glob("train-*"))
        os.kill(int((run_dir / framework / "worker.pid").read_text()), signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    killed = results.load_record(run_dir)
    assert killed.status == "failed" and "SIGKILL" in killed.framework(framework)["message"]
    assert [e["epoch"] for e in killed.framework(framework)["history"]] == [1]

    resumed = cli("train", "--resume", str(run_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = results.load_record(run_dir)
    assert [e["epoch"] for e in record.history(framework)] == [1, 2, 3]  # no epoch lost or duplicated
    assert [e["resumed"] for e in record.history(framework)] == [False, True, False]
    assert len(record.invocations) == 2 and record.invocations[1]["resume"] is True
    return results.load_record(next((tmp_path / "straight").glob("train-*"))), record


def test_sigkill_mid_epoch_then_resume_gives_the_straight_history(tiny, tmp_path):
    straight, resumed = _kill_and_resume(tmp_path, tiny, "torch", "--deterministic")
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "step_loss")
    a, b = straight.history("torch"), resumed.history("torch")
    assert [{k: e[k] for k in keys} for e in b] == [{k: e[k] for k in keys} for e in a]  # bit-identical
    assert resumed.framework("torch")["predictions"] == straight.framework("torch")["predictions"]


@pytest.mark.slow
def test_sigkill_then_resume_on_the_tf_side(tiny, tmp_path):
    """TF side, native order (the resumed run replays the skipped epochs of tf.data's shuffle).
    Tolerance: per-epoch losses within 1e-3 relative (TF's CPU kernels do not promise
    bit-identical results from run to run; measured here: see the report)."""
    straight, resumed = _kill_and_resume(tmp_path, tiny, "tf")
    for a, b in zip(straight.history("tf"), resumed.history("tf")):
        print(f"epoch {a['epoch']}: loss {a['loss']} vs {b['loss']}, val_loss {a['val_loss']} vs {b['val_loss']}")
        for key in ("loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3)


# ---- data parallel -------------------------------------------------------------------------------
RUN_SEED = 123  # the training runs' --seed: it orders the batches (``--order manifest``)


def duplicate_halves_manifest(root: Path, run_seed: int = RUN_SEED) -> Path:
    """24 training images (2 classes) whose every global batch of 8 in epoch 1 (``--order
    manifest``, ``--seed run_seed``) is [a, b, c, d, a, b, c, d]: both halves are the same images.
    Then the per-device batch-norm statistics equal the whole batch's and the mean of the
    half-batch gradients is the whole batch's gradient, so 1 and 2 devices must take the same
    steps (up to rounding). The batch order is ``epoch_permutation(run_seed, ...)``: the RUN's
    seed, not the manifest's split seed (until this test knew that, its "duplicate" halves were
    different images, and 1 vs 2 devices legitimately differed)."""
    from bench.dataset import build_manifest, index_directory, keras_split
    from bench.orders import epoch_permutation

    rng = np.random.default_rng(1)
    for label, name in enumerate(["circle", "square"]):
        (root / name).mkdir(parents=True)
        for i in range(15):
            (root / name / f"{i:02d}.jpg").write_bytes(b"")  # names first: the split depends on names only
    paths, labels, _ = index_directory(str(root))
    for seed in range(100_000):
        shuffled, shuffled_labels, n_val = keras_split(paths, labels, 0.2, seed)
        train, train_labels = shuffled[:-n_val], shuffled_labels[:-n_val]
        order = epoch_permutation(run_seed, len(train), 0)
        pairs = [(order[8 * b + i], order[8 * b + i + 4]) for b in range(3) for i in range(4)]
        if all(train_labels[a] == train_labels[b] for a, b in pairs):
            break
    else:
        raise AssertionError("no split seed gives duplicate halves")
    images: dict[str, Image.Image] = {}
    for label, name in enumerate(["circle", "square"]):
        for i in range(15):
            image = Image.fromarray(rng.integers(0, 60, (64, 64, 3), dtype=np.uint8))
            x, y = (int(v) for v in rng.integers(4, 30, 2))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if label == 0 else draw.rectangle)([x, y, x + 28, y + 28], fill=(220, 200, 40))
            images[f"{name}/{i:02d}.jpg"] = image
    for a, b in pairs:
        images[train[b]] = images[train[a]]
    for rel, image in images.items():
        image.save(root / rel, quality=90)
    manifest = build_manifest(root, seed=seed)
    out = root.parent / "halves.json"
    manifest.save(out)
    return out


def _update(run_dir: Path, framework: str) -> np.ndarray:
    """All trained weights after epoch 1 minus the shared start, as one vector (conv biases
    left out: batch norm cancels them, their gradient is rounding noise)."""
    from bench.weights import WeightBundle

    start = WeightBundle.load(run_dir / "init.npz").arrays
    end = WeightBundle.load(run_dir / framework / "ckpt-epoch-001.npz").arrays
    keys = [k for k in start if "moving_" not in k and not (k.endswith("/bias") and "conv" in k)]
    return np.concatenate([(end[k] - start[k]).ravel().astype(np.float64) for k in keys])


# 1 vs 2 devices, ONE set for both frameworks (the test's docstring has the measurements).
# split: the 2-device first loss against the mean of the half-batch losses (exact by
# construction: measured 4e-8 for TF, 2e-8 for torch). The rest: 3 SGD steps on duplicate halves
# at DEVICE_STEPS; measured (TF | torch): first loss 1.6e-5 | 0, steps 2 and 3 2.7e-4 | 1.3e-5,
# validation loss 1.7e-4 | 2.5e-4, update cosine 0.9984 | 0.99987, norm ratio 1.0068 | 1.0015.
# Each tolerance is 3-6x the larger of the two; the failures they are there for are far
# outside: halves that are not the same images give a first-step update cosine of -0.07 and a
# norm ratio of 2.6 (TF, 32 px), a loss or gradient scaled by the device count a norm ratio of 2
# or 0.5.
DEVICE_TOLERANCES = {"split": 1e-4, "first_loss": 1e-4, "step_loss": 1e-3, "update_cosine": 0.99,
                     "update_norm": 0.02, "val_loss": 1e-3}
# 64 px: at 32 px the stage-5 maps are 1x1 and each device normalises 4 numbers per channel,
# which makes the steps chaotic (see the docstring); lr 1e-8: the steps stay near-linear.
DEVICE_STEPS = ("--input-size", "64", "--lr", "1e-8", "--seed", str(RUN_SEED))


def _train(tmp_path: Path, name: str, framework: str, manifest: Path, *argv: str) -> Path:
    out = cli("train", "--framework", framework, "--manifest", str(manifest), "--profile", "quick",
              "--order", "manifest", "--optimizer", "sgd", "--threads", "1", "--quiet",
              "--out", str(tmp_path / name), *argv, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return next((tmp_path / name).glob("train-*"))


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_one_and_two_devices_take_the_same_steps(tmp_path, tiny, framework):
    """torch DDP (torchrun, gloo) and tf MirroredStrategy (2 logical CPUs) against one device,
    with the same tolerances for both (DEVICE_TOLERANCES).

    1. The split: on ordinary data, the 2-device first loss is the mean of the losses of the
       two half batches (each device normalises its own half: neither framework syncs batch
       norm by default), measured by a 1-device run with half the batch at lr 1e-30, so that
       its second loss is still at the initial weights (lr 1e-12 was not: at 32 px even that
       step moved TF's second half-batch loss by 2.5e-3).
    2. The steps: 3 SGD steps on batches whose halves are the same images
       (duplicate_halves_manifest), so that 1 and 2 devices take the same steps in exact
       arithmetic, at 64 px and lr 1e-8 (DEVICE_STEPS). Measured here (float32, 1 thread a
       process, 1 vs 2 devices; TF | torch): step losses [1.412825, 0.630285, 0.639026] vs
       [1.412848, 0.630183, 0.639196] | [1.412829, 0.630306, 0.639027] vs [1.412829, 0.630300,
       0.639019]; validation loss 0.99834 vs 0.99817 | 0.99800 vs 0.99775; update cosine
       0.9984 | 0.99987; norm ratio 1.0068 | 1.0015. At lr 1e-7 TF's differences already grow
       (step 3 1.1%, validation loss 10%, update cosine 0.979), torch's hardly (7e-6, 1.4e-3,
       0.99998): TF starts from a larger difference (below).
    3. Why this regime. TF MirroredStrategy is right: run in float64 (32 px, lr 1e-5) it takes
       the 1-device steps (gradient cosine 1 - 1e-15 at step 1, 1 - 1e-14 at step 2, the first
       two step losses equal in all printed digits). The
       differences are float32 rounding, amplified: TF's float32 kernels are not batch-size
       invariant (at 32 px one device's loss on [a,b,c,d,a,b,c,d] is 0.665867, a replica's on
       [a,b,c,d] 0.664995, float64 0.665496 for both; step-1 gradient cosine 0.9973), torch's
       are (0.6653978 vs 0.6654000, cosine 1.000000). At the old setting (32 px, lr 1e-5) the
       steps are chaotic: the gradient norm is ~7e4 (caffe-scale inputs, batch norm over 4
       images of 1x1 maps in stage 5), one step changes conv1's kernel by ~25%, and a
       rounding-size difference grows to O(1) in two steps for BOTH frameworks (measured with
       true duplicate halves: update cosine TF 0.25, torch 0.06; even float64 TF grows 1e-16 to
       1.6e-4 in step 3). The earlier figures (torch 0.97, TF 0.53) and torch's failure on a Xeon
       (validation loss 5.7%) are that chaos: which rounding a CPU's kernels make decides how far
       it throws the trajectory. And since the batch order follows the run's seed rather than the
       manifest's, the old halves were not duplicates at all (measured with the old test's data
       at lr 1e-5: update cosine -0.08 torch, -0.11 TF; norm ratios 5.1, 5.7).
    """
    halves = _train(tmp_path, "h", framework, tiny, "--batch-size", "4", "--epochs", "1", "--lr", "1e-30",
                    "--devices", "1")
    split = _train(tmp_path, "s", framework, tiny, "--batch-size", "8", "--epochs", "1", "--lr", "1e-30",
                   "--devices", "2")
    half_losses = results.load_record(halves).history(framework)[0]["step_loss"][:2]
    split_loss = results.load_record(split).history(framework)[0]["step_loss"][0]
    print(f"\n{framework}: split: 2-device first loss {split_loss} vs the mean of the halves {np.mean(half_losses)}")
    assert split_loss == pytest.approx(np.mean(half_losses), rel=DEVICE_TOLERANCES["split"])

    manifest = duplicate_halves_manifest(tmp_path / "data")
    runs, updates = {}, {}
    for devices in (1, 2):
        run_dir = _train(tmp_path, f"d{devices}", framework, manifest, "--batch-size", "8", "--epochs", "1",
                         "--devices", str(devices), *DEVICE_STEPS)
        record = results.load_record(run_dir)
        assert record.framework(framework)["devices"] == devices
        runs[devices] = record.history(framework)[0]
        updates[devices] = _update(run_dir, framework)
    tol = DEVICE_TOLERANCES
    one, two = runs[1], runs[2]
    cosine = float(updates[1] @ updates[2] / np.linalg.norm(updates[1]) / np.linalg.norm(updates[2]))
    norms = float(np.linalg.norm(updates[2]) / np.linalg.norm(updates[1]))
    print(f"\n{framework}: {' '.join(DEVICE_STEPS)}: 1 device {one['step_loss']} val {one['val_loss']}; "
          f"2 devices {two['step_loss']} val {two['val_loss']}; update cosine {cosine:.5f}, norm ratio {norms:.5f}")
    assert one["steps"] == two["steps"] == 3 and one["train_images"] == two["train_images"] == 24
    assert two["step_loss"][0] == pytest.approx(one["step_loss"][0], rel=tol["first_loss"])
    assert two["step_loss"][1:] == pytest.approx(one["step_loss"][1:], rel=tol["step_loss"])
    assert cosine >= tol["update_cosine"] and norms == pytest.approx(1.0, rel=tol["update_norm"])
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=tol["val_loss"])


def test_peak_rss_is_the_workers_own_not_its_parents():
    """A worker started by a large parent reports its own peak: ru_maxrss would carry the
    parent's 600 MB across fork and exec (Linux); VmHWM does not."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: resident
    code = "from bench.training import peak_rss; print(peak_rss()['peak_bytes'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert int(out.stdout) < 300 * 2**20, int(out.stdout) / 2**20
    del ballast


# ---- repeats, statistics and the chaos control -----------------------------------------------------
@pytest.mark.slow  # 5 worker runs, ~3 min on 2 cores: keeps make test within its 15 minutes
@pytest.mark.parametrize("parallel", [1, 2], ids=["one-at-a-time", "parallel-2"])
def test_repeats_pair_seeds_and_the_chaos_control(tiny, tmp_path, parallel):
    from bench.weights import WeightBundle

    out = cli("train", "--manifest", str(tiny), *TINY, "--epochs", "1", "--repeats", "2", "--chaos",
              "--order", "manifest", "--quiet", "--out", str(tmp_path), "--parallel", str(parallel))
    assert out.returncode == 0, out.stderr[-3000:]
    set_dir = next(tmp_path.glob("train-*"))
    # --parallel 2: the 1-ulp run trains beside the repeats (one cell list), 1 thread a worker
    assert ("manifest order, beside the repeats" in out.stderr) == (parallel > 1)
    ulp_run = results.load_record(set_dir / "chaos" / "ulp").frameworks["torch"]
    assert (ulp_run.get("executor") or {}).get("parallel", 1) == parallel and ulp_run["status"] == "complete"
    assert results.load_record(set_dir / "repeat-0").config["threads"] == (os.cpu_count() or 1) // parallel
    doc = json.loads((set_dir / "repeats.json").read_text())
    assert doc["format"] == "twinbench.repeats" and [r["index"] for r in doc["repeats"]] == [0, 1]
    assert [r["status"] for r in doc["repeats"]] == ["complete", "complete"]
    records = [results.load_record(set_dir / f"repeat-{i}") for i in range(2)]
    assert [r.repeat["seed"] for r in records] == [123, 124] and [r.config["seed"] for r in records] == [123, 124]
    assert records[0].init["sha256"] != records[1].init["sha256"]  # each seed its own bundle ...
    stats = doc["statistics"]  # ... shared by both frameworks of that seed: a pair
    assert stats["n_repeats"] == 2 and stats["pairs"]["tf-torch"]["val_accuracy"]["n"] == 2
    values = [r.frameworks["torch"]["final"]["val_accuracy"] * 100 for r in records]
    assert stats["per_framework"]["torch"]["val_accuracy"]["values"] == pytest.approx(values)
    assert "final validation accuracy over 2 repeat(s)" in out.stdout and "tf-torch" in out.stdout
    # the chaos control: one ulp in every weight, the same batches, a trace per step
    base = WeightBundle.load(set_dir / "repeat-0" / "init.npz").arrays
    moved = WeightBundle.load(set_dir / "chaos" / "init-1ulp.npz").arrays
    for key in ("conv1/kernel", "bn_conv1/gamma", "bn_conv1/moving_mean"):
        assert np.array_equal(moved[key], np.nextafter(base[key], np.float32(np.inf)))
    chaos = json.loads((set_dir / "chaos.json").read_text())
    assert chaos["status"] == "complete" and chaos["steps"] == 6  # the bundle and 5 steps of 4 images
    assert chaos["weight_distance"]["cross"][0] == 0.0 and 0 < chaos["weight_distance"]["self"][0] < 1e-6
    assert math.isfinite(chaos["factor"]) and chaos["explained"] == (chaos["factor"] <= chaos["factor_threshold"])
    # the same batches on both sides: the first step's losses agree to rounding. On this tiny setup
    # (32 px, batch 4: training-mode BN over 4 values at stage 5) one ulp already moves the first
    # loss by ~1e-3 (measured), so TF vs torch gets the same bound as torch vs torch + 1 ulp.
    ulp = abs(chaos["loss"]["torch"][0] - chaos["loss"]["torch-1ulp"][0])
    assert ulp <= 1e-2 * abs(chaos["loss"]["torch"][0])
    assert abs(chaos["loss"]["tf"][0] - chaos["loss"]["torch"][0]) <= 1e-2 * abs(chaos["loss"]["tf"][0])
    # the report reads the set: spread, n, the CI and the verdict in the Summary
    report = cli("report", str(set_dir), "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "(n=2, " in md and "paired seeds" in md and "95% CI" in md and "chaos control" in md
    assert (tmp_path / "report" / "chaos.png").is_file()


def test_repeats_resume_adds_and_reruns_without_counting_twice(tiny, tmp_path):
    out = cli("train", "--framework", "torch", "--manifest", str(tiny), *TINY, "--epochs", "1", "--repeats", "2",
              "--quiet", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    set_dir = next(tmp_path.glob("train-*"))
    kept = (set_dir / "repeat-0" / "run.json").read_text()
    # repeat 1 was killed before it finished: its record says so and its state is gone
    rec = results.load_record(set_dir / "repeat-1")
    rec.frameworks["torch"].update(status="failed", history=[], epochs_completed=0, final={})
    rec.status = "failed"
    results.save_record(rec)
    for path in (set_dir / "repeat-1" / "torch").glob("*"):
        if path.is_file():
            path.unlink()
    out = cli("train", "--resume", str(set_dir), "--repeats", "3", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (set_dir / "repeat-0" / "run.json").read_text() == kept  # finished: untouched
    doc = json.loads((set_dir / "repeats.json").read_text())
    assert [r["index"] for r in doc["repeats"]] == [0, 1, 2] and all(r["status"] == "complete" for r in doc["repeats"])
    assert doc["statistics"]["per_framework"]["torch"]["val_accuracy"]["n"] == 3
    assert len(results.load_record(set_dir / "repeat-1").history("torch")) == 1  # one epoch, once
    assert results.load_record(set_dir / "repeat-2").repeat["seed"] == 125
    out = cli("train", "--resume", str(set_dir), "--repeats", "2", "--quiet")
    assert out.returncode == 2 and "never shrinks" in out.stderr


def test_seed_profile_is_the_seed_and_quick_measures_learning():
    seed = training.TrainConfig()
    # ../shared/seed/: ResNet50(), 224 px, batch 8, 50 epochs, compile(optimizer="adam"), 1000-way head,
    # raw pixels, the moving statistics at evaluation, fit's own shuffling
    assert (seed.model, seed.input_size, seed.batch_size, seed.epochs, seed.classes, seed.pooling) == (
        "resnet50", 224, 8, 50, 1000, "avg7")
    assert (seed.optimizer, seed.learning_rate, seed.beta_1, seed.beta_2, seed.epsilon) == ("adam", 1e-3, 0.9, 0.999, 1e-7)
    assert seed.lr_schedule == "constant"  # compile(optimizer="adam"): no schedule
    assert (seed.preprocessing, seed.order, seed.evaluation, seed.precision) == ("none", "native", "moving", "fp32")
    assert seed.torch_ablation is None
    quick = profiles.QuickProfile()
    assert quick.evaluation == "swa" and quick.order == "manifest" and quick.classes == "auto"
    assert quick.average_from is None and quick.average_every == 5  # epochs 3-4 of 4, every 5th step


def test_steady_is_quick_trained_to_its_plateau():
    """The steady profile changes only size, epochs and the averaging window; every step but training is quick's."""
    quick, steady = profiles.QuickProfile(), profiles.SteadyProfile()
    changed = {f.name for f in dataclasses.fields(quick) if getattr(quick, f.name) != getattr(steady, f.name)}
    assert changed == {"input_size", "epochs", "average_from"}
    assert (steady.input_size, steady.epochs, steady.average_from) == (64, 12, 9)
    assert profiles.evaluation_text(dataclasses.asdict(steady)).startswith("swa (weights averaged over epochs 9-12,")
    training.validate_config(dataclasses.replace(steady, classes=4))
    q, s = profiles.PROFILES["quick"], profiles.PROFILES["steady"]
    for step in ("bench", "datacheck_decoders", "ablations", "repeats", "chaos", "chaos_steps", "parallel",
                 "parity_stop_at_expected", "parity_model", "residual_images"):
        assert getattr(s, step) == getattr(q, step), step
    assert s.budget_s["train"] > q.budget_s["train"] and s.input_size == 64
