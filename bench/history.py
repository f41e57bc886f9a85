"""The key figures across many runs, in time order: parity and performance over versions.

    twinbench history DIR [-o OUT_DIR] [--csv FILE]

Reads every run record under DIR (``twinbench run`` directories count as one run each; standalone
``train``, ``bench`` and ``parity`` records as one each), orders them by date, and prints one row
per run and framework: date, commit, versions, parity verdict and worst error, validation
accuracy, training-loop and benchmark throughput (median and IQR), peak memory. With ``-o`` it
also writes ``history.png`` (one panel per figure, x = date and commit) and ``history.csv``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.errors import UserError
from bench.quartiles import quartiles
from bench.runset import Metric, Run, load_runs, metrics, record_versions

# (column, panel title) of the plot, in order.
PLOTTED = (
    ("parity_worst", "parity: worst max relative error (log)"),
    ("val_accuracy", "final validation accuracy (mean over a run's repeats; band: min-max)"),
    ("fit_img_s", "training-loop throughput (img/s)"),
    ("bench_train_img_s", "bench training throughput, ours (img/s)"),
    ("bench_infer_img_s", "bench inference throughput, ours (img/s)"),
    ("train_peak_mb", "peak memory during training (MB)"),
)

# The package whose version a framework's row shows (keras-torch: Keras, which runs the model).
VERSION_OF = {"tf": "tensorflow", "torch": "torch", "keras-torch": "keras"}


def _quartiles(samples: Sequence[float]) -> tuple[float | None, float | None]:
    if len(samples) < 2:
        return None, None
    q1, _, q3 = quartiles(samples)
    return q1, q3


def _best(ms: list[Metric]) -> Metric | None:
    return max(ms, key=lambda m: m.value) if ms else None


def run_rows(run: Run) -> list[dict[str, Any]]:
    """One row per framework of a run: its key figures (parity is shared by both rows)."""
    ms = metrics(run.records)
    versions: dict[str, str] = {}
    for record in run.records:
        for k, v in record_versions(record).items():
            versions.setdefault(k, v)
    parity = [m for m in ms if m.name == "parity.max_rel"]
    parity_verdict = ("pass" if all(m.passed is not False for m in parity) else "fail") if parity else None
    worst = max((m.value for m in parity if math.isfinite(m.value)), default=None)
    commit = run.commit
    when = pd.to_datetime(run.created, utc=True, errors="coerce")
    rows = []
    frameworks = sorted({m.label("framework") for m in ms if m.label("framework")}) or ["-"]
    for fw in frameworks:
        mine = [m for m in ms if m.label("framework") == fw]

        def one(name: str, **labels: str) -> Metric | None:
            found = [m for m in mine if m.name == name and all(m.label(k) == v for k, v in labels.items())]
            return found[0] if found else None

        fit = one("throughput.fit")
        acc = one("accuracy.val")
        mem = one("memory.peak", during="training")
        row: dict[str, Any] = {
            "when": when, "run": run.name, "path": str(run.path), "model": ",".join(run.models) or "-",
            "commit": (commit.get("id") or "")[:10] + ("+" if commit.get("dirty") else ""),
            "framework": fw, "version": versions.get(VERSION_OF.get(fw, fw), "-"),
            "parity": parity_verdict, "parity_worst": worst,
            # the mean over the run's repeats, with min-max (history_plot draws the band)
            "val_accuracy": (sum(acc.samples) / len(acc.samples) if acc and acc.samples else acc.value if acc else None),
            "val_accuracy_lo": min(acc.samples) if acc and len(acc.samples) > 1 else None,
            "val_accuracy_hi": max(acc.samples) if acc and len(acc.samples) > 1 else None,
            "val_accuracy_n": (len(acc.samples) or 1) if acc else None,
            "fit_img_s": fit.value if fit else None,
            "train_peak_mb": mem.value if mem else None,
        }
        if fit:
            row["fit_img_s_lo"], row["fit_img_s_hi"] = _quartiles(fit.samples)
        for mode in ("train", "infer"):
            best = _best([m for m in mine if m.name == f"throughput.{mode}" and m.label("setting").startswith("ours")])
            col = f"bench_{mode}_img_s"
            row[col] = best.value if best else None
            row[f"{col}_lo"], row[f"{col}_hi"] = _quartiles(best.samples) if best else (None, None)
        rows.append(row)
    return rows


def history_frame(runs: Sequence[Run]) -> pd.DataFrame:
    rows = [row for run in runs for row in run_rows(run)]
    frame = pd.DataFrame(rows)
    if not len(frame):
        return frame
    frame = frame.sort_values(["when", "run", "framework"], kind="stable").reset_index(drop=True)
    frame["tick"] = [f"{w:%Y-%m-%d %H:%M} {c or '-'}" if pd.notna(w) else f"? {c}"
                     for w, c in zip(frame["when"], frame["commit"])]
    return frame


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    def num(col: str, spec: str) -> list[str]:
        return ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
                for v in frame.get(col, [None] * len(frame))]

    return pd.DataFrame({
        "date": [f"{w:%Y-%m-%d %H:%M}" if pd.notna(w) else "?" for w in frame["when"]],
        "commit": frame["commit"], "run": frame["run"], "model": frame["model"], "fw": frame["framework"],
        "version": frame["version"], "parity": frame["parity"].fillna("-"), "worst rel": num("parity_worst", ".1e"),
        "val acc": num("val_accuracy", ".1%"), "n": num("val_accuracy_n", ".0f"), "fit img/s": num("fit_img_s", ".1f"),
        "bench train img/s": num("bench_train_img_s", ".1f"), "bench infer img/s": num("bench_infer_img_s", ".1f"),
        "train peak MB": num("train_peak_mb", ",.0f"),
    })


def register(sub) -> None:
    p = sub.add_parser("history", help="key figures across a directory of runs, over time",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", nargs="+", help="directory of run records (e.g. runs/)")
    p.add_argument("-o", "--out", metavar="DIR", help="also write history.png and history.csv here")
    p.add_argument("--model", help="only runs of this model")
    p.set_defaults(func=cmd_history)


def cmd_history(args: argparse.Namespace) -> int:
    from bench import atomic

    runs = load_runs(args.dir)
    if args.model:
        runs = [r for r in runs if args.model in r.models]
        if not runs:
            raise UserError(f"no run of model {args.model!r} in {', '.join(args.dir)}")
    frame = history_frame(runs)
    table = display_table(frame)
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 40):
        print(table.to_string(index=False))
    print(f"{len(runs)} run(s), oldest first")
    if args.out:
        from bench import figures

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "history.csv", frame.drop(columns=["tick"]).to_csv(index=False))
        machines = sorted({f"{r.machine.get('cpu', {}).get('model', '?')}" for r in runs})
        fig = figures.history_plot(frame, [(c, t) for c, t in PLOTTED],
                                   conditions=f"machines: {'; '.join(machines)}")
        figures.save(fig, out / "history.png")
        print(f"wrote {out / 'history.png'} and {out / 'history.csv'}")
    return 0
