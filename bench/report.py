"""Comparison reports from run records: what a user reads.

    twinbench report RUN_DIR [RUN_DIR ...] -o reports/NAME/

Writes ``report.md``, ``report.html`` (self-contained: every figure embedded as base64, opens
from disk with no network) and the PNG figures into the output folder. All tables are pandas
DataFrames. Sections:

1. Summary: the verdicts in one table (parity, data pipelines, accuracy, throughput, memory,
   MFU) and the conditions (versions, device, threads, precision, batch, manifest, commit).
2. Training: the seed's accuracy/loss figure for both frameworks, epoch times, confusion
   matrices, per-class accuracy, the seed's 8-image prediction grid with both predictions.
3. Parity: per-block error chart (log scale, tolerance lines) and what each mismatch costs.
4. Performance: throughput with IQR per setting, the frameworks' own ResNet-50s beside ours,
   memory, MFU against the measured peak.
5. Residual structure: the block table from ``bench.spec``, diagrams of the block kinds, and
   ||F(x)|| / ||shortcut(x)|| per block before and after training, both frameworks.
6. Models side by side (when records of more than one model are given, e.g. resnet50_c3).

Any subset of records makes a report: a section whose records are missing says so.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from bench import atomic
from bench.errors import UserError
from bench.runset import (Record, Run, load_runs, metrics, parity_result, parity_rows, record_threads,
                          record_versions)

FW = ("tf", "torch")
FW_LABELS = {"tf": "TensorFlow", "torch": "PyTorch"}
GRID_IMAGES = 8  # the seed's plt.subplot(2, 4, i + 1) over one batch of 8


# ---- document model ---------------------------------------------------------------------------------
@dataclass
class Section:
    """A titled list of blocks: ("p", text), ("h3", text), ("table", DataFrame, caption),
    ("figure", file name, caption)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(("table", frame, caption))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", name, caption))


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]
    figures: dict[str, Path]  # file name -> written PNG


# ---- formatting helpers -----------------------------------------------------------------------------
def fmt_num(value: Any, spec: str = ".3g", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def fmt_pct(value: Any) -> str:
    return fmt_num(value if value is None else 100 * float(value), ".1f") + ("%" if value is not None else "")


def fmt_bytes(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value / 2**20:,.0f} MB"


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub markdown from a DataFrame (pandas' to_markdown needs tabulate; this needs nothing)."""
    def cell(v: Any) -> str:
        text = "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _short_commit(commit: dict[str, Any]) -> str:
    cid = commit.get("id")
    if not cid:
        return "unversioned"
    return cid[:10] + (" (dirty)" if commit.get("dirty") else "")


# ---- what the records hold, read once -----------------------------------------------------------------
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


def machine_text(record: Record | None) -> str:
    if record is None:
        return "machine unknown"
    m = record.machine
    cpu = m.get("cpu", {})
    gpus = []
    for env in (record.doc.get("environment", {}).get("frameworks") or record.doc.get("environments") or {}).values():
        if isinstance(env, dict):
            gpus += [g for g in env.get("gpus", []) if g not in gpus]
    device = f"GPU {', '.join(gpus)}" if gpus else "CPU"
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
            f"order {c.get('order')}, init {c.get('init')}, evaluation {c.get('evaluation', 'moving')}"
            f"{', torch ablation ' + c['torch_ablation'] if c.get('torch_ablation') else ''}, {threads} threads; "
            f"{machine_text(record)}; "
            f"{versions_text(record)}; manifest {str(record.doc.get('manifest', {}).get('fingerprint', '?'))[:12]}; "
            f"commit {_short_commit(record.commit)}")


def bench_conditions(record: Record) -> str:
    s = record.doc.get("settings", {})
    th = record.doc.get("threads", {}).get("per_framework", {})
    threads = ", ".join(f"{fw} {t.get('intra_op')}" for fw, t in sorted(th.items()) if isinstance(t, dict))
    return (f"warm-up {s.get('warmup')} steps, {s.get('repeats')} windows of {s.get('steps')} steps; "
            f"threads {threads or '?'}; {machine_text(record)}; {versions_text(record)}; "
            f"commit {_short_commit(record.commit)}")


def profile_of(record: Record) -> str:
    sources = record.doc.get("config_sources", {})
    for value in sources.values():
        if isinstance(value, str) and value.startswith("profile "):
            return value.split(" ", 1)[1]
    return "?"


# ---- tables from records ------------------------------------------------------------------------------
def history_frame(records: Sequence[Record]) -> pd.DataFrame:
    rows = []
    for k, record in enumerate(records):
        for fw, run in sorted(record.doc.get("frameworks", {}).items()):
            for e in run.get("history") or []:
                rows.append({"framework": fw, "run": k, "epoch": e.get("epoch"), "loss": e.get("loss"),
                             "accuracy": e.get("accuracy"), "val_loss": e.get("val_loss"),
                             "val_accuracy": e.get("val_accuracy"), "epoch_time": e.get("time_s"),
                             "train_throughput": e.get("train_throughput"), "data_wait": e.get("data_wait_s")})
    columns = ["framework", "run", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_time",
               "train_throughput", "data_wait"]
    return pd.DataFrame(rows, columns=columns).astype({c: float for c in columns[3:]})


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
            "framework": fw, "mode": r.get("mode"), "label": f"{FW_LABELS.get(fw, fw)} {model}: {setting}",
            "model": model, "reference": r.get("model") == "reference", "setting": setting,
            "median": tp.get("median", r.get("images_per_s")), "q1": tp.get("q1"), "q3": tp.get("q3"),
            "windows": len(tp.get("windows", [])), "first_step_s": (r.get("timing") or {}).get("first_step_s"),
            "mfu": r.get("mfu"), "peak_mb": ((r.get("memory") or {}).get("peak_bytes") or float("nan")) / 2**20,
            "what": (r.get("memory") or {}).get("kind"), "flops_per_image": r.get("flops_per_image"),
        })
    return pd.DataFrame(rows)


def _worst_parity(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell closest to (or furthest past) its limit."""
    scored = [r for r in rows if isinstance(r["value"], (int, float)) and r.get("limit")]
    if not scored:
        return None
    return max(scored, key=lambda r: r["value"] / r["limit"])


# ---- sections -----------------------------------------------------------------------------------------
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


def _pooled_epochs(records: Sequence[Record], fw: str, key: str) -> list[float]:
    """``key`` of epochs 2..N (the first includes tracing) of every run of ``fw``."""
    out = []
    for r in records:
        hist = (r.doc.get("frameworks", {}).get(fw) or {}).get("history") or []
        out += [e.get(key) for e in (hist[1:] or hist) if isinstance(e.get(key), (int, float))]
    return out


def _median_iqr(values: Sequence[float], fmt: str, unit: str) -> str:
    if not values:
        return "-"
    s = pd.Series(values, dtype=float)
    return f"{s.median():{fmt}} {unit} (IQR {s.quantile(0.25):{fmt}}-{s.quantile(0.75):{fmt}}, n={len(s)} epochs)"


class Builder:
    """Builds the sections and writes the figures for one report."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.figures: dict[str, Path] = {}

    def save(self, name: str, fig, *, photo: bool = False) -> str:
        from bench import figures

        path = figures.save(fig, self.ctx.out_dir / name, photo=photo)
        self.figures[name] = path
        return name

    # -- summary --
    def summary(self) -> Section:
        s = Section("Summary")
        ctx = self.ctx
        train, bench, parity = ctx.latest("train"), ctx.latest("bench"), ctx.latest("parity")
        datacheck, session = ctx.latest("datacheck"), ctx.latest("session")
        rows: list[dict[str, str]] = []

        def add(measure: str, tf: str, torch: str, note: str = "") -> None:
            rows.append({"measure": measure, "TensorFlow": tf, "PyTorch": torch, "note": note})

        if parity:
            result = parity_result(parity.doc)
            worst = _worst_parity(parity_rows(result))
            verdict = str(result.get("verdict", "?")).upper()
            first = result.get("first_failure")
            where = (f"first failure: {first['check']} at {first['block']}" if first else
                     f"closest: {worst['check']} at {worst['block']} {worst['value']:.1e} (limit {worst['limit']:.1e}"
                     + (f", {worst['ratio']:.2g} x its own error" if worst.get("ratio") is not None else "") + ")"
                     if worst else "")
            cfg = result.get("config", {})
            add(f"parity ({len(result.get('columns', []))} checks x {len(result.get('rows', []))} points, "
                f"{cfg.get('dtype', '?')})", "reference", verdict, where)
        else:
            add("parity", "-", "-", "not measured")
        if datacheck:
            for decoder, splits in (datacheck.doc.get("decoders") or {}).items():
                worst = max((v.get("max_abs", 0.0) for v in splits.values()), default=float("nan"))
                judged = decoder == "accurate"
                ok = all(v.get("images_over_tolerance", 0) == 0 and v.get("label_mismatches", 0) == 0
                         for v in splits.values())
                add(f"input pipelines, {decoder} decoder", "reference",
                    ("PASS" if ok else "FAIL") if judged else "reported",
                    f"max |TF - torch| {worst:.3g} of 255 per image" + (f" (tolerance {datacheck.doc.get('tolerance')})"
                                                                        if judged else " (TF's fast IDCT; not judged)"))
        tset = train_set(ctx)
        if train and tset:
            self._summary_training(tset, add)
        else:
            add("training", "-", "-", "not run")
        if bench:
            frame = bench_rows(bench)
            for mode, what in (("train", "training"), ("infer", "inference")):
                sub = frame[(frame["mode"] == mode) & (~frame["reference"])] if len(frame) else frame
                if not len(sub):
                    continue
                best = {fw: sub[sub["framework"] == fw].sort_values("median").tail(1) for fw in FW}
                cells = []
                for fw in FW:
                    b = best[fw]
                    cells.append("-" if not len(b) else
                                 f"{b['median'].iloc[0]:.1f} img/s (IQR {b['q1'].iloc[0]:.1f}-{b['q3'].iloc[0]:.1f})")
                settings = {fw: best[fw]["setting"].iloc[0] for fw in FW if len(best[fw])}
                note = (next(iter(settings.values())) if len(set(settings.values())) == 1 else
                        "; ".join(f"{FW_LABELS[fw]}: {v}" for fw, v in settings.items()))
                add(f"{what} throughput, bench (best setting of ours)", *cells, note)
            for mode, what in (("train", "training"), ("infer", "inference")):
                found = {q["framework"]: q for q in bench.doc.get("ratios", [])
                         if q.get("kind") == "ours/reference" and q.get("mode") == mode}
                if found:
                    target = next(iter(found.values())).get("target")
                    add(f"ours / the framework's own ResNet-50, {what}",
                        *(f"{found[fw]['throughput']:.2f}x (per FLOP {found[fw].get('per_flop', float('nan')):.2f}x)"
                          if fw in found else "-" for fw in FW), ratio_note(target, bench.doc.get("settings", {})))
            if len(frame) and frame["mfu"].notna().any():
                cells = []
                for fw in FW:
                    sub = frame[(frame["framework"] == fw) & (~frame["reference"])]
                    cells.append(fmt_pct(sub["mfu"].max()) if len(sub) and sub["mfu"].notna().any() else "-")
                peaks = bench.doc.get("machine_peaks", {})
                add("best MFU (ours)", *cells, "of the measured matmul peak: " + ", ".join(
                    f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in sorted(peaks.items())))
        else:
            add("benchmark", "-", "-", "not run")
        s.table(pd.DataFrame(rows), "Verdicts. Throughput is images per second (higher is better); spread in "
                                    "brackets where repeats exist.")
        s.table(self.conditions(train, bench, parity, session), "Conditions")
        if session:
            s.table(self.steps(session), "What `twinbench run` did, step by step")
        return s

    def _summary_training(self, tset: TrainSet, add) -> None:
        from bench.stats import fmt_ci, fmt_spread

        train = tset.records[-1]
        fws = train.doc.get("frameworks", {})
        c = train.doc.get("config", {})
        per = tset.stats["per_framework"]

        def per_fw(fn) -> tuple[str, str]:
            return tuple(fn(fw) if fw in fws else "-" for fw in FW)  # type: ignore[return-value]

        n_classes = len(train.doc.get("manifest", {}).get("classes") or []) or None
        done = max((len(r.get("history") or []) for r in fws.values()), default=0)
        of = f" of {c.get('epochs')}" if c.get("epochs") and done < c["epochs"] else ""
        comparison = tset.stats.get("comparison") or ""
        add(f"final validation accuracy (epoch {done}{of}), mean ± std over seeds",
            *per_fw(lambda fw: fmt_spread(per.get(fw, {}).get("val_accuracy"))),
            "; ".join(x for x in (f"chance {1 / n_classes:.0%}" if n_classes else "", comparison) if x))
        add("best validation accuracy, mean ± std over seeds",
            *per_fw(lambda fw: fmt_spread(per.get(fw, {}).get("best_val_accuracy"))))
        pair = tset.stats["pairs"].get("tf-torch")
        if pair:
            m = pair["val_accuracy"]
            diff = m["diff"]
            mean = f"{diff['mean']:+.1f} points" if diff.get("mean") is not None else "-"
            add(f"TF - PyTorch, final validation accuracy (n={m['n']} paired seeds)", "reference",
                pair["verdict"]["word"].upper(),
                f"difference {mean}, 95% CI {fmt_ci(m)}; margin ±{tset.margin:g} points; {pair['verdict']['why']}")
        if tset.chaos and tset.chaos.get("status") == "complete":
            add(f"chaos control ({tset.chaos['steps']} steps, manifest order)", "reference",
                f"{tset.chaos['factor']:.3g}x", tset.chaos.get("summary", ""))
        add("training throughput in fit (median of epochs 2..N over all runs)",
            *per_fw(lambda fw: _median_iqr(_pooled_epochs(tset.records, fw, "train_throughput"), ".1f", "img/s")),
            f"{c.get('input_size')} px, batch {c.get('batch_size')}, {c.get('precision')}")
        add("peak memory during training (largest of the runs)",
            *per_fw(lambda fw: fmt_bytes(max(((r.doc["frameworks"].get(fw) or {}).get("memory") or {})
                                             .get("peak_bytes") or 0 for r in tset.records) or None)
                    + f" (n={len(tset.records)})"),
            _memory_label(fws))
        states = {fw: r.get("status") for fw, r in fws.items()}
        if any(v != "complete" for v in states.values()):
            add("training status (latest run)",
                *per_fw(lambda fw: f"{fws[fw].get('status')}: {fws[fw].get('message') or ''}".strip(": ")))

    def conditions(self, train: Record | None, bench: Record | None, parity: Record | None,
                   session: Record | None) -> pd.DataFrame:
        any_record = train or bench or parity or session
        rows = []

        def add(key: str, value: Any) -> None:
            if value not in (None, "", {}):
                rows.append({"condition": key, "value": str(value)})

        if session:
            add("run", f"{session.doc.get('run_id')} ({session.doc.get('status')}), started {session.doc.get('created')}")
            add("command", " ".join(session.doc.get("command", [])))
        add("device", machine_text(any_record))
        add("versions", versions_text(train or bench or any_record))
        add("commit", _short_commit(any_record.commit) if any_record else None)
        if train:
            c = train.doc.get("config", {})
            add("training", f"profile {profile_of(train)}: {c.get('model')} {c.get('input_size')} px, "
                            f"{c.get('pooling')} pooling, {c.get('classes')} classes, batch {c.get('batch_size')}, "
                            f"{c.get('epochs')} epochs, {c.get('optimizer')} lr {c.get('learning_rate')}, "
                            f"{c.get('precision')}, order {c.get('order')}, decoder {c.get('decoder')}, "
                            f"preprocessing {c.get('preprocessing')}, init {c.get('init')}, seed {c.get('seed')}")
            add("threads", f"{c.get('threads')} intra-op on both sides" if c.get("threads") else None)
            m = train.doc.get("manifest", {})
            add("data", f"{m.get('train')} training / {m.get('validation')} validation images, classes "
                        f"{', '.join(m.get('classes') or [])}; manifest fingerprint {str(m.get('fingerprint'))[:16]}")
        if parity:
            cfg = parity_result(parity.doc).get("config", {})
            add("parity", f"{cfg.get('model')} {cfg.get('dtype')}, batch {cfg.get('batch')} at {cfg.get('input_size')} px "
                          f"({cfg.get('pooling')} pooling), checks {', '.join(cfg.get('checks') or [])}; weights "
                          f"{cfg.get('weights') or 'random, calibrated'}; images "
                          f"{'from the manifest' if cfg.get('manifest') else 'random'}")
        if bench:
            st = bench.doc.get("settings", {})
            add("benchmark", f"{st.get('input_size')} px, batches {st.get('batches')}, precisions {st.get('precisions')}, "
                             f"layouts {st.get('layouts')}, compile {st.get('compiles')}, "
                             f"{st.get('repeats')} windows x {st.get('steps')} steps after {st.get('warmup')} warm-up")
        return pd.DataFrame(rows, columns=["condition", "value"])

    def steps(self, session: Record) -> pd.DataFrame:
        rows = [{"step": st.get("name"), "status": st.get("status"), "seconds": fmt_num(st.get("seconds"), ".0f"),
                 "output": st.get("output") or "", "message": st.get("message") or ""}
                for st in session.doc.get("steps", [])]
        return pd.DataFrame(rows, columns=["step", "status", "seconds", "output", "message"])

    # -- training --
    def training(self) -> Section:
        from bench import figures

        s = Section("Training")
        tset = train_set(self.ctx)
        if tset is None:
            s.p("No training record: training was not run (or did not finish an epoch).")
            return s
        records = tset.records
        train = records[-1]
        cond = train_conditions(train)
        history = history_frame(records)
        spread = (f"{len(records)} runs per framework (seeds {records[0].doc['config'].get('seed')}.."
                  f"{records[-1].doc['config'].get('seed')}): line = mean, band = min-max" if len(records) > 1
                  else "one run per framework (n=1, no spread); solid: training, dashed: validation")
        s.figure(self.save("training.png", figures.training_curves(history, conditions=cond, spread=spread)),
                 "The seed's figure for both frameworks: accuracy and loss per epoch, training (solid) and "
                 "validation (dashed).")
        s.figure(self.save("epoch_times.png", figures.epoch_times(
            history, conditions=cond, spread=(f"line: mean of {len(records)} runs per framework, band: min-max"
                                              if len(records) > 1 else "one run per framework"))),
                 "Wall time per epoch (first request for a batch to the end of validation).")
        self.training_statistics(s, tset, cond)
        last_seed = train.doc.get("config", {}).get("seed")
        s.table(self.final_table(train), f"Final figures per framework of one run (seed {last_seed}, n=1; times and "
                                         f"throughput: median of epochs 2..N, the first includes tracing)")
        fws = train.doc.get("frameworks", {})
        classes = list(train.doc.get("manifest", {}).get("classes") or [])
        matrices = {fw: np.asarray(r["confusion_matrix"]) for fw, r in fws.items() if r.get("confusion_matrix")}
        if matrices:
            shown = {fw: m[:, :len(classes)] if classes and m.shape[1] > len(classes) else m for fw, m in matrices.items()}
            s.figure(self.save("confusion.png", figures.confusion_matrices(shown, classes, conditions=cond)),
                     "Confusion matrices on the validation split (rows: true class, columns: predicted).")
            extra = {fw: int(m[:, len(classes):].sum()) for fw, m in matrices.items()
                     if classes and m.shape[1] > len(classes)}
            if any(extra.values()):
                s.p("Predictions outside the dataset's classes (the 1000-way head): "
                    + ", ".join(f"{FW_LABELS[fw]} {n}" for fw, n in extra.items()) + ".")
            per_class = pd.DataFrame({"class": classes, **{FW_LABELS[fw]: [fmt_pct((fws[fw].get("per_class_accuracy") or {}).get(c))
                                                                              for c in classes] for fw in FW if fw in fws}})
            s.table(per_class, "Per-class validation accuracy")
        grid = self.prediction_grid(train, cond)
        if grid:
            s.figure(grid, "The seed's prediction grid: the first 8 validation images with each framework's "
                           "predicted class; red: a wrong prediction.")
        return s

    def training_statistics(self, s: Section, tset: TrainSet, cond: str) -> None:
        """The accuracy table with spread, the paired differences with their CIs and verdict, the
        noise floor, and the chaos control."""
        from bench import figures
        from bench.stats import METRICS, fmt_ci

        stats = tset.stats
        rows = []
        for fw, per in stats["per_framework"].items():
            for metric, (what, _, _, unit, _) in METRICS.items():
                d = per[metric]
                digits = ".1f" if unit else ".3g"
                rows.append({"framework": FW_LABELS.get(fw, fw), "measure": what, "n": d["n"],
                             "mean": fmt_num(d["mean"], digits), "std": fmt_num(d["std"], digits),
                             "min": fmt_num(d["min"], digits), "max": fmt_num(d["max"], digits),
                             "per seed": ", ".join(format(v, digits) for v in d["values"])})
        s.table(pd.DataFrame(rows), f"Each framework over {stats['n_repeats']} run(s), one per seed (accuracies in "
                                    f"%; std with n-1); {stats.get('comparison', '')}")
        rows = []
        for name, pair in stats["pairs"].items():
            for metric, (what, _, _, unit, judged) in METRICS.items():
                m = pair[metric]
                rows.append({"pair": name, "measure": what, "n pairs": m["n"],
                             "mean difference": fmt_num((m["diff"] or {}).get("mean"), "+.2f"),
                             "95% CI (t)": fmt_ci(m, 2).split(" (")[0] if m.get("ci_t") else "-",
                             "95% CI (bootstrap)": (f"[{m['ci_bootstrap'][0]:+.2f}, {m['ci_bootstrap'][1]:+.2f}]"
                                                    if m.get("ci_bootstrap") else "-"),
                             "paired t-test p": fmt_num((m.get("ttest") or {}).get("p"), ".3g"),
                             "TOST p": fmt_num((m.get("tost") or {}).get("p"), ".3g") if judged else "-",
                             "verdict": m["verdict"]["word"] if judged and m.get("verdict") else ""})
        if rows:
            s.table(pd.DataFrame(rows), f"Paired differences TF - PyTorch (run i of both: seed + i, one starting "
                                        f"bundle). Verdict on final validation accuracy with margin ±{tset.margin:g} "
                                        f"points: {stats['method']}")
            for name, pair in stats["pairs"].items():
                gap = (pair["val_accuracy"]["diff"] or {}).get("mean")
                floor = ", ".join(f"{FW_LABELS.get(fw, fw)} {fmt_num(v, '.1f')}" for fw, v in pair["noise_floor"].items())
                s.p(f"Noise floor ({name}): the between-framework gap of final validation accuracy is "
                    f"{fmt_num(abs(gap) if gap is not None else None, '.1f')} points; the seed-to-seed standard "
                    f"deviation within each framework is {floor} points. Verdict: **{pair['verdict']['word']}** "
                    f"({pair['verdict']['why']}).")
        chaos = tset.chaos
        if chaos and chaos.get("status") == "complete":
            wd, loss = chaos["weight_distance"], chaos["loss"]
            n = len(wd["cross"])
            frame = pd.DataFrame({"step": np.arange(n), "cross": wd["cross"], "self": wd["self"]})
            for key, col in (("tf", "loss_tf"), ("torch", "loss_torch"), ("torch-1ulp", "loss_ulp")):
                values = loss.get(key, [])
                # losses are per step 1..K; the weights start at step 0 (the bundle)
                frame[col] = [np.nan] + list(values[:n - 1]) + [np.nan] * max(0, n - 1 - len(values))
            s.figure(self.save("chaos.png", figures.chaos_curves(frame, conditions=cond)),
                     f"The chaos control: {chaos['summary']}. Factor {chaos['factor']:.3g} (threshold "
                     f"{chaos['factor_threshold']:g}); at the last step {chaos['factor_final_step']:.3g} "
                     f"(TF-torch {chaos['cross_final']:.2e}, torch-1ulp {chaos['self_final']:.2e}).")
        elif chaos:
            s.p(f"Chaos control: {chaos.get('message', chaos.get('status'))}.")

    def final_table(self, train: Record) -> pd.DataFrame:
        rows = []
        for fw, r in sorted(train.doc.get("frameworks", {}).items()):
            hist = r.get("history") or []
            last = hist[-1] if hist else {}
            later = hist[1:] or hist
            mem = r.get("memory") or {}
            rows.append({
                "framework": FW_LABELS.get(fw, fw), "status": r.get("status"), "epochs": len(hist),
                "loss": fmt_num(last.get("loss"), ".4f"), "accuracy": fmt_pct(last.get("accuracy")),
                "val_loss": fmt_num(last.get("val_loss"), ".4f"), "val_accuracy": fmt_pct(last.get("val_accuracy")),
                "epoch s": fmt_num(_median([e.get("time_s") for e in later]), ".1f"),
                "train img/s": fmt_num(_median([e.get("train_throughput") for e in later]), ".1f"),
                "data wait": fmt_pct(_ratio(sum(e.get("data_wait_s") or 0 for e in later),
                                            sum(e.get("time_s") or 0 for e in later))),
                "peak memory": f"{fmt_bytes(mem.get('peak_bytes'))} ({mem.get('measure', '?')})",
            })
        return pd.DataFrame(rows)

    def prediction_grid(self, train: Record, cond: str) -> str | None:
        from bench import figures

        fws = {fw: r for fw, r in train.doc.get("frameworks", {}).items() if (r.get("predictions") or {}).get("paths")}
        if not fws:
            return None
        first = next(iter(fws.values()))["predictions"]
        paths, labels = first["paths"][:GRID_IMAGES], first["labels"][:GRID_IMAGES]
        root = Path(train.doc.get("manifest", {}).get("root") or ".")
        images, captions = [], []
        for p in paths:
            path = Path(p) if os.path.isabs(p) else root / p
            images.append(_thumbnail(path))
            captions.append(Path(p).name if path.is_file() else f"{Path(p).name} (not found)")
        predicted = {fw: r["predictions"]["predicted"][:len(paths)] for fw, r in fws.items()
                     if r["predictions"].get("paths", [])[:len(paths)] == paths}
        classes = list(train.doc.get("manifest", {}).get("classes") or [])
        return self.save("predictions.png", figures.prediction_grid(images, labels, predicted, classes,
                                                                     captions=captions, conditions=cond), photo=True)

    # -- parity --
    def parity(self) -> Section:
        from bench import figures
        from bench.spec import build_spec

        s = Section("Parity")
        record = self.ctx.latest("parity")
        if record is None:
            s.p("No parity record: parity was not run.")
            return s
        result = parity_result(record.doc)
        cfg = result.get("config", {})
        rows = parity_rows(result)
        verdict = str(result.get("verdict", "?")).upper()
        first = result.get("first_failure")
        s.p(f"**{verdict}**: TensorFlow is the reference; {len(rows)} cells ({len(result.get('columns', []))} checks "
            f"x {len(result.get('rows', []))} probe points), {cfg.get('dtype')}, batch {cfg.get('batch')} at "
            f"{cfg.get('input_size')} px." + (f" First divergent block: {first['block']} ({first['check']}): "
                                              f"{first.get('reason', '')}." if first else ""))
        judge = result.get("judge") or {}
        if judge.get("mode") == "calibrated":
            s.p(f"Tolerances calibrated in this run: each framework's float32 error against its own float64 on the "
                f"same weights and inputs (the trajectory: against itself from the bundle moved by one ulp); a cell "
                f"passes when the cross-framework error is at most {judge.get('k', 2):g} x the larger own error "
                f"(floor {judge.get('floor', 0):.1e}). Gradients and the trajectory by the normwise error "
                f"||a-b||/||ref|| per tensor; the rest by max|a-b|/max|ref|.")
        frame = pd.DataFrame(rows)
        if len(frame):
            try:
                order = ["input"] + build_spec(cfg.get("model", "resnet50"), int(cfg.get("classes", 1000)),
                                               int(cfg.get("input_size", 224)), cfg.get("pooling", "avg7")).probe_points + ["loss"]
            except UserError:
                order = list(result.get("rows", []))
            order = [p for p in order if p in set(frame["block"])] + [b for b in result.get("rows", []) if b not in order]
            cond = (f"{cfg.get('model')} {cfg.get('dtype')}, batch {cfg.get('batch')} at {cfg.get('input_size')} px; "
                    f"{machine_text(record)}; commit {_short_commit(record.commit)}; one measurement per cell "
                    f"(deterministic: a repeat gives the same numbers)")
            s.figure(self.save("parity.png", figures.parity_errors(frame, order=order, conditions=cond)),
                     "Cross-framework error per probe point, one line per check (max|a-b|/max|ref|; gradients "
                     "and trajectory ||a-b||/||ref|| when calibrated); dotted: each cell's limit. Right: the "
                     "ratio to the larger of the two frameworks' own float32 errors.")
            s.table(self.parity_summary(frame, result), "Per check: the cell nearest its limit (cross error, own "
                                                        "errors, ratio), the limits, and the first failing block")
        ablations = record.doc.get("ablations") if record.doc.get("format") == "twinbench.parity-ablations" else None
        if ablations:
            s.h3("What each known mismatch costs")
            s.table(self.ablation_table(record.doc), "Each alignment switched off alone on the torch side, against "
                                                     "the same TF reference: the check that catches it and where.")
        else:
            s.p("No ablation table in this record (run `twinbench parity --ablation-table --json OUT`).")
        curve = result.get("trajectory")
        if curve and curve.get("steps"):
            s.figure(self.save("trajectory.png", figures.parity_trajectory(
                curve, conditions=f"{cfg.get('model')} {cfg.get('dtype')}, batch {cfg.get('batch')} at "
                                  f"{cfg.get('input_size')} px; {machine_text(record)}")),
                     f"{curve['steps']} training steps on identical batches in identical order: the losses and "
                     f"how far the two frameworks drift apart.")
        loss = result.get("loss")
        if loss:
            s.p(f"Loss on the parity batch: TF {loss.get('tf'):.8g}, torch {loss.get('torch'):.8g}.")
        return s

    def parity_summary(self, frame: pd.DataFrame, result: dict[str, Any]) -> pd.DataFrame:
        rows = []
        for check, sub in frame.groupby("check", sort=False):
            score = sub["value"].astype(float) / sub["limit"].astype(float)
            worst = sub.loc[score.idxmax()]
            failing = sub[~sub["passed"]]
            limits = sub["limit"].astype(float).sort_values()
            rows.append({"check": check, "metric": worst["metric"], "judge": worst["judge"], "at": worst["block"],
                         "cross error": fmt_num(float(worst["value"]), ".2e"),
                         "own TF": fmt_num(worst["own_tf"], ".1e"), "own torch": fmt_num(worst["own_torch"], ".1e"),
                         "ratio": fmt_num(worst["ratio"], ".2g"), "limit there": fmt_num(worst["limit"], ".1e"),
                         "median limit": fmt_num(float(limits.iloc[len(limits) // 2]), ".1e"),
                         "fixed tolerance": fmt_num(worst["fixed_tol"], ".0e"),
                         "cells": len(sub), "failing": len(failing),
                         "first failing block": failing["block"].iloc[0] if len(failing) else "-"})
        return pd.DataFrame(rows)

    def ablation_table(self, doc: dict[str, Any]) -> pd.DataFrame:
        rows = []
        for name, a in (doc.get("ablations") or {}).items():
            first = a.get("first_failure") or {}
            worst = a.get("worst") or {}
            check = first.get("check")
            expected = a.get("expected") or {}
            rows.append({"ablation": name, "what it switches off": a.get("description", ""),
                         "first failure": f"{check} at {first.get('block')}" if first else "none (not detected)",
                         "error there": fmt_num(first.get("value", first.get("max_rel")), ".1e"),
                         "x its limit": fmt_num(_ratio(first.get("value", first.get("max_rel")),
                                                       first.get("limit", first.get("tol"))), ".3g"),
                         "x own error": fmt_num(first.get("ratio"), ".3g"),
                         "worst forward": fmt_num(worst.get("forward"), ".1e"),
                         "expected": f"{expected.get('check')} at {expected.get('block')}" if expected else "-",
                         "as expected": {True: "yes", False: "no"}.get(a.get("detected"), "-")})
        return pd.DataFrame(rows)

    # -- performance --
    def performance(self) -> Section:
        from bench import figures

        s = Section("Performance")
        record = self.ctx.latest("bench")
        train = self.ctx.latest("train")
        if record is None:
            s.p("No benchmark record: the benchmark was not run.")
        else:
            frame = bench_rows(record)
            cond = bench_conditions(record)
            if len(frame):
                frame = frame.sort_values(["mode", "framework", "reference", "setting"]).reset_index(drop=True)
                reps = sorted(set(frame["windows"]))
                spread = (f"bars: median; error bars: interquartile range over {'/'.join(map(str, reps))} timed "
                          f"windows; hatched: the framework's own ResNet-50")
                s.figure(self.save("throughput.png", figures.throughput_bars(frame, conditions=cond, spread=spread)),
                         "Throughput per framework and setting, ours beside the framework's own ResNet-50 "
                         "(torchvision / keras.applications).")
                s.table(self.bench_table(frame), "Every measured row (warm-up excluded; first step = tracing/compile)")
                # One list for both modes: say the mode in each bar's label, training first.
                by_mode = frame.assign(label=[f"{'training' if m == 'train' else 'inference'}: {lab}"
                                              for m, lab in zip(frame["mode"], frame["label"])],
                                       order=[0 if m == "train" else 1 for m in frame["mode"]])
                by_mode = by_mode.sort_values(["order", "framework", "reference"], kind="stable")
                if frame["peak_mb"].notna().any():
                    s.figure(self.save("memory.png", figures.memory_bars(by_mode.dropna(subset=["peak_mb"]),
                                                                         conditions=cond)),
                             "Peak memory per row, measured in a separate loop after resetting the peak counters.")
                if frame["mfu"].notna().any():
                    peaks = record.doc.get("machine_peaks", {})
                    peak_text = "measured peak: " + ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s (a large matmul)"
                                                              for d, v in sorted(peaks.items()))
                    s.figure(self.save("mfu.png", figures.mfu_bars(by_mode.dropna(subset=["mfu"]), peaks=peak_text,
                                                                   conditions=cond)),
                             "MFU: achieved FLOP/s (FLOPs per image from bench.spec) over the machine's measured peak.")
            failed = [r for r in record.doc.get("rows", []) if r.get("status") != "ok"]
            if failed:
                s.table(pd.DataFrame([{"row": r.get("id"), "status": r.get("status"), "error": r.get("error")}
                                      for r in failed]), "Rows that did not measure")
            ratios = record.doc.get("ratios", [])
            if ratios:
                s.table(pd.DataFrame([{"ratio": q.get("kind"), "framework": FW_LABELS.get(q["framework"], q["framework"]),
                                       "mode": q.get("mode"), "throughput": f"{q['throughput']:.3f}x",
                                       "per FLOP": fmt_num(q.get("per_flop"), ".3f") + ("x" if q.get("per_flop") else ""),
                                       "target": f">= {q.get('target')}"} for q in ratios]),
                        "Ours against the framework's own ResNet-50 (same batch, precision and run), and end-to-end "
                        "against compute-only")
            for note in record.doc.get("notes", []):
                s.p(f"Note: {note}")
        if train:
            s.p(f"Training-loop throughput (`twinbench train`, {train.doc.get('config', {}).get('input_size')} px) "
                f"is in the Training section; it includes the input pipeline.")
        return s

    def bench_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({
            "framework": [FW_LABELS.get(f, f) for f in frame["framework"]], "model": frame["model"],
            "mode": frame["mode"], "setting": frame["setting"],
            "img/s (median)": [fmt_num(v, ".2f") for v in frame["median"]],
            "IQR": [f"{fmt_num(a, '.2f')}-{fmt_num(b, '.2f')}" for a, b in zip(frame["q1"], frame["q3"])],
            "windows": frame["windows"], "first step s": [fmt_num(v, ".2f") for v in frame["first_step_s"]],
            "MFU": [fmt_pct(v) if v == v and v is not None else "-" for v in frame["mfu"]],
            "peak MB": [fmt_num(v, ",.0f") for v in frame["peak_mb"]],
        })

    # -- residual structure --
    def residuals(self) -> Section:
        from bench import figures
        from bench.spec import build_spec

        s = Section("Residual structure")
        ctx = self.ctx
        train = ctx.latest("train")
        size = int(train.doc.get("config", {}).get("input_size", 224)) if train else 224
        spec = build_spec(ctx.model, 1000)
        s.p(f"The block table of `{ctx.model}` from `bench.spec` at the seed's 224 px and 1000 classes "
            f"(FLOPs = 2 x multiply-accumulates of convs and the dense layer).")
        s.table(block_table(spec), "Per block: kind, filters, stride, output shape, parameters, forward FLOPs")
        if size != 224:
            small = build_spec(ctx.model, 1000, size, "global")
            s.p(f"At the training size here ({size} px): {small.forward_flops() / 1e9:.2f} GFLOPs forward per image "
                f"({small.forward_flops() / spec.forward_flops():.3f} of 224 px).")
        s.figure(self.save("blocks.png", figures.block_diagrams(spec)),
                 "The block kinds, drawn from bench.spec: main path F(x) on the left, shortcut on the right.")
        record = ctx.latest("residuals")
        if record is None:
            s.p("No residual measurements in this run.")
            return s
        table = residual_frame(record)
        images = record.doc.get("images", {})
        cond = (f"{record.doc.get('model')} at {images.get('input_size', '?')} px, {images.get('count', '?')} validation "
                f"images; inference mode; {machine_text(ctx.latest('train') or record)}")
        s.figure(self.save("residual_ratios.png", figures.residual_ratios(table, conditions=cond)),
                 "||F(x)|| / ||shortcut(x)|| per residual unit on validation images, both frameworks, from the "
                 "shared starting weights (before) and each framework's trained weights (after).")
        wide = table.pivot_table(index="unit", columns=["stage", "framework"], values="median", sort=False)
        wide.columns = [f"{stage} {FW_LABELS.get(fw, fw)}" for stage, fw in wide.columns]
        wide = wide.reset_index()
        for col in wide.columns[1:]:
            wide[col] = [fmt_num(v, ".3f") for v in wide[col]]
        s.table(wide, "Median ratio over the images per residual unit")
        before = table[table["stage"] == "before"]
        if len(before) and set(before["framework"]) == set(FW):
            tf = before[before["framework"] == "tf"].set_index("unit")["median"]
            torch = before[before["framework"] == "torch"].set_index("unit")["median"]
            gap = float((tf - torch).abs().max() / tf.abs().max())
            s.p(f"Before training both frameworks hold the same weights: their ratios agree to {gap:.1e} "
                f"(relative), a per-block parity check on its own.")
        typical = table.groupby(["stage", "framework"])["median"].median()
        if "after" in typical and "before" in typical:
            s.p("Median over the units: " + "; ".join(
                f"{FW_LABELS.get(fw, fw)} {typical['before'].get(fw, float('nan')):.2f} before training, "
                f"{typical['after'].get(fw, float('nan')):.2f} after" for fw in FW if fw in typical["after"])
                + ". Below 1 the shortcut carries most of the signal and the block adds a correction to it.")
        return s

    # -- models side by side --
    def models(self) -> Section | None:
        from bench import figures
        from bench.spec import build_spec

        models = self.ctx.models
        if len(models) < 2:
            return None
        s = Section("Models side by side")
        rows = []
        tables = {}
        for model in models:
            spec = build_spec(model, 1000)
            tables[model] = pd.DataFrame(spec.block_table())
            row: dict[str, Any] = {"model": model, "parameters": f"{spec.param_counts()['total']:,}",
                                   "GFLOPs (224 px)": f"{spec.forward_flops() / 1e9:.2f}"}
            ms = {(m.name, m.labels): m for m in metrics(self.ctx.of("train", model) + self.ctx.of("bench", model))}
            for fw in FW:
                lab = FW_LABELS[fw]
                acc = ms.get(("accuracy.val", (("framework", fw),)))
                fit = ms.get(("throughput.fit", (("framework", fw),)))
                mem = ms.get(("memory.peak", (("framework", fw), ("during", "training"))))
                row[f"val acc {lab}"] = fmt_pct(acc.value) if acc else "-"
                row[f"fit img/s {lab}"] = fmt_num(fit.value, ".1f") if fit else "-"
                row[f"train peak {lab}"] = fmt_num(mem.value, ",.0f") + " MB" if mem else "-"
                for mode in ("train", "infer"):
                    best = [m for (name, labels), m in ms.items() if name == f"throughput.{mode}"
                            and dict(labels).get("framework") == fw and dict(labels).get("setting", "").startswith("ours")]
                    row[f"bench {mode} img/s {lab}"] = fmt_num(max(m.value for m in best), ".1f") if best else "-"
            trains = self.ctx.of("train", model)
            row["training"] = (f"{trains[-1].doc['config'].get('input_size')} px, {trains[-1].doc['config'].get('epochs')} "
                               f"epochs") if trains else "-"
            rows.append(row)
        s.table(pd.DataFrame(rows).set_index("model").T.reset_index().rename(columns={"index": "measure"}),
                "Parameters and FLOPs from bench.spec; accuracy, throughput and memory from each model's records "
                "(same manifest and settings where the records say so)")
        s.figure(self.save("models.png", figures.model_blocks(tables)),
                 "Parameters and forward FLOPs per block, each model (224 px).")
        for model in models:
            if model != self.ctx.model:
                s.figure(self.save(f"blocks_{model}.png", figures.block_diagrams(build_spec(model, 1000))),
                         f"The block kinds of {model}, drawn from bench.spec.")
        return s


def ratio_note(target: Any, settings: dict[str, Any]) -> str:
    """The target of an ours/reference ratio, and the size it is judged at: below ~128 px
    per-operation overhead, not the network, sets the ratio (issue 6 measures it at 224 px)."""
    size = settings.get("input_size")
    where = f"this run {size} px" if size else "same run"
    judged = "" if not size or size >= 197 else "; judged at 224 px, where per-op overhead does not dominate"
    return f"target >= {target}{judged}; {where}, same batch and precision"


def block_table(spec) -> pd.DataFrame:
    t = pd.DataFrame(spec.block_table())
    t["params"] = [f"{v:,}" for v in t["params"]]
    t["GFLOPs"] = [f"{v / 1e9:.3f}" for v in t["flops"]]
    return t.drop(columns=["flops"])


def residual_frame(record: Record) -> pd.DataFrame:
    rows = []
    for stage in ("before", "after"):
        for fw, result in sorted((record.doc.get("stages", {}).get(stage) or {}).items()):
            for u in result.get("units", []):
                rows.append({"unit": u["unit"], "block": u["block"], "framework": fw, "stage": stage,
                             "median": u["ratio_median"], "q1": u["ratio_q1"], "q3": u["ratio_q3"],
                             "mean": u["ratio_mean"]})
    return pd.DataFrame(rows, columns=["unit", "block", "framework", "stage", "median", "q1", "q3", "mean"])


def _median(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b) if b else None
    except (TypeError, ValueError):
        return None


MEMORY_MEASURES = {"cpu_peak_rss": "peak RSS of each worker process", "gpu_allocator_peak": "allocator peak on the GPU"}


def _memory_label(fws: dict[str, Any]) -> str:
    """What the memory figures are, in a few words (the record's ``label`` has the long form)."""
    measures = {(r.get("memory") or {}).get("measure") for r in fws.values()}
    measures.discard(None)
    return "; ".join(MEMORY_MEASURES.get(m, m) for m in sorted(measures))


def _thumbnail(path: Path) -> np.ndarray:
    """The image as RGB uint8 (for display only); grey when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((224, 224))
            return np.asarray(im)
    except (OSError, ValueError):
        return np.full((64, 64, 3), 200, np.uint8)


# ---- rendering ------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#202124;padding:0 1em}
h1{margin-bottom:0.1em} .sub{color:#5f6368;margin-top:0} nav a{margin-right:1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #dadce0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f4} caption{caption-side:top;text-align:left;color:#5f6368;padding:4px 0;font-size:13px}
figure{margin:1em 0 2em} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#5f6368;font-size:13px} h2{border-bottom:1px solid #dadce0;padding-bottom:4px;margin-top:2em}
code{background:#f1f3f4;padding:1px 4px}
"""


def _inline(text: str) -> str:
    """The little markdown the report's paragraphs use (**bold**, `code`) as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`+(.+?)`+", r"<code>\1</code>", out)


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", report.subtitle, ""]
    lines.append(" | ".join(f"[{s.title}](#{s.anchor})" for s in report.sections))
    for s in report.sections:
        lines += ["", f"## {s.title}", ""]
        for block in s.blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "h3":
                lines += [f"### {block[1]}", ""]
            elif block[0] == "table":
                if block[2]:
                    lines += [f"*{block[2]}*", ""]
                lines += [markdown_table(block[1]), ""]
            elif block[0] == "figure":
                lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_html(report: Report) -> str:
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1><p class='sub'>{_inline(report.subtitle)}</p>", "<nav>"]
    parts += [f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in report.sections]
    parts.append("</nav>")
    for s in report.sections:
        parts.append(f"<h2 id='{s.anchor}'>{html.escape(s.title)}</h2>")
        for block in s.blocks:
            if block[0] == "p":
                parts.append(f"<p>{_inline(block[1])}</p>")
            elif block[0] == "h3":
                parts.append(f"<h3>{html.escape(block[1])}</h3>")
            elif block[0] == "table":
                table = block[1].to_html(index=False, border=0, escape=True, na_rep="-")
                if block[2]:
                    table = table.replace(">", f"><caption>{html.escape(block[2])}</caption>", 1)
                parts.append(table)
            elif block[0] == "figure":
                data = base64.b64encode(report.figures[block[1]].read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt='{html.escape(block[2], quote=True)}' "
                             f"src='data:image/png;base64,{data}'><figcaption>{html.escape(block[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- entry points ---------------------------------------------------------------------------------------
def build_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, title: str | None = None,
                 quiet: bool = True) -> Path:
    """Read every record in ``paths``, write report.md, report.html and the figures into
    ``out_dir``; return the HTML's path."""
    runs = load_runs(paths)
    records = [r for run in runs for r in run.records]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(runs, records, choose_model(records), out, quiet)
    builder = Builder(ctx)
    steps = [("summary", builder.summary), ("training", builder.training), ("parity", builder.parity),
             ("performance", builder.performance), ("residual structure", builder.residuals),
             ("models", builder.models)]
    sections = []
    for name, step in steps:
        if not quiet:
            print(f"report: {name}", file=sys.stderr, flush=True)
        section = step()
        if section is not None:
            sections.append(section)
    session = ctx.latest("session")
    names = ", ".join(run.name for run in runs)
    subtitle = (f"`{ctx.model}`, TensorFlow vs PyTorch; from {len(records)} record(s) in {names}; "
                f"written {time.strftime('%Y-%m-%d %H:%M')}")
    report = Report(title or (f"twinbench report: {session.doc.get('run_id')}" if session else "twinbench report"),
                    subtitle, sections, builder.figures)
    atomic.write_text(out / "report.md", render_markdown(report))
    atomic.write_text(out / "report.html", render_html(report))
    return out / "report.html"


def register(sub) -> None:
    p = sub.add_parser("report", help="report.md + self-contained report.html + figures from run records",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or record files")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder, e.g. reports/NAME/")
    p.add_argument("--title", help="report title")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: choose another -o")
    path = build_report(args.runs, out, title=args.title, quiet=args.quiet)
    print(f"wrote {path} and {path.with_name('report.md')} ({len(list(out.glob('*.png')))} figures)")
    return 0
