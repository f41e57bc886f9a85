"""What a report reads from the records: the records in one place (:class:`Context`), the
model it is about, the training set with its statistics, the bench rows as a table, the
conditions lines; and :class:`SectionBuilder`, the base of the section groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.profiles import evaluation_text
from bench.report_doc import short_commit
from bench.frameworks import FRAMEWORK_LABELS
from bench.runset import Record, Run, record_threads, record_versions




@dataclass
class Context:
    runs: list[Run]
    records: list[Record]
    model: str  # the model the main sections describe
    out_dir: Path
    quiet: bool = False

    def of(self, kind: str, model: str | None = None) -> list[Record]:
        model = self.model if model is None else model
        return [r for r in self.records if r.kind == kind and (kind in ("datacheck", "session") or r.model == model)]

    def latest(self, kind: str, model: str | None = None) -> Record | None:
        found = self.of(kind, model)
        return found[-1] if found else None

    @property
    def models(self) -> list[str]:
        return sorted({r.model for r in self.records if r.model and r.kind not in ("session", "datacheck")})


def choose_model(records: Sequence[Record]) -> str:
    """The session's model, else resnet50 if present, else the most frequent."""
    for r in records:
        if r.kind == "session" and r.doc.get("model"):
            return str(r.doc["model"])
    models = [r.model for r in records if r.model and r.kind not in ("session", "datacheck")]
    if not models:
        return "resnet50"
    if "resnet50" in models:
        return "resnet50"
    return max(set(models), key=models.count)


def ray_machines(record: Record) -> list[dict[str, Any]]:
    """The machines a Ray executor ran the record's workers on (bench rows, training cells); none
    for the local executor, whose workers ran on the record's own machine."""
    found: list[dict[str, Any]] = []
    places = list((record.doc.get("frameworks") or {}).values()) + list(record.doc.get("rows") or [])
    for place in places:
        machine = (place.get("executor") or {}).get("machine") if isinstance(place, dict) else None
        if machine and machine not in found:
            found.append(machine)
    return found


def machine_text(record: Record | None) -> str:
    if record is None:
        return "machine unknown"
    gpus = []
    for env in (record.doc.get("environment", {}).get("frameworks") or record.doc.get("environments") or {}).values():
        if isinstance(env, dict):
            gpus += [g for g in env.get("gpus", []) if g not in gpus]
    device = f"GPU {', '.join(gpus)}" if gpus else "CPU"
    nodes = ray_machines(record)
    if nodes:
        cpus = "; ".join(f"{m['cpu'].get('model', 'unknown CPU')} ({m['cpu'].get('cores', '?')} cores)" for m in nodes)
        return f"{device}; {cpus} (on Ray: {len(nodes)} node(s), {', '.join(m.get('node', '?') for m in nodes)})"
    cpu = record.machine.get("cpu", {})
    return f"{device}; {cpu.get('model', 'unknown CPU')} ({cpu.get('cores', '?')} cores)"


def versions_text(record: Record | None) -> str:
    if record is None:
        return ""
    v = record_versions(record)
    parts = [f"TF {v['tensorflow']}" if v.get("tensorflow") else "", f"Keras {v['keras']}" if v.get("keras") else "",
             f"torch {v['torch']}" if v.get("torch") else "", f"Python {v['python']}" if v.get("python") else ""]
    return ", ".join(p for p in parts if p)


def train_conditions(record: Record) -> str:
    c = record.doc.get("config", {})
    threads = c.get("threads") or "/".join(str(t) for t in record_threads(record).values())
    return (f"{c.get('model')} {c.get('input_size')} px, {c.get('pooling')} pooling, {c.get('classes')} classes, "
            f"batch {c.get('batch_size')}, {c.get('optimizer')} lr {c.get('learning_rate')}, {c.get('precision')}, "
            f"order {c.get('order')}, init {c.get('init')}, evaluation {evaluation_text(c)}"
            f"{', torch ablation ' + c['torch_ablation'] if c.get('torch_ablation') else ''}, {threads} threads; "
            f"{machine_text(record)}; "
            f"{versions_text(record)}; manifest {str(record.doc.get('manifest', {}).get('fingerprint', '?'))[:12]}; "
            f"commit {short_commit(record.commit)}")


def bench_conditions(record: Record) -> str:
    s = record.doc.get("settings", {})
    th = record.doc.get("threads", {}).get("per_framework", {})
    threads = ", ".join(f"{fw} {t.get('intra_op')}" for fw, t in sorted(th.items()) if isinstance(t, dict))
    return (f"warm-up {s.get('warmup')} steps, {s.get('repeats')} windows of {s.get('steps')} steps; "
            f"threads {threads or '?'}; {machine_text(record)}; {versions_text(record)}; "
            f"commit {short_commit(record.commit)}")


def profile_of(record: Record) -> str:
    sources = record.doc.get("config_sources", {})
    for value in sources.values():
        if isinstance(value, str) and value.startswith("profile "):
            return value.split(" ", 1)[1]
    return "?"


def bench_rows(record: Record) -> pd.DataFrame:
    """Measured rows of a bench record, labelled for bars and tables."""
    rows = []
    for r in record.doc.get("rows", []):
        if r.get("status") != "ok":
            continue
        tp = (r.get("timing") or {}).get("throughput") or {}
        fw = r["framework"]
        model = "ours" if r.get("model") == "ours" else r.get("model_label") or r.get("model")
        setting = (f"{r.get('precision')} {r.get('layout_label') or r.get('layout')} "
                   f"{r.get('compile_label') or r.get('compile')} b{r.get('batch')} {r.get('input_size')}px"
                   + ("" if r.get("input", "synthetic") == "synthetic" else f" [{r.get('input')}]"))
        rows.append({
            "framework": fw, "mode": r.get("mode"), "label": f"{FRAMEWORK_LABELS.get(fw, fw)} {model}: {setting}",
            "model": model, "reference": r.get("model") == "reference", "setting": setting,
            "median": tp.get("median", r.get("images_per_s")), "q1": tp.get("q1"), "q3": tp.get("q3"),
            "windows": len(tp.get("windows", [])), "first_step_s": (r.get("timing") or {}).get("first_step_s"),
            "mfu": r.get("mfu"), "peak_mb": ((r.get("memory") or {}).get("peak_bytes") or float("nan")) / 2**20,
            "what": (r.get("memory") or {}).get("kind"), "flops_per_image": r.get("flops_per_image"),
        })
    return pd.DataFrame(rows)


@dataclass
class TrainSet:
    """The training runs a report's accuracy figures are about: the latest record's repeated set
    (``twinbench train --repeats N``), or that record alone (n=1), with their statistics."""

    records: list[Record]
    stats: dict[str, Any]
    margin: float
    chaos: dict[str, Any] | None = None


def train_set(ctx: "Context") -> TrainSet | None:
    from bench.repeats import DEFAULT_MARGIN
    from bench.stats import compare_repeats

    records = ctx.of("train")
    if not records:
        return None
    latest = records[-1]
    name = (latest.doc.get("repeat") or {}).get("set")
    if name:
        same = {}
        for r in records:  # one record per repeat index (a later one replaces an earlier one)
            rep = r.doc.get("repeat") or {}
            if rep.get("set") == name and r.path.parent.parent == latest.path.parent.parent:
                same[rep.get("index")] = r
        records = [same[i] for i in sorted(same)]
    else:
        records = [latest]
    margin, chaos = DEFAULT_MARGIN, None
    for r in ctx.records:
        if name and r.kind == "repeats" and r.doc.get("set") == name:
            margin = float((r.doc.get("plan") or {}).get("margin") or margin)
        if name and r.kind == "chaos" and r.doc.get("set") == name and r.doc.get("format") == "twinbench.chaos":
            chaos = r.doc
    return TrainSet(records, compare_repeats([r.doc for r in records], margin=margin), margin, chaos)


class SectionBuilder:
    """What every group of sections needs: the records (``ctx``) and a place for its figures."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.figures: dict[str, Path] = {}

    def save(self, name: str, fig, *, photo: bool = False) -> str:
        from bench import figures

        path = figures.save(fig, self.ctx.out_dir / name, photo=photo)
        self.figures[name] = path
        return name
