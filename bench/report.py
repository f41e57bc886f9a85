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
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from bench import atomic
from bench.errors import UserError
from bench.report_doc import Report, render_html, render_markdown
from bench.report_records import Context, choose_model
from bench.report_sections import Builder
from bench.runset import load_runs


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
