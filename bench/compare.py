"""Compare two runs and gate on regressions: what CI runs after every change.

    twinbench compare BASELINE CANDIDATE [--fail RULE ...] [--all] [--json OUT]

BASELINE and CANDIDATE are run records or directories of them (a ``twinbench run`` directory,
a ``twinbench train`` run, a ``bench.json``, a parity JSON, or a folder of several runs: several
runs of one side are pooled as repeats). Exit 1 on a regression, 0 otherwise, 2 on bad input
(a missing path, no records, records of different models, a newer schema).

A rule is ``NAME:THRESHOLD`` (pytest-benchmark's ``--benchmark-compare-fail`` syntax): NAME is a
metric name or a dotted prefix of one (``throughput`` covers ``throughput.train``,
``throughput.infer`` and ``throughput.fit``); THRESHOLD is how much worse the candidate may be:

- ``10%``: relative change (``throughput.train:10%``, ``memory.peak:10%``);
- a number: absolute change in the metric's unit (``parity.max_rel:1e-4``, ``accuracy.val:0.05``);
- ``tolerance``: parity only: a check newly past its recorded tolerance, or past it and worse.

Where both sides have repeats (``samples``), a change counts only if it is also significant:
Mann-Whitney U, two-sided, p < 0.01 (asv's test). Changes past a threshold in the better
direction are flagged as improvements. Accuracy is judged by its distributions: the means of the
repeats (``twinbench train --repeats N``) and Welch's t-test, one-sided, p < 0.05 (a few repeats
are all a training comparison has; Mann-Whitney U cannot reach significance on 3 + 3). Final
training accuracy (``accuracy.train``) is shown with Welch's two-sided test and gates nothing by
default: fixed batches raise it by 22-25 points with validation unchanged (docs/profiles.md). Default
rules (replaced per name by ``--fail``):
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from bench.errors import UserError
from bench.runset import Metric, Run, load_runs, metrics, record_versions, record_threads

# Each default with its reason; __doc__ lists them.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("parity.max_rel:tolerance", "a parity check newly failing, or failing and worse"),
    ("throughput:10%", "asv's factor 1.1 (TorchBench 7%), with Mann-Whitney U where repeats exist"),
    ("memory.peak:10%", "peak memory up by more than 10%"),
    ("accuracy.val:0.05", "final validation accuracy down by more than 5 points (the statistics' margin) and, "
                          "where both sides have repeats, significantly (Welch's t-test, one-sided, p < 0.05)"),
)
__doc__ += "".join(f"\n    {rule:<26} {why}" for rule, why in DEFAULT_RULES) + "\n"

COMPARE_FORMAT = "twinbench.compare"  # compare --json
COMPARE_VERSION = 1
ALPHA = 0.01  # Mann-Whitney U significance level (the issue; asv uses 0.002 with more repeats)
ACCURACY_ALPHA = 0.05  # accuracy repeats: the statistics' level (bench.stats.ALPHA)
RULE = re.compile(r"^(?P<name>[a-z_][a-z0-9_.]*):(?P<threshold>tolerance|[0-9.eE+-]+%?)$")


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str  # "relative" | "absolute" | "tolerance"
    threshold: float = 0.0
    text: str = ""

    def matches(self, metric: Metric) -> bool:
        return metric.name == self.name or metric.name.startswith(self.name + ".")


def parse_rule(text: str) -> Rule:
    m = RULE.match(text.strip())
    if not m:
        raise UserError(f"--fail {text!r}: expected NAME:THRESHOLD such as throughput.train:10%, "
                        f"memory.peak:10%, parity.max_rel:1e-4 or parity.max_rel:tolerance")
    name, threshold = m["name"], m["threshold"]
    if threshold == "tolerance":
        if not name.startswith("parity"):
            raise UserError(f"--fail {text!r}: 'tolerance' applies to parity metrics only")
        return Rule(name, "tolerance", text=text)
    try:
        value = float(threshold.rstrip("%"))
    except ValueError:
        raise UserError(f"--fail {text!r}: {threshold!r} is not a number or percentage") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--fail {text!r}: the threshold must be a finite number >= 0")
    if threshold.endswith("%"):
        return Rule(name, "relative", value / 100.0, text)
    return Rule(name, "absolute", value, text)


def resolve_rules(extra: Sequence[str]) -> list[Rule]:
    """The defaults, with any rule of the same name replaced by the user's."""
    given = [parse_rule(t) for t in extra]
    names = {r.name for r in given}
    return [parse_rule(t) for t, _ in DEFAULT_RULES if parse_rule(t).name not in names] + given


# ---- statistics ---------------------------------------------------------------------------------
def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value, or None when a side has fewer than two samples."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import mannwhitneyu

    if len(set(a) | set(b)) == 1:
        return 1.0  # all equal: no evidence of a change (scipy would warn and return nan)
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


# ---- comparing ----------------------------------------------------------------------------------
@dataclass
class Change:
    metric: str
    what: str
    baseline: float | None
    candidate: float | None
    change: float | None  # relative (candidate / baseline - 1), or absolute for absolute rules
    p: float | None
    verdict: str  # "regression" | "improved" | "same" | "new" | "gone" | "failing"
    rule: str
    unit: str = ""
    note: str = ""
    absolute: bool = False  # ``change`` is candidate - baseline, not a ratio


def _worse(delta: float, better: str) -> float:
    """How much worse (positive) the candidate is, given the raw delta and the good direction."""
    return -delta if better == "higher" else delta


def welch_p(base: Sequence[float], cand: Sequence[float], alternative: str = "two-sided") -> float | None:
    """Welch's t-test p of baseline against candidate (scipy's ``alternative``; None with fewer than
    two samples a side). Accuracy repeats are few (3-5): Mann-Whitney U cannot reach significance
    there (its smallest two-sided p with 3 + 3 samples is 0.1)."""
    if len(base) < 2 or len(cand) < 2:
        return None
    from scipy.stats import ttest_ind

    if len(set(base) | set(cand)) == 1:
        return 1.0  # all equal: no evidence of a change (scipy would return nan)
    return float(ttest_ind(base, cand, equal_var=False, alternative=alternative).pvalue)


def welch_worse_p(base: Sequence[float], cand: Sequence[float], better: str) -> float | None:
    """One-sided Welch t-test that the candidate's mean is worse than the baseline's."""
    return welch_p(base, cand, "greater" if better == "higher" else "less")


def judge(base: Metric, cand: Metric, rule: Rule | None) -> Change:
    relative = (cand.value / base.value - 1.0) if base.value else (0.0 if cand.value == base.value else math.inf)
    by_distribution = base.name.startswith("accuracy")
    if by_distribution and base.samples and cand.samples:
        base, cand = _mean_of(base), _mean_of(cand)  # accuracy: judged by the means of the repeats
        relative = (cand.value / base.value - 1.0) if base.value else (0.0 if cand.value == base.value else math.inf)
        p = welch_worse_p(base.samples, cand.samples, base.better)
    else:
        p = mann_whitney_p(base.samples, cand.samples) if base.samples and cand.samples else None
    change = Change(base.name, base.what, base.value, cand.value, relative, p, "same",
                    rule.text if rule else "", base.unit)
    if rule is None:
        if by_distribution and p is not None:  # shown only: the change in points, Welch's two-sided test
            change.change, change.absolute = cand.value - base.value, True
            change.p = welch_p(base.samples, cand.samples)
            change.note = f"means of n={len(base.samples)} vs {len(cand.samples)}, Welch t-test two-sided"
        return change
    if rule.kind == "tolerance":
        tol = cand.tolerance if cand.tolerance is not None else base.tolerance
        cand_fails = cand.passed is False or (tol is not None and cand.value > tol)
        base_fails = base.passed is False or (tol is not None and base.value > tol)
        change.change, change.absolute = cand.value - base.value, True
        change.note = f"tolerance {tol:.0e}" if tol is not None else "no tolerance recorded"
        if cand_fails and (not base_fails or cand.value > base.value):
            change.verdict = "regression"
        elif cand_fails:
            change.verdict = "failing"  # failing before and not worse: not new, still shown
        elif base_fails:
            change.verdict = "improved"
        return change
    if rule.kind == "relative":
        worse = _worse(relative, base.better)
    else:
        change.change, change.absolute = cand.value - base.value, True
        worse = _worse(change.change, base.better)
    alpha = ACCURACY_ALPHA if by_distribution else ALPHA
    if by_distribution and p is not None:
        # one-sided test of "worse": an improvement is judged by the mirrored test
        p_better = 1.0 - p if worse < 0 else p
        significant = p_better < alpha
        p = p_better
        change.p = p
    else:
        significant = p is None or p < alpha
    if by_distribution:
        n = f"n={len(base.samples) or 1} vs {len(cand.samples) or 1}"
        change.note = (f"means of {n}, Welch t-test one-sided p={p:.3g}" if p is not None
                       else f"{n}: no spread, threshold alone")
    if p is not None and not significant and abs(worse) > rule.threshold:
        change.note = (change.note + "; " if change.note else "") + f"not significant (p={p:.3f} >= {alpha})"
    if worse > rule.threshold and significant:
        change.verdict = "regression"
    elif -worse > rule.threshold and significant:
        change.verdict = "improved"
    return change


def _mean_of(metric: Metric) -> Metric:
    from dataclasses import replace

    return replace(metric, value=float(sum(metric.samples) / len(metric.samples)))


def compare_metrics(baseline: Sequence[Metric], candidate: Sequence[Metric], rules: Sequence[Rule]) -> list[Change]:
    base = {m.key: m for m in baseline}
    cand = {m.key: m for m in candidate}
    out: list[Change] = []
    for key in list(base) + [k for k in cand if k not in base]:
        b, c = base.get(key), cand.get(key)
        if b is None or c is None:
            m = b or c
            out.append(Change(m.name, m.what, b.value if b else None, c.value if c else None, None, None,
                              "gone" if c is None else "new", "", m.unit))
            continue
        # The most specific matching rule wins (a user's throughput.train beats the default throughput).
        matching = [r for r in rules if r.matches(b)]
        rule = max(matching, key=lambda r: len(r.name)) if matching else None
        out.append(judge(b, c, rule))
    return out


def environment_warnings(baseline: Sequence[Run], candidate: Sequence[Run]) -> list[str]:
    """Differences between the two sides' machines, versions and threads (pytest-benchmark warns
    when machine_info differs: a change may be the machine's, not the code's)."""

    def describe(runs: Sequence[Run]) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for run in runs:
            cpu = run.machine.get("cpu", {})
            info.setdefault("machine", f"{run.machine.get('node', '?')} / {cpu.get('model', '?')} "
                                       f"({cpu.get('cores', '?')} cores)")
            for record in run.records:
                for k, v in record_versions(record).items():
                    info.setdefault(k, v)
                for fw, n in record_threads(record).items():
                    info.setdefault(f"{fw} threads", n)
        return info

    a, b = describe(baseline), describe(candidate)
    return [f"{key} differs: baseline {a[key]}, candidate {b[key]}"
            for key in sorted(set(a) & set(b)) if str(a[key]) != str(b[key])]


def check_same_model(baseline: Sequence[Run], candidate: Sequence[Run], paths: Sequence[str]) -> str:
    models = [sorted({m for run in side for m in run.models}) for side in (baseline, candidate)]
    for side, found, path in zip(("baseline", "candidate"), models, paths):
        if len(found) > 1:
            raise UserError(f"{path}: the {side} mixes records of models {', '.join(found)}: compare one model at a time")
    if models[0] and models[1] and models[0] != models[1]:
        raise UserError(f"{paths[0]} measured {models[0][0]} but {paths[1]} measured {models[1][0]}: "
                        f"compare records of the same model")
    return (models[0] or models[1] or ["resnet50"])[0]


def format_value(value: float | None, unit: str, name: str) -> str:
    if value is None:
        return "-"
    if name.startswith("parity"):
        return f"{value:.2e}"
    if name.startswith(("accuracy", "mfu")):
        return f"{value:.1%}"
    return f"{value:.4g}" + (f" {unit}" if unit else "")


def format_change(c: Change) -> str:
    if c.change is None:
        return ""
    if c.absolute:
        return f"{c.change:+.2g}"
    return f"{c.change:+.1%}" if math.isfinite(c.change) else "inf"


def changes_table(changes: Sequence[Change], *, show_all: bool = False):
    """A pandas table of the changes worth reading (all of them with ``show_all``)."""
    import pandas as pd

    marks = {"regression": "REGRESSION", "improved": "improved", "failing": "still failing", "new": "new",
             "gone": "gone", "same": ""}
    rows = [{"metric": c.metric, "what": c.what, "baseline": format_value(c.baseline, c.unit, c.metric),
             "candidate": format_value(c.candidate, c.unit, c.metric), "change": format_change(c),
             "p": "" if c.p is None else f"{c.p:.3g}", "verdict": marks[c.verdict], "rule": c.rule, "note": c.note}
            for c in changes if show_all or c.verdict != "same" or c.note.startswith("not significant")]
    return pd.DataFrame(rows, columns=["metric", "what", "baseline", "candidate", "change", "p", "verdict", "rule", "note"])


def compare_paths(baseline: Sequence[str], candidate: Sequence[str], rules: Sequence[Rule]) -> dict[str, Any]:
    """Load both sides, check they are comparable, compare. Raises UserError on bad input."""
    base_runs, cand_runs = load_runs(baseline), load_runs(candidate)
    model = check_same_model(base_runs, cand_runs, [", ".join(map(str, baseline)), ", ".join(map(str, candidate))])
    base_metrics = metrics(r for run in base_runs for r in run.records)
    cand_metrics = metrics(r for run in cand_runs for r in run.records)
    changes = compare_metrics(base_metrics, cand_metrics, rules)
    common = [c for c in changes if c.verdict not in ("new", "gone")]
    if not common:
        raise UserError("the two sides have no metric in common (e.g. a bench record against a train record): "
                        "nothing to compare")
    return {"model": model, "changes": changes, "warnings": environment_warnings(base_runs, cand_runs),
            "baseline_runs": [str(r.path) for r in base_runs], "candidate_runs": [str(r.path) for r in cand_runs]}


# ---- CLI ----------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("compare", help="compare two runs; exit 1 on a regression (for CI)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", help="run record or directory of records (the reference)")
    p.add_argument("candidate", help="run record or directory of records (the change under test)")
    p.add_argument("--fail", action="append", default=[], metavar="RULE",
                   help="NAME:THRESHOLD, e.g. throughput.train:10%%, memory.peak:10%%, parity.max_rel:1e-4; repeatable")
    p.add_argument("--all", action="store_true", help="list every metric, not only what changed")
    p.add_argument("--json", metavar="OUT", help="also write the comparison as JSON")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bench import envelope

    rules = resolve_rules(args.fail)
    result = compare_paths([args.baseline], [args.candidate], rules)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    changes: list[Change] = result["changes"]
    table = changes_table(changes, show_all=args.all)
    counts = {v: sum(1 for c in changes if c.verdict == v) for v in ("regression", "improved", "failing", "same", "new", "gone")}
    print(f"{result['model']}: {args.baseline} -> {args.candidate}")
    if len(table):
        import pandas as pd

        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            print(table.to_string(index=False))
    else:
        print("no change past any rule")
    print(f"{counts['regression']} regression(s), {counts['improved']} improvement(s), {counts['failing']} still failing, "
          f"{counts['same']} unchanged, {counts['new']} new, {counts['gone']} gone; "
          f"rules: {', '.join(r.text for r in rules)}")
    if args.json:
        envelope.write(args.json, envelope.record(COMPARE_FORMAT, COMPARE_VERSION, {
            "model": result["model"], "rules": [r.text for r in rules], "warnings": result["warnings"],
            "changes": [asdict(c) for c in changes], "baseline": result["baseline_runs"],
            "candidate": result["candidate_runs"]}))
    return 1 if counts["regression"] else 0
