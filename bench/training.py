"""The worker-side training library: the run's settings (:class:`TrainConfig` and its profiles) and
the one training loop (:func:`run_training`) both workers run.

``tf_impl.train`` and ``torch_impl.train`` supply only a framework :class:`Trainer` (step,
evaluate, checkpoint), so both sides are timed, printed, checkpointed and stopped by the same
code. ``bench.train`` (the ``twinbench train`` command) resolves the config and starts the
workers. The profiles' reasons and measurements: docs/profiles.md.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from bench import atomic
from bench.errors import UserError
from bench.profiles import TrainConfig
from bench.measure import read_peak_rss
from bench.schedule import SCHEDULES, learning_rate_at

PRECISIONS = ("fp32", "mixed_bf16", "mixed_fp16")
INITS = ("keras", "torch", "random", "independent")
# moving: the BN layers' moving statistics (Keras' evaluate, the seed). precise-bn: before each
# validation, every BN layer's statistics are re-estimated with the current weights from
# bn_estimate_images training images (fixed, the same on both sides) in training mode, as the
# mean of the batch means and of the biased batch variances (PreciseBN, Wu & Johnson 2021).
# Training is unaffected: training mode normalises with batch statistics and never reads them.
# swa: validate the mean of the weights snapshot every average_every steps from epoch average_from
# on (stochastic weight averaging, Izmailov et al. 2018), with its BN statistics estimated as in
# precise-bn; training continues from the current weights. Before average_from: as precise-bn.
EVALUATIONS = ("moving", "precise-bn", "swa")
OPTIMIZERS = ("adam", "sgd")
STATE_NAME = "state.json"


# The config (its defaults are the seed) lives with the profiles: bench.profiles.


def validate_config(config: TrainConfig) -> None:
    """One-line UserErrors for settings no worker could use (before any work starts)."""
    from bench.spec import build_spec

    def positive(name: str) -> None:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name.replace('_', '-')} must be a positive integer, received {value!r}")

    for name in ("input_size", "batch_size", "epochs", "devices", "keep_checkpoints"):
        positive(name)
    if config.threads is not None:
        positive("threads")
    for name in ("bn_estimate_images", "average_every"):
        positive(name)
    if config.average_from is not None:
        positive("average_from")
        if config.average_from > config.epochs:
            raise UserError(f"average-from {config.average_from} is after the last epoch ({config.epochs}): "
                            f"choose an epoch from 1 to {config.epochs}")
    if config.torch_ablation is not None:
        torch_alignment(config.torch_ablation)  # a UserError for a name that is not a model ablation
    for name, choices in (("precision", PRECISIONS), ("init", INITS), ("optimizer", OPTIMIZERS),
                          ("evaluation", EVALUATIONS), ("lr_schedule", SCHEDULES)):
        if getattr(config, name) not in choices:
            raise UserError(f"unknown {name} {getattr(config, name)!r}: choose one of {', '.join(choices)}")
    for name in ("learning_rate", "epsilon"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{name.replace('_', '-')} must be a positive number, received {value!r}")
    for name in ("beta_1", "beta_2"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UserError(f"{name.replace('_', '-')} must be in [0, 1), received {value!r}")
    if config.batch_size < config.devices:
        raise UserError(f"batch size {config.batch_size} is smaller than --devices {config.devices}: each device "
                        f"needs at least one image of the global batch")
    from bench.dataset import PipelineOptions

    PipelineOptions(**config.pipeline_options())  # decoder, preprocessing, order
    if isinstance(config.classes, int):
        build_spec(config.model, config.classes, config.input_size, config.pooling)


def torch_alignment(ablation: str | None) -> dict[str, Any]:
    """torch_impl.model.Alignment fields for a parity ablation planted in training (a port bug on
    purpose: what the statistics and the chaos control must notice); {} for the aligned model."""
    if ablation is None:
        return {}
    from bench.parity_spec import ABLATIONS

    names = [n for n, a in ABLATIONS.items() if a.align]
    if ablation not in names:
        raise UserError(f"--torch-ablation {ablation!r}: choose one of {', '.join(names)}")
    return dict(ABLATIONS[ablation].align)



# ---- the training loop, shared by both workers ---------------------------------------------------
class Trainer(Protocol):
    """What a framework supplies to :func:`run_training` (tf_impl.train / torch_impl.train)."""

    framework: str
    is_main: bool  # rank 0 (prints, evaluates, writes); every rank runs the loop

    def steps_per_epoch(self) -> int: ...

    def train_batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's global batches (``epoch`` 0-based, as the data pipelines count)."""

    def set_learning_rate(self, rate: float) -> None:
        """The optimizer's learning rate for the next step (bench.schedule)."""

    def train_step(self, batch: Any) -> tuple[float, int, int]:
        """One optimizer step: (mean loss, correct predictions, images) over the global batch,
        as Python numbers (so the clock read after it is synced)."""

    def evaluate(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Validation split in manifest order: (probabilities [N, classes] float32, per-sample
        cross-entropy [N] float64). None on ranks other than the main one."""

    def save_checkpoint(self, stem: Path) -> list[str]:
        """Weights (as a bundle) and optimizer state, written atomically; the file names."""

    def load_checkpoint(self, stem: Path) -> None: ...

    def estimate_bn(self) -> None:
        """Evaluation "precise-bn": re-estimate every BN layer's statistics (see EVALUATIONS)."""

    def weight_sample(self, indices: dict[str, np.ndarray]) -> np.ndarray:
        """The weights at Keras-layout flat ``indices`` per bundle key, concatenated (bench.chaos)."""

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every weight as a bundle's arrays (Keras layout, bench.weights); they may share memory
        with the model (torch on the CPU does)."""

    def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """The inverse of :meth:`get_weights` (evaluation "swa" swaps the averaged weights in and back)."""

    def memory(self) -> dict[str, Any]: ...

    def barrier(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class Progress:
    """Keras ``fit``-style lines on stderr: a step line every ``interval`` seconds (with loss,
    accuracy and ETA), one summary line per epoch. Lines, not carriage returns: they pass intact
    through pipes and CI logs."""

    BAR = 30

    def __init__(self, framework: str, *, quiet: bool, interval: float, enabled: bool = True):
        self.prefix = f"[{framework}]"
        self.quiet, self.interval, self.enabled = quiet, interval, enabled
        self.last = -math.inf

    def _print(self, text: str) -> None:
        if self.enabled:
            print(f"{self.prefix} {text}", file=sys.stderr, flush=True)

    def epoch_start(self, epoch: int, epochs: int) -> None:
        if not self.quiet:
            self._print(f"Epoch {epoch}/{epochs}")

    def step(self, step: int, steps: int, times: list[float], loss: float, accuracy: float) -> None:
        now = time.monotonic()
        if self.quiet or (step < steps and now - self.last < self.interval and step != 1):
            return
        self.last = now
        # ETA from the median step so far, leaving out the first (graph tracing / warm-up):
        # unknown until a second step is done.
        eta = _duration((steps - step) * statistics.median(times[1:])) if len(times) > 1 else "-"
        done = int(self.BAR * step / steps)
        bar = "=" * max(done - 1, 0) + (">" if step < steps else "=") + "." * (self.BAR - done)
        width = len(str(steps))
        self._print(f"{step:>{width}}/{steps} [{bar}] - ETA: {eta} - loss: {loss:.4f} - accuracy: {accuracy:.4f}")

    def epoch_end(self, entry: dict[str, Any], epochs: int) -> None:
        self._print(f"epoch {entry['epoch']}/{epochs} - {entry['time_s']:.1f}s "
                    f"{entry['step_time_median_s'] * 1000:.0f}ms/step - loss: {entry['loss']:.4f} "
                    f"- accuracy: {entry['accuracy']:.4f} - val_loss: {entry['val_loss']:.4f} "
                    f"- val_accuracy: {entry['val_accuracy']:.4f} - {entry['train_throughput']:.1f} img/s "
                    f"- data wait {entry['data_wait_s']:.2f}s")

    def note(self, text: str) -> None:
        self._print(text)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


def read_state(fw_dir: Path) -> dict[str, Any] | None:
    path = fw_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: damaged training state; remove {fw_dir} to train this framework again") from None


def write_state(fw_dir: Path, state: dict[str, Any]) -> None:
    atomic.write_json(fw_dir / STATE_NAME, atomic.json_safe(state))


def _prune_checkpoints(fw_dir: Path, keep_epochs: Iterable[int]) -> None:
    keep = {f"ckpt-epoch-{e:03d}" for e in keep_epochs}
    for path in fw_dir.glob("ckpt-epoch-*"):
        if path.name.split(".", 1)[0] not in keep:
            path.unlink(missing_ok=True)


def peak_rss() -> dict[str, Any]:
    """This process's peak resident set size (and its largest finished child's, e.g. loader workers).

    VmHWM where /proc has it: it belongs to this process's own address space since its exec.
    getrusage's ru_maxrss (the fallback) is not: Linux carries the parent's peak across fork
    and exec, so a worker started by a large parent would report the parent's memory.
    """
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_bytes": int(read_peak_rss()["peak_bytes"]), "children_peak_bytes": int(child_kb) * 1024}


def evaluation_report(probs: np.ndarray, labels: np.ndarray, class_names: list[str], paths: list[str],
                      classes: int) -> dict[str, Any]:
    """Per-class accuracy, confusion matrix (rows true, columns predicted) and predictions."""
    predicted = probs.argmax(axis=1)
    n = max(classes, len(class_names))
    confusion = np.zeros((len(class_names), n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = float(confusion[i, i] / total) if total else None
    return {
        "per_class_accuracy": per_class,
        # Columns beyond the manifest's classes (the seed's 1000-way head) are "predicted another class".
        "confusion_matrix": [row[:len(class_names)].tolist() + [int(row[len(class_names):].sum())]
                             if n > len(class_names) else row.tolist() for row in confusion],
        "predictions": {"paths": paths, "labels": labels.tolist(), "predicted": predicted.tolist(),
                        "confidence": [round(float(p), 6) for p in probs[np.arange(len(predicted)), predicted]]},
    }


class _WeightTracer:
    """The chaos control's per-step weight samples (``job["trace"] = {"steps": K}``): the starting
    weights and the weights after each of the first K steps, written to ``trace.npz`` after every
    epoch. A resumed run is not traced (its steps before the resume are gone)."""

    def __init__(self, trainer: Trainer, config: TrainConfig, trace: dict[str, Any] | None, fw_dir: Path,
                 fresh: bool):
        from bench import chaos
        from bench.spec import spec_from_args

        self.trainer, self.fw_dir, self.samples = trainer, fw_dir, []
        self.limit = int(trace["steps"]) if trace and fresh and trainer.is_main else 0
        if self.limit:
            self.indices = chaos.sample_indices(spec_from_args(config.spec_args()))
            self.samples.append(trainer.weight_sample(self.indices))

    def step(self) -> None:
        if 0 < len(self.samples) <= self.limit:
            self.samples.append(self.trainer.weight_sample(self.indices))

    def save(self) -> None:
        if self.limit:
            from bench import chaos

            chaos.write_trace(self.fw_dir, self.samples)


class _WeightAverage:
    """Evaluation "swa": the running mean of the weights, snapshot after every ``average_every``-th
    step of an epoch and after its last, from epoch ``average_from`` on (float64 sums). It is saved
    beside each epoch's checkpoint (``ckpt-epoch-NNN.avg.npz``), so a resumed run averages on from
    the same sums. Main rank only: the other ranks never evaluate."""

    SUFFIX = ".avg.npz"
    COUNT = "__count__"

    def __init__(self, trainer: Trainer, config: TrainConfig, steps: int):
        self.trainer, self.steps = trainer, steps
        self.enabled = config.evaluation == "swa" and trainer.is_main
        self.first = config.average_from or config.epochs // 2 + 1
        self.every = config.average_every
        self.sums: dict[str, np.ndarray] = {}
        self.count = 0

    def step(self, epoch: int, step: int) -> None:
        if not self.enabled or epoch < self.first or (step % self.every and step != self.steps):
            return
        for key, value in self.trainer.get_weights().items():
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value.astype(np.float64)
        self.count += 1

    def evaluate(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The trainer's evaluation, of the averaged weights once there are any; the current
        weights (and BN statistics) are back in place afterwards."""
        if not self.count:
            return self.trainer.evaluate()
        current = {k: v.copy() for k, v in self.trainer.get_weights().items()}
        self.trainer.set_weights({k: (v / self.count).astype(current[k].dtype) for k, v in self.sums.items()})
        try:
            return self.trainer.evaluate()
        finally:
            self.trainer.set_weights(current)

    def save(self, stem: Path) -> list[str]:
        if not self.count:
            return []
        path = stem.parent / f"{stem.name}{self.SUFFIX}"
        atomic.write_npz(path, {**self.sums, self.COUNT: np.array(self.count)})
        return [path.name]

    def load(self, stem: Path, epoch: int) -> None:
        """The sums saved with epoch ``epoch``'s checkpoint (none before the window)."""
        if not self.enabled or epoch < self.first:
            return
        path = stem.parent / f"{stem.name}{self.SUFFIX}"
        if not path.is_file():
            raise UserError(f"{path}: missing: the weight average of evaluation swa cannot go on; remove "
                            f"{stem.parent} to train this framework again")
        with np.load(path, allow_pickle=False) as data:
            self.count = int(data[self.COUNT])
            self.sums = {k: data[k] for k in data.files if k != self.COUNT}


@dataclass
class _EpochSums:
    loss: float = 0.0
    correct: int = 0
    images: int = 0
    data_wait: float = 0.0
    step_times: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    started: float = 0.0  # perf_counter at the epoch's start
    trained: float = 0.0  # perf_counter after its last step
    bad_step: int | None = None  # the step whose loss was not finite


@dataclass
class _Loop:
    """What :func:`run_training` carries from epoch to epoch."""

    trainer: Trainer
    config: TrainConfig
    fw_dir: Path
    class_names: list[str]
    val_paths: list[str]
    val_labels: np.ndarray
    progress: Progress
    history: list[dict[str, Any]]
    checkpoint: dict[str, Any] | None
    setup_s: float
    rss_before: int | None
    steps: int
    tracer: _WeightTracer
    average: _WeightAverage
    resumed_at: int | None
    first_step_s: float | None = None
    status: str = "complete"
    message: str | None = None
    last_eval: tuple[np.ndarray, np.ndarray] | None = None

    def stop(self, message: str) -> None:
        self.status, self.message = "stopped", message
        self.progress.note(message)


def run_training(trainer: Trainer, job: dict[str, Any], *, started: float | None = None) -> dict[str, Any]:
    """The training loop both workers run: epochs, synced step timing, progress, validation,
    checkpoints, NaN/Inf stop and resume. Returns the FrameworkRun for the record.

    ``started``: ``time.monotonic()`` when the worker began building the trainer (setup time)."""
    started = time.monotonic() if started is None else started
    loop = _start(trainer, job, started)
    for epoch in range(len(loop.history) + 1, loop.config.epochs + 1):
        loop.progress.epoch_start(epoch, loop.config.epochs)
        sums = _train_epoch(loop, epoch)
        if sums.bad_step is not None:
            good = f"epoch {len(loop.history)} ({loop.checkpoint['stem']})" if loop.checkpoint else "none"
            loop.stop(f"loss became {sums.step_loss[-1]} at epoch {epoch}, step {sums.bad_step}/{loop.steps}; "
                      f"training stopped. Last good checkpoint: {good}")
            break
        entry = _validate(loop, epoch, sums)
        if entry is None:
            break
        _save_epoch(loop, epoch, entry)
    gc.unfreeze()
    memory = trainer.memory()  # every rank: DDP gathers the ranks' peaks
    if not trainer.is_main:
        return {}
    return _finish(loop, memory, started)


def _start(trainer: Trainer, job: dict[str, Any], started: float) -> _Loop:
    """The job's config and manifest, and the state to resume from (``job["resume"]``)."""
    from bench.dataset import load_manifest

    config = TrainConfig(**job["config"])
    fw_dir = Path(job["fw_dir"])
    manifest = load_manifest(job["manifest"], data_root=job.get("data_root"), verify="none")
    val_paths = [e.path for e in manifest.entries("validation")]
    val_labels = manifest.labels("validation")
    progress = Progress(trainer.framework, quiet=job.get("quiet", False),
                        interval=float(job.get("progress_interval", 5.0)), enabled=trainer.is_main)

    state = read_state(fw_dir) if job.get("resume") else None
    history: list[dict[str, Any]] = list(state.get("history", [])) if state else []
    checkpoint = state.get("checkpoint") if state else None
    if checkpoint:
        trainer.load_checkpoint(fw_dir / checkpoint["stem"])
        progress.note(f"resumed from {checkpoint['stem']} (epoch {len(history)} of {config.epochs})")
    elif history:
        raise UserError(f"{fw_dir / STATE_NAME}: history without a checkpoint; remove {fw_dir} to restart it")
    setup_s = time.monotonic() - started
    rss_before = read_peak_rss().get("current_bytes")
    steps = trainer.steps_per_epoch()
    tracer = _WeightTracer(trainer, config, job.get("trace"), fw_dir, fresh=not history)
    average = _WeightAverage(trainer, config, steps)
    if checkpoint:
        average.load(fw_dir / checkpoint["stem"], int(checkpoint["epoch"]))
    return _Loop(trainer=trainer, config=config, fw_dir=fw_dir, class_names=manifest.class_names,
                 val_paths=val_paths, val_labels=val_labels, progress=progress, history=history,
                 checkpoint=checkpoint, setup_s=setup_s, rss_before=rss_before, steps=steps, tracer=tracer,
                 average=average, resumed_at=len(history) + 1 if history else None)


def _train_epoch(loop: _Loop, epoch: int) -> _EpochSums:
    """One epoch's timed steps; it ends early at a loss that is not finite (``bad_step``)."""
    trainer, sums = loop.trainer, _EpochSums()
    # A full collection now, then freeze the survivors: the model, graphs and traces are
    # millions of long-lived objects, and a generation-2 pass over them inside the timed loop
    # stalled an epoch by 1-11 s (measured, TF side). Garbage made later is still collected.
    gc.collect()
    gc.freeze()
    sums.started = time.perf_counter()
    batches: Iterator[Any] = iter(trainer.train_batches(epoch - 1))
    sums.data_wait += time.perf_counter() - sums.started  # building the epoch's pipeline is waiting too
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            sums.data_wait += time.perf_counter() - t0
            break
        if loop.config.lr_schedule != "constant":
            trainer.set_learning_rate(learning_rate_at(loop.config.lr_schedule, loop.config.learning_rate,
                                                       (epoch - 1) * loop.steps + len(sums.step_times),
                                                       loop.config.epochs * loop.steps))
        t1 = time.perf_counter()
        loss, correct, n = trainer.train_step(batch)
        t2 = time.perf_counter()
        sums.data_wait += t1 - t0
        sums.step_times.append(t2 - t1)
        sums.step_loss.append(float(loss))
        loop.tracer.step()
        if math.isfinite(loss):
            loop.average.step(epoch, len(sums.step_times))
        if loop.first_step_s is None:
            loop.first_step_s = t2 - t1
        if not math.isfinite(loss):
            sums.bad_step = len(sums.step_times)
            break
        sums.loss += float(loss) * n
        sums.correct += int(correct)
        sums.images += int(n)
        loop.progress.step(len(sums.step_times), loop.steps, sums.step_times, sums.loss / sums.images,
                           sums.correct / sums.images)
    sums.trained = time.perf_counter()
    return sums


def _validate(loop: _Loop, epoch: int, sums: _EpochSums) -> dict[str, Any] | None:
    """Validation after an epoch: its history entry (the epoch alone on ranks other than the
    main one), or None when the validation loss is not finite (training stops)."""
    evaluated = loop.average.evaluate()
    val_end = time.perf_counter()
    entry: dict[str, Any] = {"epoch": epoch}
    if not loop.trainer.is_main:
        return entry
    assert evaluated is not None
    probs, losses = evaluated
    epoch_start, train_end, val_labels = sums.started, sums.trained, loop.val_labels
    val_loss = float(np.mean(losses, dtype=np.float64))
    val_accuracy = float(np.mean(probs.argmax(axis=1) == val_labels))
    median = statistics.median(sums.step_times)
    train_time = float(sum(sums.step_times))
    entry.update({
        "loss": sums.loss / sums.images, "accuracy": sums.correct / sums.images,
        "val_loss": val_loss, "val_accuracy": val_accuracy,
        "time_s": val_end - epoch_start, "train_wall_s": train_end - epoch_start,
        "train_time_s": train_time, "data_wait_s": sums.data_wait,
        "val_time_s": val_end - train_end, "train_images": sums.images, "val_images": len(val_labels),
        "train_throughput": sums.images / train_time if train_time > 0 else None,
        "val_throughput": len(val_labels) / (val_end - train_end) if val_end > train_end else None,
        "steps": len(sums.step_times), "step_time_median_s": median,
        "overhead": (train_end - epoch_start) / (len(sums.step_times) * median) - 1.0,
        # The measure above also moves with the spread of step times (mean vs
        # median); this one is only what the loop adds around the timed steps.
        "loop_overhead": (train_end - epoch_start) / train_time - 1.0 if train_time > 0 else None,
        "step_times_s": [round(t, 6) for t in sums.step_times],
        "step_loss": sums.step_loss, "resumed": epoch == loop.resumed_at,
    })
    if loop.average.enabled:
        entry["averaged_snapshots"] = loop.average.count  # 0: the current weights (before average_from)
    if not math.isfinite(val_loss):
        loop.stop(f"validation loss became {val_loss} after epoch {epoch}; training stopped. Last good "
                  f"checkpoint: {'epoch ' + str(len(loop.history)) if loop.checkpoint else 'none'}")
        return None
    loop.last_eval = evaluated
    return entry


def _save_epoch(loop: _Loop, epoch: int, entry: dict[str, Any]) -> None:
    """The epoch's checkpoint, history entry, state.json and progress line."""
    trainer, fw_dir = loop.trainer, loop.fw_dir
    stem = f"ckpt-epoch-{epoch:03d}"
    files = trainer.save_checkpoint(fw_dir / stem) + loop.average.save(fw_dir / stem)
    trainer.barrier()
    loop.history.append(entry)
    loop.tracer.save()
    if trainer.is_main:
        loop.checkpoint = {"epoch": epoch, "stem": stem, "files": files}
        write_state(fw_dir, {"framework": trainer.framework, "status": "running", "history": loop.history,
                             "checkpoint": loop.checkpoint, "checkpoint_path": f"{fw_dir.name}/{stem}.npz"})
        _prune_checkpoints(fw_dir, range(epoch - loop.config.keep_checkpoints + 1, epoch + 1))
        loop.progress.epoch_end(entry, loop.config.epochs)


def _finish(loop: _Loop, memory: dict[str, Any], started: float) -> dict[str, Any]:
    """The FrameworkRun (main rank): final figures, evaluation report, predictions.npz, state.json."""
    trainer, fw_dir, checkpoint, history = loop.trainer, loop.fw_dir, loop.checkpoint, loop.history
    last_eval = loop.last_eval
    if last_eval is None and checkpoint:
        # Nothing trained in this invocation (already done, or stopped in the next epoch): the
        # final figures are those of the last good checkpoint.
        trainer.load_checkpoint(fw_dir / checkpoint["stem"])
        last_eval = loop.average.evaluate()
    result: dict[str, Any] = {
        "status": loop.status, "message": loop.message, "epochs_completed": len(history), "history": history,
        "checkpoint": f"{fw_dir.name}/{checkpoint['stem']}.npz" if checkpoint else None,
        "devices": loop.config.devices,
        "timing": {"setup_s": loop.setup_s, "first_step_s": loop.first_step_s,
                   "total_s": time.monotonic() - started},
    }
    if loop.rss_before is not None:
        memory.setdefault("rss_before_training_bytes", loop.rss_before)
    result["memory"] = memory
    result["final"] = _final_figures(history)
    if last_eval is not None:
        probs, losses = last_eval
        result.update(evaluation_report(probs, loop.val_labels, loop.class_names, loop.val_paths,
                                        loop.config.classes))
        atomic.write_npz(fw_dir / "predictions.npz", {"probabilities": probs.astype(np.float32),
                                                      "loss": losses.astype(np.float64), "labels": loop.val_labels})
    write_state(fw_dir, {"framework": trainer.framework, "status": loop.status, "message": loop.message,
                         "history": history, "checkpoint": checkpoint,
                         "checkpoint_path": result["checkpoint"]})
    result["info"] = trainer.info()
    return result


def _final_figures(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's figures, the best validation accuracy, the mean epoch time after the first."""
    if not history:
        return {}
    last = history[-1]
    best = max(history, key=lambda e: e["val_accuracy"])
    later = [e["time_s"] for e in history[1:]] or [e["time_s"] for e in history]
    return {"loss": last["loss"], "accuracy": last["accuracy"], "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"], "best_val_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"], "mean_epoch_time_s": float(np.mean(later))}


def write_pid(fw_dir: Path, name: str = "worker.pid") -> None:
    """The worker's pid, for tools (and tests) that must signal it."""
    atomic.write_text(fw_dir / name, f"{os.getpid()}\n")
