"""The report's Training section: the seed's curves for both frameworks, epoch times, the
statistics over repeats and the chaos control, confusion matrices and the prediction grid."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from bench.report_doc import Section, fmt_bytes, fmt_num, fmt_pct, ratio
from bench.frameworks import FRAMEWORK_LABELS, FRAMEWORKS as FW
from bench.report_records import SectionBuilder, TrainSet, train_conditions, train_set
from bench.runset import Record


GRID_IMAGES = 8  # the seed's plt.subplot(2, 4, i + 1) over one batch of 8


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


def _median(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(vals) if vals else None


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


class TrainingSections(SectionBuilder):
    """The Training section."""

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
                    + ", ".join(f"{FRAMEWORK_LABELS[fw]} {n}" for fw, n in extra.items()) + ".")
            per_class = pd.DataFrame({"class": classes, **{FRAMEWORK_LABELS[fw]: [fmt_pct((fws[fw].get("per_class_accuracy") or {}).get(c))
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
        from bench.stats import METRICS, fmt_ci, fmt_sources

        stats = tset.stats
        rows = []
        for fw, per in stats["per_framework"].items():
            for metric, (what, _, _, unit, _) in METRICS.items():
                d = per[metric]
                digits = ".1f" if unit else ".3g"
                rows.append({"framework": FRAMEWORK_LABELS.get(fw, fw), "measure": what, "n": d["n"],
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
                floor = ", ".join(f"{FRAMEWORK_LABELS.get(fw, fw)} {fmt_num(v, '.1f')}" for fw, v in pair["noise_floor"].items())
                s.p(f"Noise floor ({name}): the between-framework gap of final validation accuracy is "
                    f"{fmt_num(abs(gap) if gap is not None else None, '.1f')} points; the seed-to-seed standard "
                    f"deviation within each framework is {floor} points. Verdict: **{pair['verdict']['word']}** "
                    f"({pair['verdict']['why']}).")
        sources = stats.get("spread_sources") or {}
        if sources:
            s.p("Where each framework's spread comes from (the variance of its per-seed accuracy split exactly into "
                "the images' own variances and their covariances, from each run's final predictions): "
                + "; ".join(fmt_sources(FRAMEWORK_LABELS.get(fw, fw), src) for fw, src in sources.items())
                + ". The image-by-image part is the spread this validation set would show even if every run were "
                  "equally good; runs that agree on which images they get right bring it down (below it, the images' "
                  "covariances are negative: runs that gain some images lose others).")
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
                "framework": FRAMEWORK_LABELS.get(fw, fw), "status": r.get("status"), "epochs": len(hist),
                "loss": fmt_num(last.get("loss"), ".4f"), "accuracy": fmt_pct(last.get("accuracy")),
                "val_loss": fmt_num(last.get("val_loss"), ".4f"), "val_accuracy": fmt_pct(last.get("val_accuracy")),
                "epoch s": fmt_num(_median([e.get("time_s") for e in later]), ".1f"),
                "train img/s": fmt_num(_median([e.get("train_throughput") for e in later]), ".1f"),
                "data wait": fmt_pct(ratio(sum(e.get("data_wait_s") or 0 for e in later),
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
