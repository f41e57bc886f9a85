"""What a set of run directories holds: the records in them, grouped into runs, and the key
figures (metrics) that ``report``, ``compare`` and ``history`` read.

Records are recognised by their content, never by file name alone:

- train: ``run.json``, schema ``twinbench.run`` (``bench.results``, written by ``twinbench train``);
- bench: ``bench.json``, format ``twinbench.bench`` (``bench.benchmark``);
- parity: format ``twinbench.parity``, or ``twinbench.parity-ablations`` (the aligned baseline's
  table plus each ablation's summary; ``bench.parity``);
- datacheck: ``twinbench data check --json`` output (keys ``decoders``, ``pipeline``,
  ``tolerance``, ``manifest``; ``bench.run`` adds format ``twinbench.datacheck``);
- residuals: format ``twinbench.residuals`` (``bench.run``: per stage "before"/"after"
  training and framework, the ``residual_ratios`` worker results);
- session: ``session.json``, format ``twinbench.session``: one per ``twinbench run``, its steps.

A *run* is a ``twinbench run`` directory (the one holding ``session.json``, with every record
below it), or else one standalone record. A metric is one number with what it measures
(``name``, e.g. ``throughput.train``), which configuration (``labels``), its repeats
(``samples``, for significance tests) and which direction is better.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bench.errors import UserError

SESSION_FORMAT = "twinbench.session"
SESSION_VERSION = 1
SESSION_NAME = "session.json"
RESIDUALS_FORMAT = "twinbench.residuals"
RESIDUALS_VERSION = 1
DATACHECK_FORMAT = "twinbench.datacheck"
DATACHECK_VERSION = 1
MAX_DEPTH = 4  # run directories nest train/, bench/ one or two levels down
MAX_RECORD_BYTES = 64 * 2**20  # a record is JSON of a few MB at most; skip anything larger
SKIP_DIRS = {"report", "jobs", "checkpoints", "__pycache__", ".git"}

# Format / schema name -> (record kind, newest version this twinbench reads).
FORMATS: dict[str, tuple[str, int]] = {
    "twinbench.run": ("train", 1),
    "twinbench.bench": ("bench", 1),
    "twinbench.parity": ("parity", 1),
    "twinbench.parity-ablations": ("parity", 1),
    DATACHECK_FORMAT: ("datacheck", DATACHECK_VERSION),
    RESIDUALS_FORMAT: ("residuals", RESIDUALS_VERSION),
    "twinbench.repeats": ("repeats", 1),
    "twinbench.chaos": ("chaos", 1),
    SESSION_FORMAT: ("session", SESSION_VERSION),
}


# ---- records -------------------------------------------------------------------------------------
@dataclass
class Record:
    """One result document: its kind, where it is, its content."""

    kind: str
    path: Path
    doc: dict[str, Any]

    @property
    def created(self) -> str:
        """ISO time the record was made; the file's time where the record keeps none."""
        created = self.doc.get("created") or self.doc.get("datetime")
        if not created:
            import datetime as dt

            created = dt.datetime.fromtimestamp(self.path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
        return str(created)

    @property
    def model(self) -> str:
        """The architecture (``bench.spec`` model name) the record measured."""
        return record_model(self)

    @property
    def commit(self) -> dict[str, Any]:
        return record_commit(self)

    @property
    def machine(self) -> dict[str, Any]:
        return record_machine(self)


def _format_of(doc: dict[str, Any]) -> tuple[str | None, Any]:
    for key_name, key_version in (("schema", "schema_version"), ("format", "version")):
        name = doc.get(key_name)
        if isinstance(name, str) and name.startswith("twinbench"):
            return name, doc.get(key_version)
    return None, None


def classify(doc: Any, source: Path) -> str | None:
    """The record kind of a JSON document, or None for anything that is not a twinbench record.
    A newer version than this twinbench reads is a UserError (upgrade), never silently skipped."""
    if not isinstance(doc, dict):
        return None
    name, version = _format_of(doc)
    if name is None and {"decoders", "pipeline", "tolerance", "manifest"} <= set(doc):
        return "datacheck"  # ``twinbench data check --json`` wrote no format name before the envelope
    if name not in FORMATS:
        return None
    kind, newest = FORMATS[name]
    if isinstance(version, int) and version > newest:
        raise UserError(f"{source}: {name} record version {version} is newer than this twinbench reads "
                        f"({newest}); upgrade twinbench to read it")
    if name == "twinbench.run":
        from bench.results import load_record

        load_record(source)  # full validation: one clear line for a damaged record
        return "train" if doc.get("kind", "train") == "train" else doc.get("kind")
    return kind


def read_record(path: Path) -> Record | None:
    """The record in ``path``, or None when it is not one (other JSON, unreadable, too big)."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    kind = classify(doc, path)
    return Record(kind, path, doc) if kind else None


def _json_files(directory: Path, depth: int = 0) -> Iterable[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if depth < MAX_DEPTH and entry.name not in SKIP_DIRS:
                yield from _json_files(entry, depth + 1)
        elif entry.suffix == ".json":
            yield entry


def find(paths: Sequence[str | os.PathLike]) -> list[Record]:
    """Every record in ``paths`` (record files or directories searched recursively).

    A path that does not exist, or holds no record at all, is a UserError: a typo must not turn
    into an empty report or a compare that passes.
    """
    records: list[Record] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
        found: list[Record] = []
        candidates = [path] if path.is_file() else list(_json_files(path))
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            record = read_record(candidate)
            if record:
                found.append(record)
        if not found:
            what = "is not a twinbench record" if path.is_file() else "holds no twinbench run records"
            raise UserError(f"{path} {what} (expected the output of twinbench run, train, bench or parity)")
        records += found
    return records


# ---- runs ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """A ``twinbench run`` directory with its records, or one standalone record."""

    path: Path
    records: list[Record] = field(default_factory=list)

    def of(self, kind: str) -> list[Record]:
        return [r for r in self.records if r.kind == kind]

    def first(self, kind: str) -> Record | None:
        found = self.of(kind)
        return found[-1] if found else None  # the newest of its kind (records are in time order)

    @property
    def session(self) -> dict[str, Any]:
        record = self.first("session")
        return record.doc if record else {}

    @property
    def name(self) -> str:
        return str(self.session.get("run_id") or self.path.name)

    @property
    def created(self) -> str:
        times = [r.created for r in self.records if r.created]
        return str(self.session.get("created") or (min(times) if times else ""))

    @property
    def models(self) -> list[str]:
        return sorted({r.model for r in self.records if r.kind != "session" and r.model})

    @property
    def commit(self) -> dict[str, Any]:
        for r in self.records:
            if r.commit.get("id"):
                return r.commit
        return {}

    @property
    def machine(self) -> dict[str, Any]:
        for r in self.records:
            if r.machine:
                return r.machine
        return {}


def group_runs(records: Sequence[Record]) -> list[Run]:
    """Records under a ``session.json`` directory form one run; every other record its own."""
    sessions = {r.path.parent.resolve(): Run(r.path.parent) for r in records if r.kind == "session"}
    runs: list[Run] = []
    for record in sorted(records, key=lambda r: (r.created, str(r.path))):
        owner = next((sessions[p] for p in record.path.resolve().parents if p in sessions), None)
        if owner is None:
            runs.append(Run(record.path.parent, [record]))
        else:
            owner.records.append(record)
    runs += list(sessions.values())
    return sorted(runs, key=lambda run: (run.created, str(run.path)))


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    return group_runs(find(paths))


# ---- what every record says about itself ---------------------------------------------------------
def record_model(record: Record) -> str:
    doc = record.doc
    if record.kind == "train":
        return str(doc.get("config", {}).get("model") or "resnet50")
    if record.kind == "bench":
        settings = doc.get("settings", {})
        return str(settings.get("model") or settings.get("arch") or "resnet50")
    if record.kind == "session":
        return str(doc.get("model") or "")
    if record.kind == "parity":
        return str(parity_result(doc).get("config", {}).get("model") or "resnet50")
    if record.kind == "datacheck":
        return ""  # data, not a model
    return str(doc.get("model") or doc.get("settings", {}).get("model") or "resnet50")


def _env(doc: dict[str, Any]) -> dict[str, Any]:
    """Where a record keeps machine and commit: ``environment`` (train), ``env`` (parity), top level."""
    if doc.get("format") == "twinbench.parity-ablations":
        doc = parity_result(doc)
    env = doc.get("environment") or doc.get("env") or {}
    return env if isinstance(env, dict) else {}


def record_commit(record: Record) -> dict[str, Any]:
    doc = record.doc
    commit = doc.get("commit") or _env(doc).get("commit") or {}
    return commit if isinstance(commit, dict) else {"id": str(commit)}


def record_machine(record: Record) -> dict[str, Any]:
    doc = record.doc
    machine = doc.get("machine") or _env(doc).get("machine") or {}
    return machine if isinstance(machine, dict) else {}


def record_versions(record: Record) -> dict[str, str]:
    """Framework and Python versions: {"tensorflow": "2.21.0", "torch": ..., "python": ...}."""
    doc = record.doc
    out: dict[str, str] = {}
    envs = doc.get("environment", {}).get("frameworks") or doc.get("environments") or doc.get("frameworks_info") or {}
    if isinstance(envs, dict):
        for env in envs.values():
            if isinstance(env, dict):
                for k, v in (env.get("versions") or {}).items():
                    if v:
                        out[k] = str(v)
    python = record_machine(record).get("python")
    if python:
        out["python"] = str(python)
    return out


def record_threads(record: Record) -> dict[str, Any]:
    doc = record.doc
    envs = doc.get("environment", {}).get("frameworks") or doc.get("environments") or {}
    out = {}
    if isinstance(envs, dict):
        for fw, env in envs.items():
            if isinstance(env, dict) and env.get("threads"):
                out[fw] = env["threads"].get("intra_op")
    return out


# ---- metrics -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One key figure. ``samples`` are its repeats (for Mann-Whitney U); ``better`` is
    ``"higher"`` or ``"lower"``; parity metrics carry their ``tolerance`` and ``passed``."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    samples: tuple[float, ...] = ()
    better: str = "higher"
    unit: str = ""
    tolerance: float | None = None
    passed: bool | None = None

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.name, self.labels

    @property
    def what(self) -> str:
        return " ".join(v for _, v in self.labels)

    def label(self, name: str, default: str = "") -> str:
        return dict(self.labels).get(name, default)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def train_metrics(record: Record) -> list[Metric]:
    out: list[Metric] = []
    for fw, run in sorted(record.doc.get("frameworks", {}).items()):
        labels = (("framework", fw),)
        final = run.get("final") or {}
        if _finite(final.get("val_accuracy")):
            out.append(Metric("accuracy.val", labels, float(final["val_accuracy"]), better="higher"))
        if _finite(final.get("val_loss")):
            out.append(Metric("loss.val", labels, float(final["val_loss"]), better="lower"))
        if _finite(final.get("accuracy")):  # shown, not gated: fitting the batches is not learning the task
            out.append(Metric("accuracy.train", labels, float(final["accuracy"]), better="higher"))
        history = run.get("history") or []
        # The first epoch includes tracing/warm-up: epochs 2..N are the repeats, as for epoch time.
        steady = history[1:] if len(history) > 1 else history
        rates = [float(e["train_throughput"]) for e in steady if _finite(e.get("train_throughput"))]
        if rates:
            out.append(Metric("throughput.fit", labels, statistics.median(rates), tuple(rates), "higher", "img/s"))
        times = [float(e["time_s"]) for e in steady if _finite(e.get("time_s"))]
        if times:
            out.append(Metric("time.epoch", labels, statistics.median(times), tuple(times), "lower", "s"))
        peak = (run.get("memory") or {}).get("peak_bytes")
        if _finite(peak):
            out.append(Metric("memory.peak", labels + (("during", "training"),), float(peak) / 2**20,
                              better="lower", unit="MB"))
    return out


def bench_setting(row: dict[str, Any]) -> str:
    """A bench row's configuration in words: "ours synthetic b8 64px fp32 nhwc eager"."""
    return (f"{row.get('model', 'ours')} {row.get('input', 'synthetic')} b{row.get('batch')} "
            f"{row.get('input_size')}px {row.get('precision')} {row.get('layout')} {row.get('compile')}")


def bench_metrics(record: Record) -> list[Metric]:
    out: list[Metric] = []
    for row in record.doc.get("rows", []):
        if row.get("status") != "ok":
            continue
        labels = (("framework", str(row.get("framework"))), ("setting", bench_setting(row)))
        tp = (row.get("timing") or {}).get("throughput") or {}
        value = row.get("images_per_s", tp.get("median"))
        if _finite(value):
            samples = tuple(float(x) for x in tp.get("windows", []) if _finite(x))
            out.append(Metric(f"throughput.{row.get('mode', 'train')}", labels, float(value), samples, "higher", "img/s"))
        if _finite(row.get("mfu")):
            out.append(Metric(f"mfu.{row.get('mode', 'train')}", labels, float(row["mfu"]), better="higher"))
        peak = (row.get("memory") or {}).get("peak_bytes")
        if _finite(peak):
            out.append(Metric("memory.peak", labels + (("during", f"bench {row.get('mode')}"),),
                              float(peak) / 2**20, better="lower", unit="MB"))
    return out


def parity_result(doc: dict[str, Any]) -> dict[str, Any]:
    """The block x check result of a parity record (an ablation table's aligned baseline)."""
    if doc.get("format") == "twinbench.parity-ablations":
        return (doc.get("results") or {}).get("baseline") or {}
    return doc


def parity_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (check, block) cell of a parity record or result, in table order: the deciding metric's
    cross error (``value``: max-rel or normwise, per ``metric``) against its ``limit``, both
    frameworks' own errors and their ``ratio`` (calibrated float32 cells, bench.parity_table),
    the raw ``max_rel``, the ``fixed_tol`` and ``passed``. Records from before calibrated
    tolerances read as fixed cells (value = max_rel, limit = tol)."""
    result = parity_result(doc)
    table = result.get("table") or {}
    tolerances = result.get("tolerances") or {}
    rows = []
    for block in result.get("rows", []):
        for check in result.get("columns", []):
            cell = (table.get(block) or {}).get(check)
            if not cell:
                continue
            # a non-finite error is stored as null: it is the worst possible
            max_rel = math.inf if cell.get("max_rel") is None else cell["max_rel"]
            value = cell.get("value", cell.get("max_rel"))
            fixed = cell.get("tol", tolerances.get(check))
            rows.append({"check": check, "block": block, "metric": cell.get("metric", "max_rel"),
                         "judge": cell.get("judge", "fixed"), "value": math.inf if value is None else value,
                         "limit": cell["limit"] if cell.get("limit") is not None else fixed,
                         "own_tf": cell.get("own_tf"), "own_torch": cell.get("own_torch"),
                         "ratio": cell.get("ratio"), "max_abs": cell.get("max_abs"), "max_rel": max_rel,
                         "fixed_tol": cell.get("fixed_tol", fixed), "passed": bool(cell.get("ok"))})
    return rows


def parity_metrics(record: Record) -> list[Metric]:
    out = []
    for r in parity_rows(record.doc):
        if not isinstance(r["value"], (int, float)):
            continue
        tol = float(r["limit"]) if _finite(r["limit"]) else None
        out.append(Metric("parity.max_rel", (("check", r["check"]), ("block", r["block"])), float(r["value"]),
                          better="lower", tolerance=tol, passed=r["passed"]))
    return out


def residual_metrics(record: Record) -> list[Metric]:
    out = []
    for stage, per_fw in sorted((record.doc.get("stages") or {}).items()):
        for fw, result in sorted(per_fw.items()):
            for unit in result.get("units", []):
                out.append(Metric("residual.ratio", (("framework", fw), ("stage", stage), ("unit", unit["unit"])),
                                  float(unit["ratio_median"]), tuple(unit.get("ratios", ())), better="none"))
    return out


EXTRACTORS = {"train": train_metrics, "bench": bench_metrics, "parity": parity_metrics,
              "residuals": residual_metrics}


def metrics(records: Iterable[Record]) -> list[Metric]:
    """Every metric of ``records``. Several records giving the same metric (repeats in a
    directory) are pooled: samples joined, the value their median (parity: the worst)."""
    pooled: dict[tuple, list[Metric]] = {}
    for record in records:
        for m in EXTRACTORS.get(record.kind, lambda r: [])(record):
            pooled.setdefault(m.key, []).append(m)
    out = []
    for group in pooled.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        first = group[0]
        if first.name.startswith("parity"):
            worst = max(group, key=lambda m: m.value)
            out.append(Metric(first.name, first.labels, worst.value, tuple(m.value for m in group), first.better,
                              first.unit, worst.tolerance, all(m.passed is not False for m in group)))
            continue
        samples = tuple(s for m in group for s in (m.samples or (m.value,)))
        out.append(Metric(first.name, first.labels, statistics.median(m.value for m in group), samples,
                          first.better, first.unit))
    return out
