"""The run record: one JSON file per run, the one thing reports, ``compare`` and ``history`` read.

A run directory holds ``run.json`` (this record) beside the run's checkpoints and artifacts.
Records are written atomically (``bench.atomic``), rewritten after every epoch while a run is
in progress, so a killed run leaves a valid record of everything finished so far.

Format ``twinbench.run``, version 1 (``SCHEMA_VERSION``). Top level: the envelope
(``bench.envelope``: format, version, created, twinbench, machine, commit, versions), then::

    kind            "train" (what produced it; other kinds, e.g. "bench", share the top level)
    run_id          the run directory's name, e.g. "train-20250101-120000-ab12"
    updated         ISO 8601 local time with offset of the last rewrite (``created``: the envelope's)
    status          "running" | "complete" | "stopped" (NaN/Inf loss) | "failed" | "interrupted"
    command         argv of the (last) invocation; ``invocations`` lists every start and resume
    environment     {"frameworks": {"tf"|"torch": the worker's "info" task: versions, devices,
                                    gpus, threads {intra_op, inter_op}}}
                    (records written before the envelope: schema/schema_version, and twinbench,
                    machine and commit inside environment; both are read)
    config          the resolved training config (bench.training.TrainConfig as a dict): every
                    setting, whether from the profile or an override; ``config_sources`` says which
    manifest        {"path", "fingerprint", "classes": [names], "train": n, "validation": n}
    init            the shared starting weights: {"kind": "keras"|"torch"|"random"|"weights"|
                    "independent", "path": bundle or null, "sha256": of the bundle file or null}
    frameworks      {"tf"|"torch": FrameworkRun} for each framework trained
    repeat          {"set", "index", "of", "seed"} for run i of ``twinbench train --repeats N``
                    (``repeats.json`` in the set's directory links them); {} otherwise. Kind
                    "chaos" marks the chaos control's extra torch run (``bench.chaos``).

FrameworkRun (one per framework)::

    status           "running" | "complete" | "stopped" | "failed" | "pending"
    message          one line saying why it stopped or failed (null when complete)
    epochs_completed epochs in ``history`` (== config.epochs when complete)
    history          one dict per finished epoch, in order, epochs 1..N each exactly once:
        epoch            1-based
        loss, accuracy   training: sample means over the whole split, each batch's value taken
                         in its forward pass (what Keras' fit reports)
        val_loss, val_accuracy  validation at the epoch's end, sample means over the split
        time_s           epoch wall time: first batch request to the end of validation
        train_wall_s     wall time of the training loop alone (time_s without validation)
        train_time_s     sum of the synced training-step times (excludes data waits)
        data_wait_s      time spent waiting for the next training batch
        val_time_s       validation wall time (including its data)
        train_images, val_images
        train_throughput images / train_time_s; val_throughput images / val_time_s
        steps            training steps; step_times_s and step_loss: one value per step
        step_time_median_s
        overhead         train_wall_s / (steps x median step time) - 1; the first epoch
                         includes graph tracing / warm-up, so read it from epoch 2 on; what is
                         not step time is data waits (data_wait_s) and the loop itself
        loop_overhead    train_wall_s / train_time_s - 1: only what the loop adds around the
                         timed steps (data waits included); optional (records from 2026-11-28 on)
        resumed          true for the first epoch after a resume
    memory           {"peak_bytes": int, "measure": "cpu_peak_rss" | "gpu_allocator_peak",
                      "label": what was measured, in words, ...measure-specific extras}
                      ("gpu_reserved_bytes" for torch on GPU; "per_rank" for several processes)
    timing           {"setup_s": worker start to first step, "first_step_s", "total_s"}
    final            {"loss", "accuracy", "val_loss", "val_accuracy" (last epoch),
                      "best_val_accuracy", "best_epoch", "mean_epoch_time_s" (epochs 2..N
                      when there are more than one)}
    per_class_accuracy {class name: fraction of that class's validation images right, or null}
    confusion_matrix [[count]] rows = true class, columns = predicted class (validation)
    predictions      the final model on the validation images, in manifest order (the same
                     images, the same order for every framework): {"paths", "labels",
                     "predicted", "confidence"}; full probabilities in the artifact
                     ``<fw>/predictions.npz``
    checkpoint       path (relative to the run directory) of the last good checkpoint
    devices          number of data-parallel devices (1: no distribution)

Python API: :class:`RunRecord`, :func:`new_record`, :func:`save_record`, :func:`load_record`,
:func:`find_records`, :func:`validate`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench import envelope
from bench.errors import UserError

SCHEMA = "twinbench.run"
SCHEMA_VERSION = 1
RECORD_NAME = "run.json"

RUN_STATUSES = ("running", "complete", "stopped", "failed", "interrupted")
FRAMEWORK_STATUSES = ("pending", "running", "complete", "stopped", "failed")
EPOCH_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "time_s", "train_wall_s",
              "train_time_s", "data_wait_s", "val_time_s", "train_images", "val_images", "train_throughput",
              "val_throughput", "steps", "step_times_s", "step_loss", "step_time_median_s", "overhead", "resumed")
OPTIONAL_EPOCH_KEYS = ("loop_overhead",)  # added after schema v1 records existed: readers use .get()
MEMORY_MEASURES = ("cpu_peak_rss", "gpu_allocator_peak")


now_iso = envelope.now_iso


@dataclass
class RunRecord:
    """A run record in memory. ``to_dict`` gives the JSON document described above."""

    run_id: str
    kind: str = "train"
    status: str = "running"
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    command: list[str] = field(default_factory=list)
    invocations: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_sources: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    frameworks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # One run of a repeated set (twinbench train --repeats N): {"set": the set's directory name,
    # "index": i, "of": N, "seed": seed + i}; {} for a standalone run.
    repeat: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)  # where it was loaded from / saved to

    # ---- convenience ---------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path | None:
        return self.path.parent if self.path else None

    def framework(self, name: str) -> dict[str, Any]:
        """The FrameworkRun of ``name`` (a KeyError names the frameworks the run has)."""
        try:
            return self.frameworks[name]
        except KeyError:
            raise KeyError(f"run {self.run_id} has no {name!r} results (it has: "
                           f"{', '.join(self.frameworks) or 'none'})") from None

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.framework(name).get("history", [])

    def series(self, name: str, key: str) -> list[float | None]:
        """One per-epoch quantity (e.g. "val_accuracy") of one framework, in epoch order."""
        return [epoch.get(key) for epoch in self.history(name)]

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        env = self.environment
        infos = env.get("frameworks", {})
        return {
            **envelope.envelope(SCHEMA, SCHEMA_VERSION, created=self.created, machine=env.get("machine", {}),
                                commit=env.get("commit", {}),
                                versions={fw: info.get("versions", {}) for fw, info in infos.items()}),
            "kind": self.kind,
            "run_id": self.run_id,
            "updated": self.updated,
            "status": self.status,
            "command": self.command,
            "invocations": self.invocations,
            "environment": {"frameworks": infos},  # each worker's info task: versions, devices, threads
            "config": self.config,
            "config_sources": self.config_sources,
            "manifest": self.manifest,
            "init": self.init,
            "frameworks": self.frameworks,
            "repeat": self.repeat,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, source: str = "run record") -> "RunRecord":
        validate(doc, source=source)
        return cls(
            run_id=doc["run_id"], kind=doc["kind"], status=doc["status"], created=doc["created"],
            updated=doc.get("updated", doc["created"]), command=list(doc.get("command", [])),
            invocations=list(doc.get("invocations", [])), environment=_environment(doc),
            config=dict(doc.get("config", {})), config_sources=dict(doc.get("config_sources", {})),
            manifest=dict(doc.get("manifest", {})), init=dict(doc.get("init", {})),
            frameworks={k: dict(v) for k, v in doc.get("frameworks", {}).items()},
            repeat=dict(doc.get("repeat") or {}),
        )


def _environment(doc: dict[str, Any]) -> dict[str, Any]:
    """The in-memory ``environment``: the envelope's machine and commit (older records keep them,
    and the twinbench version, under ``environment``) and each framework's worker info."""
    env = dict(doc.get("environment") or {})
    return {"twinbench": doc.get("twinbench", env.get("twinbench")), "machine": doc.get("machine") or env.get("machine", {}),
            "commit": doc.get("commit") or env.get("commit", {}), "frameworks": env.get("frameworks", {})}


def new_framework_run(devices: int = 1) -> dict[str, Any]:
    """An empty FrameworkRun, before its worker starts."""
    return {"status": "pending", "message": None, "epochs_completed": 0, "history": [], "memory": {},
            "timing": {}, "final": {}, "per_class_accuracy": {}, "confusion_matrix": [], "predictions": {},
            "checkpoint": None, "devices": devices}


def new_record(run_id: str, *, kind: str = "train", command: Iterable[str] = (), **sections: Any) -> RunRecord:
    record = RunRecord(run_id=run_id, kind=kind, command=list(command), **sections)
    record.invocations.append({"time": record.created, "command": record.command, "resume": False})
    return record


# ---- validation ----------------------------------------------------------------------------------
def validate(doc: Any, *, source: str = "run record") -> None:
    """Raise a one-line UserError if ``doc`` is not a run record this version reads."""
    if not isinstance(doc, dict):
        raise UserError(f"{source}: not a twinbench run record (expected a JSON object)")
    # The envelope's format/version; records written before it say schema/schema_version.
    name_key, version_key = ("format", "version") if "format" in doc else ("schema", "schema_version")
    if doc.get(name_key) != SCHEMA:
        raise UserError(f"{source}: not a twinbench run record ({name_key} {doc.get(name_key)!r}, "
                        f"expected {SCHEMA!r})")
    version = doc.get(version_key)
    if not isinstance(version, int) or version < 1:
        raise UserError(f"{source}: invalid {version_key} {version!r}")
    if version > SCHEMA_VERSION:
        raise UserError(f"{source}: run record schema version {version} is newer than this twinbench "
                        f"reads ({SCHEMA_VERSION}); upgrade twinbench to read it")
    for key in ("run_id", "kind", "status", "created"):
        if not isinstance(doc.get(key), str):
            raise UserError(f"{source}: field {key!r} missing or not a string")
    if doc["status"] not in RUN_STATUSES:
        raise UserError(f"{source}: unknown status {doc['status']!r} (expected one of {', '.join(RUN_STATUSES)})")
    frameworks = doc.get("frameworks", {})
    if not isinstance(frameworks, dict):
        raise UserError(f"{source}: 'frameworks' must be an object")
    for name, run in frameworks.items():
        where = f"{source}: frameworks.{name}"
        if not isinstance(run, dict):
            raise UserError(f"{where} must be an object")
        if run.get("status") not in FRAMEWORK_STATUSES:
            raise UserError(f"{where}.status {run.get('status')!r} is not one of {', '.join(FRAMEWORK_STATUSES)}")
        history = run.get("history", [])
        if not isinstance(history, list):
            raise UserError(f"{where}.history must be a list")
        for i, epoch in enumerate(history, start=1):
            if not isinstance(epoch, dict) or epoch.get("epoch") != i:
                got = epoch.get("epoch") if isinstance(epoch, dict) else epoch
                raise UserError(f"{where}.history[{i - 1}] is epoch {got!r}, expected {i} "
                                f"(epochs must be 1..N, each once)")
        memory = run.get("memory") or {}
        if memory and memory.get("measure") not in MEMORY_MEASURES:
            raise UserError(f"{where}.memory.measure {memory.get('measure')!r} is not one of "
                            f"{', '.join(MEMORY_MEASURES)}")


# ---- storage -------------------------------------------------------------------------------------
def record_path(path: str | os.PathLike) -> Path:
    """A run directory or a record file -> the record file."""
    path = Path(path)
    return path / RECORD_NAME if path.is_dir() else path


def save_record(record: RunRecord, run_dir: str | os.PathLike | None = None) -> Path:
    """Write ``record`` atomically to ``run_dir/run.json`` (or where it came from); returns the path."""
    if run_dir is not None:
        target = Path(run_dir) / RECORD_NAME
    elif record.path is not None:
        target = record.path
    else:
        raise ValueError("save_record needs a run directory for a record that was never saved")
    record.updated = now_iso()
    doc = record.to_dict()
    validate(doc, source=str(target))  # never write what we could not read back
    envelope.write(target, doc)
    record.path = target
    return target


def load_record(path: str | os.PathLike) -> RunRecord:
    """Read and validate a run record (a ``run.json`` or the run directory holding one)."""
    target = record_path(path)
    if not target.is_file():
        raise UserError(f"{path}: no run record here (expected {RECORD_NAME} in a run directory)")
    try:
        doc = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{target}: cannot read the run record ({exc})") from None
    except ValueError as exc:
        raise UserError(f"{target}: not valid JSON ({exc}); the record is damaged") from None
    record = RunRecord.from_dict(doc, source=str(target))
    record.path = target
    return record


def find_records(directory: str | os.PathLike, *, kind: str | None = None) -> list[Path]:
    """Every run record under ``directory`` (recursively), oldest first by creation time.

    Unreadable or foreign JSON files named ``run.json`` are skipped; a newer schema is not
    (``load_record`` will say to upgrade).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    found: list[tuple[str, Path]] = []
    for path in sorted(directory.rglob(RECORD_NAME)):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict) or SCHEMA not in (doc.get("format"), doc.get("schema")):
            continue
        if kind is not None and doc.get("kind") != kind:
            continue
        found.append((str(doc.get("created", "")), path))
    return [p for _, p in sorted(found, key=lambda item: (item[0], str(item[1])))]
