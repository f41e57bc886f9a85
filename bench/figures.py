"""The report's figures: matplotlib on the Agg backend, no display, no pyplot state.

Every function takes plain tables (pandas DataFrames with the columns its docstring names) and
returns a ``matplotlib.figure.Figure``; :func:`save` writes it as a compressed PNG. Nothing here
reads a run record: the report's section modules (``bench.report_*``) turn records into these
tables, so the figures do not change when a record's schema does. The block diagrams are in
``bench.figures_diagrams``.

Every figure carries a footer with its conditions (machine, versions, precision, batch, ...) and
says what its spread is (IQR over N repeats, min-max over runs, or "one run").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window (CI, headless machines)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from bench.frameworks import FRAMEWORK_LABELS  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


# One colour per framework, everywhere in a report.
FRAMEWORK_COLORS = {"tf": "#e8710a", "torch": "#1a73e8"}
# Series without a framework (checks, models): a fixed cycle, so colours stay stable between runs.
CYCLE = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#f9ab00", "#5f6368",
         "#b31412", "#185abc"]
DPI = 100
MAX_PALETTE_ERROR = 24  # levels of 255 at the 99.9th percentile: no visible colour shift
MAX_PALETTE_MEAN_ERROR = 1.0  # mean levels of 255: no visible banding of gradients
FOOTER_SIZE = 7.5


def color(framework: str) -> str:
    return FRAMEWORK_COLORS.get(framework, "#5f6368")


def label(framework: str) -> str:
    return FRAMEWORK_LABELS.get(framework, framework)


def save(fig: Figure, path: str | os.PathLike, *, photo: bool = False) -> Path:
    """Write ``fig`` as a compressed PNG, atomically, with a 256-colour palette where it is faithful.

    Plots have few colours: a max-coverage palette keeps every one (checked; 2-3x smaller).
    ``photo``: a figure of photographs (the prediction grid): PIL's fast octree palette, whose
    dithering keeps hues and smooth backgrounds at a quarter of the size (max coverage would
    take seconds on it and band the gradients).
    """
    import io

    from PIL import Image

    from bench import atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    with Image.open(buffer) as im:
        rgb = im.convert("RGB")
    if photo:
        image = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    else:
        palette = rgb.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE)
        error = np.abs(np.asarray(palette.convert("RGB"), dtype=np.int16) - np.asarray(rgb, dtype=np.int16))
        faithful = np.percentile(error, 99.9) <= MAX_PALETTE_ERROR and error.mean() <= MAX_PALETTE_MEAN_ERROR
        image = palette if faithful else rgb
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    path = Path(path)
    atomic.write_bytes(path, out.getvalue())
    return path


def footer(fig: Figure, *lines: str) -> None:
    """Lay the plot out, then put its conditions and spread under it, small and grey.

    The footer sits below the figure's own area (negative y): ``save`` crops to everything drawn
    (``bbox_inches="tight"``), so it can never overlap tick labels, however long it wraps.
    """
    import textwrap
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tight_layout not applied" for axes-free diagrams
        fig.tight_layout()
    width = int(fig.get_figwidth() * 72 / (FOOTER_SIZE * 0.6))  # characters that fit the width
    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    if text:
        fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=FOOTER_SIZE, color="#5f6368")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#5f6368")
    ax.set_xticks([])
    ax.set_yticks([])


# ---- training ---------------------------------------------------------------------------------------
def training_curves(history: pd.DataFrame, *, conditions: str = "", spread: str = "") -> Figure:
    """The seed's figure (accuracy | loss, training and validation per epoch) for both frameworks.

    ``history`` columns: framework, run, epoch, accuracy, val_accuracy, loss, val_loss. Several runs
    of one framework are drawn as their mean with a min-max band.
    """
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "accuracy", "Training and Validation Accuracy"),
                              (axes[1], "loss", "Training and Validation Loss")):
        for fw, rows in history.groupby("framework", sort=True):
            for col, style, what in ((metric, "-", "training"), (f"val_{metric}", "--", "validation")):
                if col not in rows or rows[col].isna().all():
                    continue
                stats = rows.groupby("epoch")[col].agg(["mean", "min", "max", "count"])
                ax.plot(stats.index, stats["mean"], style, color=color(fw), marker="o", markersize=3,
                        label=f"{label(fw)} {what}")
                if stats["count"].max() > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=color(fw), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
        else:
            _empty(ax, "no history")
    axes[0].set_ylim(-0.02, 1.02)
    footer(fig, conditions, spread or "solid: training, dashed: validation")
    return fig


def epoch_times(history: pd.DataFrame, *, conditions: str = "", spread: str = "") -> Figure:
    """Wall time of each epoch per framework (``history`` columns: framework, run, epoch, epoch_time)."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    data = history.dropna(subset=["epoch_time"]) if "epoch_time" in history else history.iloc[0:0]
    for fw, rows in data.groupby("framework", sort=True):
        stats = rows.groupby("epoch")["epoch_time"].agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], "-o", color=color(fw), markersize=3,
                label=f"{label(fw)} (median {rows['epoch_time'].median():.1f} s)")
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color(fw), alpha=0.15)
    if ax.lines:
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    else:
        _empty(ax, "no epoch times")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.set_title("Epoch wall time (the first includes tracing / warm-up)")
    ax.grid(alpha=0.3)
    footer(fig, conditions, spread)
    return fig


def confusion_matrices(matrices: dict[str, np.ndarray], class_names: Sequence[str], *,
                       conditions: str = "") -> Figure:
    """One confusion matrix per framework (rows: true class, columns: predicted), counts and row %."""
    n = max(1, len(matrices))
    fig = Figure(figsize=(4.6 * n, 4.4))
    axes = np.atleast_1d(fig.subplots(1, n))
    for k, (ax, (fw, matrix)) in enumerate(zip(axes, sorted(matrices.items()))):
        m = np.asarray(matrix, dtype=float)
        rows = m.sum(axis=1, keepdims=True)
        share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
        names = list(class_names) if len(class_names) == m.shape[0] else [str(i) for i in range(m.shape[0])]
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names if k == 0 else [], fontsize=8)  # same classes: label once
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("true")
        accuracy = np.trace(m) / max(m.sum(), 1)
        ax.set_title(f"{label(fw)}: accuracy {accuracy:.1%} of {int(m.sum())}", color=color(fw))
    if not matrices:
        _empty(axes[0], "no confusion matrix recorded")
    footer(fig, conditions)
    return fig


def prediction_grid(images: Sequence[np.ndarray], true: Sequence[int], predicted: dict[str, Sequence[int]],
                    class_names: Sequence[str], *, captions: Sequence[str] | None = None,
                    conditions: str = "") -> Figure:
    """The seed's 2 x 4 grid of validation images, titled with each framework's predicted label;
    a wrong prediction is red and marked with a cross."""
    n = len(images)
    cols = 4
    rows = max(1, int(np.ceil(n / cols)))
    fig = Figure(figsize=(9, 2.7 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    name = (lambda i: class_names[i] if 0 <= i < len(class_names) else str(i))
    for k, ax in enumerate(axes):
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(np.asarray(images[k]).astype(np.uint8))
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [f"true: {name(int(true[k]))}"]
        wrong_any = False
        for fw in sorted(predicted):
            p = int(predicted[fw][k])
            wrong = p != int(true[k])
            wrong_any |= wrong
            lines.append(f"{label(fw)}: {name(p)}{'  x' if wrong else ''}")
        ax.set_title("\n".join(lines), fontsize=8, color="#d93025" if wrong_any else "black")
        for side in ax.spines.values():  # a red frame marks a wrong prediction; none otherwise
            side.set_visible(wrong_any)
            side.set_color("#d93025")
            side.set_linewidth(3)
        if captions:
            ax.text(0.5, -0.04, captions[k], transform=ax.transAxes, ha="center", va="top", fontsize=6,
                    color="#5f6368")
    if n == 0:
        _empty(axes[0], "no predictions recorded")
    footer(fig, conditions, "red title and frame: at least one framework predicted a wrong class (x)")
    return fig


# ---- parity -----------------------------------------------------------------------------------------
def parity_errors(errors: pd.DataFrame, *, order: Sequence[str], conditions: str = "") -> Figure:
    """Per-block cross-framework error, log scale, one series per check with each cell's limit
    dotted; where the cells were calibrated, a second panel with the ratio of the cross error to
    the larger of the two frameworks' own float32 errors (the pass line at K).

    ``errors`` columns: check, block, value (the deciding metric; older records: max_rel), limit
    (or tolerance), passed, and optionally ratio. ``order`` is the probe points in model order
    (x axis). An exact zero is drawn at the floor and said so.
    """
    from bench.parity_metrics import K

    errors = errors.copy()
    if "value" not in errors:
        errors["value"] = errors["max_rel"]
    if "limit" not in errors:
        errors["limit"] = errors.get("tolerance")
    ratios = errors["ratio"].notna() if "ratio" in errors else pd.Series(False, index=errors.index)
    calibrated = bool(ratios.any())
    fig = Figure(figsize=(14 if calibrated else 12, 4.8))
    axes = fig.subplots(1, 2, width_ratios=(3, 2)) if calibrated else [fig.subplots()]
    ax = axes[0]
    positions = {b: i for i, b in enumerate(order)}
    data = errors[errors["block"].isin(positions)].copy()
    values = data["value"].astype(float)
    positive = values[values > 0]
    floor = float(positive.min()) / 10 if len(positive) else 1e-12
    for k, (check, rows) in enumerate(data.groupby("check", sort=False)):
        c = CYCLE[k % len(CYCLE)]
        rows = rows.assign(x=rows["block"].map(positions)).sort_values("x")
        y = rows["value"].astype(float).clip(lower=floor)
        ax.plot(rows["x"], y, "-o", color=c, markersize=4, label=check)
        failed = rows[~rows["passed"].astype(bool)] if "passed" in rows else rows.iloc[0:0]
        if len(failed):
            ax.plot(failed["x"], failed["value"].astype(float).clip(lower=floor), "x", color="#d93025",
                    markersize=10, markeredgewidth=2)
        limits = rows["limit"].dropna().astype(float)
        if limits.nunique() == 1:
            ax.axhline(float(limits.iloc[0]), color=c, linestyle=":", linewidth=1.2)
        elif len(limits):
            ax.plot(rows.loc[limits.index, "x"], limits, ":", color=c, linewidth=1.2)
        if calibrated and rows["ratio"].notna().any():
            r = rows[rows["ratio"].notna()]
            axes[1].plot(r["x"], r["ratio"].astype(float).clip(lower=1e-3), "-o", color=c, markersize=3, label=check)
    if not len(data):
        _empty(ax, "no per-block parity errors recorded")
    else:
        for a in axes:
            a.set_yscale("log")
            a.set_xticks(range(len(order)), list(order), rotation=60, fontsize=8)
            a.grid(alpha=0.3, which="both", axis="y")
        ax.legend(fontsize=8, ncol=2, loc="upper left")
    ax.set_ylabel("cross error (max|a-b|/max|ref|; grads: ||a-b||/||ref||)" if calibrated else "max |a - b| / max |ref|")
    ax.set_title("Parity TF vs torch per block (dotted: limits; red x: failed)")
    if calibrated:
        axes[1].axhline(K, color="#d93025", linestyle="--", linewidth=1.2)
        axes[1].set_title(f"cross / max(own TF, own torch); pass <= {K:g} (dashed)")
        axes[1].set_ylabel("ratio to own float32 error")
    footer(fig, conditions, f"errors of exactly 0 are drawn at {floor:.0e}")
    return fig


def parity_trajectory(curve: dict, *, conditions: str = "") -> Figure:
    """K training steps on identical batches: both losses, and how far the two sides drift apart
    (relative error of the loss, of sampled weights and of BN statistics after each step)."""
    fig = Figure(figsize=(12, 3.8))
    left, right = fig.subplots(1, 2)
    steps = np.arange(1, int(curve.get("steps", 0)) + 1)
    for fw, key in (("tf", "loss_tf"), ("torch", "loss_torch")):
        if curve.get(key):
            left.plot(steps, curve[key], "-o", markersize=3, color=color(fw), label=label(fw))
    left.set_title("Training loss per step, identical batches")
    left.set_xlabel("step")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for k, (key, what) in enumerate((("loss_rel", "loss"), ("param_rel", "sampled weights"),
                                     ("bn_rel", "BN statistics"))):
        values = np.asarray(curve.get(key) or [], dtype=float)
        if len(values):
            right.plot(steps[:len(values)], np.clip(values, 1e-16, None), "-o", markersize=3, color=CYCLE[k], label=what)
    for fw in ("tf", "torch"):  # each framework against itself from the bundle moved by one ulp
        chaos = np.asarray((curve.get(f"chaos_{fw}") or {}).get("param_rel") or [], dtype=float)
        if len(chaos):
            right.plot(steps[:len(chaos)], np.clip(chaos, 1e-16, None), ":", color=color(fw),
                       label=f"{label(fw)} vs itself, bundle +1 ulp (weights)")
    right.set_yscale("log")
    right.set_title("Relative difference TF vs torch after each step")
    right.set_xlabel("step")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both", axis="y")
    footer(fig, conditions, "one trajectory per framework (deterministic given the batches and the bundle)")
    return fig


# ---- performance ------------------------------------------------------------------------------------
def _bar_groups(ax, table: pd.DataFrame, value: str, *, lo: str | None = None, hi: str | None = None,
                fmt: str = "{:.1f}") -> None:
    """Horizontal bars, one per row of ``table`` (columns: label, framework, value[, lo, hi])."""
    y = np.arange(len(table))
    values = table[value].to_numpy(dtype=float)
    colors = [color(fw) for fw in table["framework"]]
    xerr = None
    if lo and hi and lo in table and hi in table and table[lo].notna().any():
        low = np.clip(values - table[lo].to_numpy(dtype=float), 0, None)
        high = np.clip(table[hi].to_numpy(dtype=float) - values, 0, None)
        xerr = np.vstack([np.nan_to_num(low), np.nan_to_num(high)])
    hatches = ["//" if ref else "" for ref in table.get("reference", pd.Series([False] * len(table)))]
    bars = ax.barh(y, values, color=colors, xerr=xerr, capsize=3, error_kw={"elinewidth": 1})
    for bar, hatch in zip(bars, hatches):
        bar.set_hatch(hatch)
        bar.set_edgecolor("white" if hatch else bar.get_facecolor())
    ends = values if xerr is None else values + xerr[1]  # the label goes past the error bar
    for yi, v, end in zip(y, values, ends):
        if np.isfinite(v):
            ax.text(end, yi, "  " + fmt.format(v), va="center", fontsize=7.5)
    ax.set_yticks(y, list(table["label"]), fontsize=8)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.set_xlim(0, max(1e-9, np.nanmax(values) if len(values) else 1) * 1.25)


def throughput_bars(table: pd.DataFrame, *, conditions: str = "", spread: str = "") -> Figure:
    """Throughput per framework x setting, training and inference side by side, IQR error bars.

    ``table`` columns: mode ("train"/"infer"), label, framework, median, q1, q3, reference (bool:
    the framework's own ResNet-50, hatched).
    """
    modes = [m for m in ("train", "infer") if m in set(table.get("mode", []))] or ["train"]
    heights = [max(1, (table["mode"] == m).sum()) if len(table) else 1 for m in modes]
    fig = Figure(figsize=(11, 1.4 + 0.32 * sum(heights) + 0.6 * len(modes)))
    axes = np.atleast_1d(fig.subplots(len(modes), 1, gridspec_kw={"height_ratios": heights}))
    for ax, mode in zip(axes, modes):
        rows = table[table["mode"] == mode] if len(table) else table
        if not len(rows):
            _empty(ax, f"no {mode} throughput recorded")
            continue
        _bar_groups(ax, rows.reset_index(drop=True), "median", lo="q1", hi="q3")
        ax.set_title(f"{'Training' if mode == 'train' else 'Inference'} throughput (images/s, higher is better; "
                     f"hatched: the framework's own ResNet-50)", fontsize=10)
    axes[-1].set_xlabel("images / s")
    footer(fig, conditions, spread or "bars: median; error bars: interquartile range over the repeats")
    return fig


def memory_bars(table: pd.DataFrame, *, conditions: str = "") -> Figure:
    """Peak memory per framework x setting (``table`` columns: label, framework, peak_mb, what)."""
    fig = Figure(figsize=(11, 1.6 + 0.32 * max(1, len(table))))
    ax = fig.subplots()
    if len(table):
        _bar_groups(ax, table.reset_index(drop=True), "peak_mb", fmt="{:.0f} MB")
        whats = sorted({str(w) for w in table.get("what", []) if isinstance(w, str) and w})
        ax.set_xlabel("peak MB" + (f"  ({'; '.join(whats)})" if whats else ""))
    else:
        _empty(ax, "no memory figures recorded")
    ax.set_title("Peak memory (lower is better)", fontsize=10)
    footer(fig, conditions, "one measurement per row, in a separate loop after resetting the peak counters")
    return fig


def mfu_bars(table: pd.DataFrame, *, peaks: str = "", conditions: str = "") -> Figure:
    """Model FLOPs utilisation per framework x setting (``table`` columns: label, framework, mfu)."""
    fig = Figure(figsize=(11, 1.6 + 0.32 * max(1, len(table))))
    ax = fig.subplots()
    if len(table):
        t = table.reset_index(drop=True).assign(mfu_pct=table["mfu"].to_numpy(dtype=float) * 100)
        _bar_groups(ax, t, "mfu_pct", fmt="{:.1f}%")
        ax.set_xlabel("% of the measured peak FLOP/s of the same dtype")
    else:
        _empty(ax, "no MFU recorded")
    ax.set_title("MFU: achieved FLOP/s (FLOPs from bench.spec) / measured matmul peak", fontsize=10)
    footer(fig, conditions, peaks)
    return fig


# ---- residual structure -----------------------------------------------------------------------------
def residual_ratios(table: pd.DataFrame, *, conditions: str = "") -> Figure:
    """||F(x)|| / ||shortcut(x)|| per residual unit, per framework, before and after training.

    ``table`` columns: unit, framework, stage ("before"/"after"), median, q1, q3 (over images).
    """
    fig = Figure(figsize=(12, 4.4))
    ax = fig.subplots()
    units = list(dict.fromkeys(table["unit"])) if len(table) else []
    x = {u: i for i, u in enumerate(units)}
    series = list(table.groupby(["stage", "framework"], sort=False)) if len(table) else []
    width = 0.8 / max(1, len(series))
    for k, ((stage, fw), rows) in enumerate(series):
        xs = rows["unit"].map(x).to_numpy() - 0.4 + width * (k + 0.5)
        med = rows["median"].to_numpy(dtype=float)
        err = np.vstack([med - rows["q1"].to_numpy(dtype=float), rows["q3"].to_numpy(dtype=float) - med])
        ax.errorbar(xs, med, yerr=np.clip(err, 0, None), fmt="o" if stage == "after" else "s",
                    color=color(fw), markerfacecolor=color(fw) if stage == "after" else "white",
                    markersize=5, capsize=2, linestyle="-" if stage == "after" else ":",
                    label=f"{label(fw)}, {stage} training")
    if series:
        from matplotlib.ticker import FormatStrFormatter

        ax.axhline(1.0, color="#5f6368", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xticks(range(len(units)), units, rotation=60 if len(units) > 20 else 0, fontsize=8)
        ax.legend(fontsize=8, ncol=2)
    else:
        _empty(ax, "no residual ratios measured")
    ax.set_ylabel("||F(x)|| / ||shortcut(x)||")
    ax.set_xlabel("residual unit")
    ax.set_title("How much each residual branch adds next to its shortcut (below 1: the shortcut dominates)")
    ax.grid(alpha=0.3, which="both", axis="y")
    footer(fig, conditions, "markers: median over the validation images; error bars: interquartile range")
    return fig


# ---- model comparison ---------------------------------------------------------------------------------
def model_blocks(tables: dict[str, pd.DataFrame], *, conditions: str = "") -> Figure:
    """Parameters and forward FLOPs per block for several models (``bench.spec`` block tables:
    columns block, params, flops), side by side."""
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 2)
    for ax, col, unit, scale in ((axes[0], "params", "parameters (M)", 1e6), (axes[1], "flops", "GFLOPs / image", 1e9)):
        for k, (name, t) in enumerate(tables.items()):
            t = t[t["block"] != "head"]
            ax.plot(range(len(t)), t[col] / scale, "-o", markersize=3, color=CYCLE[k % len(CYCLE)],
                    label=f"{name} (total {t[col].sum() / scale:.2f})")
            if k == 0:
                ax.set_xticks(range(len(t)), list(t["block"]), rotation=60, fontsize=7)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Parameters per block")
    axes[1].set_title("Forward FLOPs per block (2 x MACs)")
    footer(fig, conditions, "exact counts from bench.spec (no spread)")
    return fig


# ---- history ------------------------------------------------------------------------------------------
def history_plot(table: pd.DataFrame, metrics: Sequence[tuple[str, str]], *, conditions: str = "") -> Figure:
    """Key figures over time: one panel per metric, one line per framework, x = run (date + commit).

    ``table`` columns: when (timestamp), tick (label), framework, and the metric columns; ``metrics``
    is (column, title) pairs.
    """
    n = max(1, len(metrics))
    fig = Figure(figsize=(12, 2.4 * n + 0.8))
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    ticks = list(dict.fromkeys(table["tick"])) if len(table) else []
    pos = {t: i for i, t in enumerate(ticks)}
    for ax, (col, title) in zip(axes, metrics):
        if col not in table or table[col].isna().all():
            _empty(ax, f"no {title}")
            ax.set_title(title, fontsize=10)
            continue
        data = table.dropna(subset=[col])
        if col.startswith("parity"):  # one figure per run for both frameworks: TF is the reference
            data = data.drop_duplicates("tick").assign(framework="TF vs torch")
        for fw, rows in data.groupby("framework", sort=True):
            xs = rows["tick"].map(pos)
            ax.plot(xs, rows[col], "-o", markersize=4, color=color(fw) if fw in FRAMEWORK_COLORS else "#5f6368",
                    label=label(fw) if fw in FRAMEWORK_COLORS else str(fw))
            if f"{col}_lo" in rows and rows[f"{col}_lo"].notna().any():
                ax.fill_between(xs, rows[f"{col}_lo"], rows[f"{col}_hi"], alpha=0.15,
                                color=color(fw) if fw in FRAMEWORK_COLORS else "#5f6368")
        if col.startswith("parity"):
            ax.set_yscale("log")
        else:  # from zero: a 0.1% wiggle must not look like a cliff
            top = np.nanmax(pd.concat([data[col], data.get(f"{col}_hi", data[col])]).to_numpy(dtype=float))
            ax.set_ylim(0, top * 1.12 if top > 0 else 1)
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if ticks:
        axes[-1].set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=7)
    footer(fig, conditions, "one point per run record, in time order; bands: interquartile range where repeats exist")
    return fig


# ---- the chaos control ----------------------------------------------------------------------------
def chaos_curves(steps: pd.DataFrame, *, conditions: str = "", spread: str = "") -> Figure:
    """Per training step: the sampled-weight distance TF vs torch and torch vs torch-1ulp (left,
    log scale) and the three runs' losses (right). ``steps`` columns: step, cross, self,
    loss_tf, loss_torch, loss_ulp."""
    fig = Figure(figsize=(12, 4.2))
    left, right = fig.subplots(1, 2)
    if len(steps):
        left.semilogy(steps["step"], steps["cross"].clip(lower=1e-12), "-", color=color("tf"),
                      label="TensorFlow vs PyTorch (the port)")
        left.semilogy(steps["step"], steps["self"].clip(lower=1e-12), "-", color=color("torch"),
                      label="PyTorch vs PyTorch from the bundle + 1 ulp")
        for col, style, name in (("loss_tf", "-", "TensorFlow"), ("loss_torch", "-", "PyTorch"),
                                 ("loss_ulp", ":", "PyTorch + 1 ulp")):
            if col in steps:
                right.plot(steps["step"], steps[col], style, color=color("tf" if col == "loss_tf" else "torch"),
                           label=name, linewidth=1)
        left.legend(fontsize=8)
        right.legend(fontsize=8)
    else:
        _empty(left, "no trace")
        _empty(right, "no trace")
    left.set_title("Weight distance ||a - b|| / ||a|| (sampled weights)")
    left.set_xlabel("training step")
    left.grid(alpha=0.3)
    right.set_title("Training loss per step (the same batches)")
    right.set_xlabel("training step")
    right.grid(alpha=0.3)
    footer(fig, conditions, spread or "one run each; step 0 is the starting bundle")
    return fig
