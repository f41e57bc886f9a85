"""Statistics of repeated runs: spread per framework, the paired difference, and a verdict.

Every test is scipy's (``scipy.stats``); nothing here computes a distribution by hand.

- Per framework: mean, standard deviation (n - 1), min, max.
- Paired difference reference - other (run i of both shares seed and starting bundle): mean,
  95% confidence interval from the t distribution (``ttest_rel(...).confidence_interval``) and,
  from 5 pairs on, a bootstrap interval (``scipy.stats.bootstrap``, BCa, seeded).
- Equivalence: TOST, two one-sided ``ttest_1samp`` tests of the differences against -margin and
  +margin; p is the larger of the two.
- Difference: the paired t-test (``ttest_rel``), two-sided.
- Where a framework's spread comes from (:func:`spread_sources`): the variance of the per-seed
  accuracy split, exactly, into the images' own variances (the runs disagreeing image by image)
  and the covariances between images (whole runs better or worse), from each run's predictions.
- Verdict: ``equivalent`` when TOST rejects at alpha (the 90% interval lies inside the margin);
  else ``different`` when the paired t-test rejects; else ``inconclusive``, with the number of
  repeats the observed spread needs for TOST to decide (or a note that the observed difference
  is at the margin, where no number of repeats shows equivalence).

Accuracies are in percentage points; the margin too.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats as st

from bench.frameworks import ARMS

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_MIN_N = 5
BOOTSTRAP_RESAMPLES = 9999
MAX_REPEATS_HINT = 1000
REFERENCE = "tf"  # the original; every other framework is compared with it

# What the statistics are about: name -> (label, key in FrameworkRun.final, scale, unit, verdict?)
METRICS: dict[str, tuple[str, str, float, str, bool]] = {
    "val_accuracy": ("final validation accuracy", "val_accuracy", 100.0, "%", True),
    "best_val_accuracy": ("best validation accuracy", "best_val_accuracy", 100.0, "%", False),
    "val_loss": ("final validation loss", "val_loss", 1.0, "", False),
    "accuracy": ("final training accuracy", "accuracy", 100.0, "%", False),
}
ORDER_MEANING = {"manifest": "the same batches on both sides (manifest order)",
                 # Measured (docs/profiles.md, 2026-12-07, quick, 5 seeds, Zen 5): final training accuracy native
                 # TF 87%, torch 61%; manifest 63 and 64%; fixed-batches 85 and 89%: the fixed groups, not the port.
                 "native": "each framework's native input pipeline (native order: TF caches the seed's batches, "
                           "so each holds the same images every epoch, while torch draws new ones; that alone "
                           "raises training accuracy by 22-25 points, measured in docs/profiles.md)",
                 "fixed-batches": "the same batches on both sides, each keeping its images every epoch "
                                  "(fixed-batches order: TF's native batching, on both sides)"}


def describe(values: Sequence[float]) -> dict[str, Any]:
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "values": []}
    return {"n": n, "mean": float(x.mean()), "std": float(x.std(ddof=1)) if n > 1 else None,
            "min": float(x.min()), "max": float(x.max()), "values": x.tolist()}


def spread_sources(correct: Any) -> dict[str, Any]:
    """Where the seed-to-seed variance of an accuracy comes from. ``correct``: repeats x images,
    1 where a run got the image right.

    The accuracy of run s is the mean of its row, so its sample variance over the runs is exactly
    1'C1 / n^2 for C the images' covariance matrix (``numpy.cov``, n - 1): the diagonal (each image
    right in some runs and wrong in others: what an n-image validation set shows even if every run
    were equally good) plus the off-diagonal (images moving together: whole runs better or worse).
    In percentage points; the parts add up as variances, and the second may be negative."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2 or c.shape[1] < 1:
        raise ValueError(f"need at least 2 runs of at least 1 image, got shape {c.shape}")
    runs, images = c.shape
    cov = np.atleast_2d(np.cov(c, rowvar=False)) * 1e4 / images**2
    total, per_image = float(cov.sum()), float(np.trace(cov))
    always, never = int((c.min(axis=0) == 1).sum()), int((c.max(axis=0) == 0).sum())
    return {"runs": runs, "images": images, "variance": total, "std": math.sqrt(max(total, 0.0)),
            "per_image_variance": per_image, "per_image_std": math.sqrt(per_image),
            "between_images_variance": total - per_image,
            "always_right": always, "never_right": never, "mixed": images - always - never}


def tost(diffs: Sequence[float], margin: float) -> dict[str, Any]:
    """Two one-sided t-tests of the mean difference against -margin and +margin."""
    d = np.asarray(diffs, dtype=np.float64)
    lower = st.ttest_1samp(d, -margin, alternative="greater")
    upper = st.ttest_1samp(d, margin, alternative="less")
    return {"margin": margin, "p_lower": float(lower.pvalue), "p_upper": float(upper.pvalue),
            "p": float(max(lower.pvalue, upper.pvalue)), "test": "TOST (two one-sided scipy.stats.ttest_1samp)"}


def repeats_needed(mean: float, sd: float, margin: float, alpha: float = ALPHA) -> int | None:
    """Smallest n for which TOST at ``alpha`` would decide equivalence if the observed mean and
    standard deviation of the differences held; None when |mean| >= margin (never)."""
    if abs(mean) >= margin:
        return None
    if sd == 0:
        return 2
    for n in range(2, MAX_REPEATS_HINT + 1):
        if abs(mean) + st.t.ppf(1 - alpha, n - 1) * sd / math.sqrt(n) < margin:
            return n
    return None


def paired(reference: Sequence[float], other: Sequence[float], margin: float | None, *,
           alpha: float = ALPHA, seed: int = 0) -> dict[str, Any]:
    """The paired difference reference - other, its intervals, the t-test and, with a margin,
    TOST and the verdict (``margin=None``: a measure that is described, not judged)."""
    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    d = a - b
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "margin": margin, "alpha": alpha, "diff": describe(d)}
    judged = margin is not None
    if n < 2:
        if judged:
            out["verdict"] = _verdict("inconclusive", f"n={n}: no spread; run at least 3 repeats (--repeats 3)")
        return out
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # identical differences: every test is degenerate; the difference is known exactly
        out["ci_t"] = [mean, mean]
        if judged:
            word = "equivalent" if abs(mean) < margin else "different"
            out["verdict"] = _verdict(word, f"all {n} paired differences are {mean:.3g} exactly")
        return out
    test = st.ttest_rel(a, b)
    ci = test.confidence_interval(CONFIDENCE)
    out["ci_t"] = [float(ci.low), float(ci.high)]
    out["ttest"] = {"statistic": float(test.statistic), "p": float(test.pvalue),
                    "test": "paired t-test (scipy.stats.ttest_rel)"}
    if n >= BOOTSTRAP_MIN_N:
        boot = st.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                            method="BCa", random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            out["ci_bootstrap"] = [low, high]
    if not judged:
        return out
    out["tost"] = tost(d, margin)
    # TOST at alpha is the (1 - 2 alpha) interval inside the margin: shown beside an "equivalent",
    # whose 95% interval may reach past the margin (n=3: -0.3 [-6.6, +6.1], TOST p 0.043).
    low90, high90 = test.confidence_interval(1 - 2 * alpha)
    out["tost"]["ci"] = [float(low90), float(high90)]
    out["tost"]["confidence"] = 1 - 2 * alpha
    if out["tost"]["p"] < alpha:
        out["verdict"] = _verdict("equivalent", f"within ±{margin:g}: TOST p={out['tost']['p']:.3g}, its "
                                                f"{1 - 2 * alpha:.0%} CI [{low90:+.1f}, {high90:+.1f}] inside the margin")
    elif test.pvalue < alpha:
        out["verdict"] = _verdict("different", f"paired t-test p={test.pvalue:.3g}")
    else:
        need = repeats_needed(mean, sd, margin, alpha)
        if need:
            hint = f"about {need} repeats would decide at this spread"
        elif abs(mean) >= margin:
            hint = f"the observed difference {mean:+.3g} is at or past the margin ±{margin:g}: more repeats cannot show equivalence"
        else:  # inside the margin, but so near it for this spread that no practical n decides
            hint = (f"the observed difference {mean:+.3g} is inside the margin ±{margin:g} but so near it at this spread "
                    f"(sd {sd:.3g}) that more than {MAX_REPEATS_HINT} repeats would be needed")
        why = f"TOST p={out['tost']['p']:.3g}, t-test p={test.pvalue:.3g}; {hint}"
        out["verdict"] = _verdict("inconclusive", why)
        out["verdict"]["repeats_needed"] = need
    return out


def _verdict(word: str, why: str) -> dict[str, Any]:
    return {"word": word, "why": why}


# ---- over training records -------------------------------------------------------------------------
def _final(run: dict[str, Any], key: str) -> float | None:
    value = (run.get("final") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def compare_repeats(records: Iterable[dict[str, Any]], *, margin: float, alpha: float = ALPHA) -> dict[str, Any]:
    """Statistics over the repeats of one set (``twinbench.run`` documents, one per repeat).

    A repeat counts once (by its index; a later record of the same index replaces an earlier
    one) and only where the framework finished ("complete"); pairs need both frameworks."""
    by_index: dict[int, dict[str, Any]] = {}
    for i, doc in enumerate(records):
        index = (doc.get("repeat") or {}).get("index", i)
        by_index[int(index)] = doc
    indices = sorted(by_index)
    frameworks: list[str] = []
    for doc in by_index.values():
        frameworks += [fw for fw in doc.get("frameworks", {}) if fw not in frameworks]
    frameworks.sort(key=lambda fw: (ARMS.index(fw) if fw in ARMS else len(ARMS), fw))  # REFERENCE is ARMS[0]
    orders = sorted({str((doc.get("config") or {}).get("order", "native")) for doc in by_index.values()})

    def value(i: int, fw: str, metric: str) -> float | None:
        run = by_index[i].get("frameworks", {}).get(fw) or {}
        if run.get("status") != "complete":
            return None
        v = _final(run, METRICS[metric][1])
        return None if v is None else v * METRICS[metric][2]

    per_fw = {fw: {m: describe([v for i in indices if (v := value(i, fw, m)) is not None]) for m in METRICS}
              for fw in frameworks}
    excluded = {fw: [i for i in indices if value(i, fw, "val_accuracy") is None] for fw in frameworks}
    sources = {fw: src for fw in frameworks if (src := _sources(by_index, indices, fw)) is not None}
    pairs = {}
    # Each arm against the original, then against every arm before it (keras-torch vs our port too).
    for ref, fw in itertools.combinations(frameworks, 2):
        pair: dict[str, Any] = {"reference": ref, "other": fw}
        for metric, (_, _, _, _, verdict) in METRICS.items():
            both = [(value(i, ref, metric), value(i, fw, metric)) for i in indices]
            both = [(a, b) for a, b in both if a is not None and b is not None]
            pair[metric] = paired([a for a, _ in both], [b for _, b in both], margin if verdict else None,
                                  alpha=alpha)
        pair["verdict"] = pair["val_accuracy"]["verdict"]
        # The noise floor: the between-framework gap beside each side's seed-to-seed spread.
        pair["noise_floor"] = {f: per_fw[f]["val_accuracy"]["std"] for f in (ref, fw)}
        pairs[f"{ref}-{fw}"] = pair
    return {"n_repeats": len(indices), "frameworks": frameworks, "margin": margin, "alpha": alpha,
            "metric": METRICS["val_accuracy"][0], "orders": orders,
            "comparison": "; ".join(ORDER_MEANING.get(o, o) for o in orders),
            "per_framework": per_fw, "excluded": excluded, "pairs": pairs, "spread_sources": sources,
            "method": "paired by seed; t CI and paired t-test: scipy.stats.ttest_rel; TOST: two "
                      "scipy.stats.ttest_1samp; bootstrap: scipy.stats.bootstrap (BCa) when there are at "
                      f"least {BOOTSTRAP_MIN_N} pairs"}


def _sources(by_index: dict[int, dict[str, Any]], indices: list[int], fw: str) -> dict[str, Any] | None:
    """:func:`spread_sources` of ``fw``'s final predictions over the complete repeats (None when
    fewer than 2 record them for the same validation images)."""
    rows, paths = [], None
    for i in indices:
        run = by_index[i].get("frameworks", {}).get(fw) or {}
        pred = run.get("predictions") or {}
        if run.get("status") != "complete" or not pred.get("predicted"):
            continue
        if paths is None:
            paths = pred.get("paths")
        if pred.get("paths") != paths or len(pred["predicted"]) != len(pred.get("labels", [])):
            return None
        rows.append(np.asarray(pred["predicted"]) == np.asarray(pred["labels"]))
    return spread_sources(rows) if len(rows) >= 2 else None


def fmt_sources(fw: str, src: dict[str, Any]) -> str:
    """One line: how much of a framework's spread the runs' image-by-image disagreement explains."""
    between = src["between_images_variance"]
    whole = f"{math.sqrt(between):.1f}" if between >= 0 else "none (the images' covariances sum below 0)"
    return (f"{fw}: std {src['std']:.1f} over {src['runs']} runs; image-by-image disagreement alone "
            f"{src['per_image_std']:.1f} ({src['mixed']} of {src['images']} validation images right in some runs "
            f"and wrong in others, {src['always_right']} always right, {src['never_right']} never), whole-run "
            f"shifts {whole} (variances {src['per_image_variance']:.1f} and {between:+.1f})")


def fmt_spread(d: dict[str, Any], unit: str = "%", digits: int = 1) -> str:
    """"81.2% ± 2.1 (n=5, 78.0-84.1)"; "81.2% (n=1, no spread)"."""
    if not d or not d.get("n"):
        return "-"
    if d["n"] == 1:
        return f"{d['mean']:.{digits}f}{unit} (n=1, no spread)"
    return (f"{d['mean']:.{digits}f}{unit} ± {d['std']:.{digits}f} (n={d['n']}, "
            f"{d['min']:.{digits}f}-{d['max']:.{digits}f})")


def fmt_ci(pair_metric: dict[str, Any], digits: int = 1) -> str:
    ci = pair_metric.get("ci_t")
    if not ci:
        return "-"
    text = f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"
    boot = pair_metric.get("ci_bootstrap")
    return text + (f" (bootstrap [{boot[0]:+.{digits}f}, {boot[1]:+.{digits}f}])" if boot else "")


def format_verdicts(statistics: dict[str, Any]) -> str:
    """The CLI's closing lines: each framework's spread, each pair's difference, CI and verdict."""
    lines = [f"{statistics.get('metric', 'final validation accuracy')} over {statistics['n_repeats']} repeat(s); "
             f"{statistics.get('comparison', '')}"]
    for fw, metrics in statistics.get("per_framework", {}).items():
        lines.append(f"  {fw:<8} {fmt_spread(metrics['val_accuracy'])}")
    for fw, src in statistics.get("spread_sources", {}).items():
        lines.append("  spread " + fmt_sources(fw, src))
    for name, pair in statistics.get("pairs", {}).items():
        m = pair["val_accuracy"]
        diff = m["diff"]
        mean = f"{diff['mean']:+.1f} points" if diff.get("mean") is not None else "-"
        lines.append(f"  {name}: difference {mean}, 95% CI {fmt_ci(m)}, margin ±{statistics['margin']:g}: "
                     f"{pair['verdict']['word'].upper()} ({pair['verdict']['why']})")
    return "\n".join(lines)
