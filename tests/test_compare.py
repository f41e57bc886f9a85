"""``twinbench compare``: rules, significance, verdicts and exit codes, on committed sample records.

tests/fixtures/records/ holds two honest repeats of one ``twinbench run`` (``repeat-a``,
``repeat-b``: the same command twice on this machine, checkpoints and job files left out; the
machine was shared with other work, so their throughputs differ by up to 2x, in overlapping
windows that compare rightly calls not significant). Planted regressions are made from repeat-b
in a temporary folder; the planted slowdown on a quiet machine's windows (2% spread).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import (ALPHA, Rule, compare_metrics, judge, mann_whitney_p, parse_rule, resolve_rules)
from bench.errors import UserError
from bench.runset import Metric

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
REPEAT_A, REPEAT_B = FIXTURES / "repeat-a", FIXTURES / "repeat-b"
TWINBENCH = [sys.executable, "-m", "bench.cli"]


def twinbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TWINBENCH, *map(str, args)], capture_output=True, text=True, timeout=120)


def tp(value: float, samples=(), name: str = "throughput.train", fw: str = "torch") -> Metric:
    return Metric(name, (("framework", fw), ("setting", "ours b8")), value, tuple(samples), "higher", "img/s")


# ---- rules --------------------------------------------------------------------------------------------
def test_rule_syntax():
    assert parse_rule("throughput.train:10%") == Rule("throughput.train", "relative", 0.10, "throughput.train:10%")
    assert parse_rule("parity.max_rel:1e-4") == Rule("parity.max_rel", "absolute", 1e-4, "parity.max_rel:1e-4")
    assert parse_rule("memory.peak:0").kind == "absolute"
    assert parse_rule("parity:tolerance").kind == "tolerance"
    for bad in ("throughput", "throughput:", ":10%", "throughput:ten%", "Throughput:10%", "memory.peak:-5%",
                "accuracy.val:tolerance", "throughput:nan"):
        with pytest.raises(UserError):
            parse_rule(bad)


def test_rules_match_dotted_prefixes_only():
    rule = parse_rule("throughput:10%")
    assert rule.matches(tp(1.0)) and rule.matches(tp(1.0, name="throughput.fit"))
    assert not rule.matches(tp(1.0, name="throughputs.train"))
    assert not parse_rule("throughput.train:5%").matches(tp(1.0, name="throughput.infer"))


def test_user_rules_replace_defaults_of_the_same_name():
    rules = resolve_rules(["throughput:3%", "mfu:5%"])
    assert [r.text for r in rules if r.name == "throughput"] == ["throughput:3%"]
    assert {r.name for r in rules} == {"parity.max_rel", "throughput", "memory.peak", "accuracy.val", "mfu"}


# ---- judging ------------------------------------------------------------------------------------------
def test_mann_whitney_needs_repeats_and_separates_shifted_samples():
    assert mann_whitney_p([1.0], [2.0, 3.0]) is None
    assert mann_whitney_p([5.0] * 5, [5.0] * 5) == 1.0
    assert mann_whitney_p([10, 11, 12, 13, 14], [5, 6, 7, 8, 9]) < ALPHA  # 5 vs 5, fully apart: p = 0.008
    assert mann_whitney_p([10, 12, 14, 16, 18], [11, 13, 15, 17, 19]) > 0.5


def test_a_slowdown_needs_both_the_ratio_and_significance():
    rule = parse_rule("throughput:10%")
    # Five windows a side, no ties, fully apart: the exact test gives p = 2/252 = 0.008 < 0.01.
    base = tp(10.0, [9.9, 10.0, 10.1, 10.05, 9.95])
    slower = tp(8.0, [7.9, 8.0, 8.1, 8.05, 7.95])
    assert judge(base, slower, rule).verdict == "regression"
    # Same medians, but the repeats overlap: not significant, so not a regression, and said so.
    noisy = judge(tp(10.0, [6, 14, 10, 8, 12]), tp(8.0, [12, 5, 8, 9, 7]), rule)
    assert noisy.verdict == "same" and "not significant" in noisy.note
    # 5% slower and significant: under the threshold.
    assert judge(base, tp(9.5, [9.45, 9.5, 9.55, 9.5, 9.48]), rule).verdict == "same"
    # Without repeats the ratio decides alone.
    assert judge(tp(10.0), tp(8.5), rule).verdict == "regression"


def test_improvements_are_flagged_in_the_better_direction():
    rule = parse_rule("memory.peak:10%")
    base = Metric("memory.peak", (("framework", "tf"),), 1000.0, better="lower", unit="MB")
    assert judge(base, Metric("memory.peak", base.labels, 800.0, better="lower"), rule).verdict == "improved"
    assert judge(base, Metric("memory.peak", base.labels, 1200.0, better="lower"), rule).verdict == "regression"
    assert judge(tp(10.0), tp(12.0), parse_rule("throughput:10%")).verdict == "improved"


def test_parity_tolerance_rule():
    rule = parse_rule("parity.max_rel:tolerance")

    def cell(value: float, passed: bool | None = None) -> Metric:
        return Metric("parity.max_rel", (("check", "forward"), ("block", "2a")), value, better="lower",
                      tolerance=1e-5, passed=value <= 1e-5 if passed is None else passed)

    assert judge(cell(1e-7), cell(5e-6), rule).verdict == "same"  # grew 50x, still within tolerance
    assert judge(cell(1e-7), cell(2e-5), rule).verdict == "regression"  # newly past tolerance
    assert judge(cell(2e-5), cell(3e-5), rule).verdict == "regression"  # failing and worse
    assert judge(cell(3e-5), cell(2e-5), rule).verdict == "failing"  # failing, not worse
    assert judge(cell(3e-5), cell(1e-6), rule).verdict == "improved"
    # An absolute rule instead: growth by more than 1e-6.
    assert judge(cell(1e-7), cell(5e-6), parse_rule("parity.max_rel:1e-6")).verdict == "regression"


def test_metrics_on_one_side_only_are_new_or_gone():
    changes = compare_metrics([tp(1.0), tp(2.0, fw="tf")], [tp(1.0), tp(3.0, name="throughput.infer")],
                              resolve_rules([]))
    assert sorted(c.verdict for c in changes) == ["gone", "new", "same"]


# ---- the command on real records ----------------------------------------------------------------------
def test_honest_repeats_pass():
    out = twinbench("compare", REPEAT_A, REPEAT_B)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 regression(s)" in out.stdout


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "candidate"
    shutil.copytree(REPEAT_B, target)
    return target


def _quiet_copy(tmp_path: Path, name: str, *, scale: float, seed: int) -> Path:
    """repeat-b with its timed windows replaced by a quiet machine's: each row's median times
    ``scale``, 2% spread (the fixtures were measured on a shared, loaded machine, where windows
    spread by more than 20% and no 20% change is significant with 5 repeats)."""
    import numpy as np

    target = tmp_path / name
    shutil.copytree(REPEAT_B, target)
    bench_path = next(target.rglob("bench.json"))
    doc = json.loads(bench_path.read_text())
    rng = np.random.default_rng(seed)
    for row in doc["rows"]:
        if row.get("status") != "ok":
            continue
        windows = row["images_per_s"] * scale * (1 + 0.02 * rng.standard_normal(5))
        q1, median, q3 = np.percentile(windows, [25, 50, 75])
        row["timing"]["throughput"].update(windows=windows.tolist(), median=median, q1=q1, q3=q3,
                                           min=windows.min(), max=windows.max())
        row["images_per_s"] = median
    bench_path.write_text(json.dumps(doc))
    return target


def test_planted_slowdown_of_20_percent_is_a_regression(tmp_path):
    baseline = _quiet_copy(tmp_path, "baseline", scale=1.0, seed=1)
    honest = _quiet_copy(tmp_path, "honest", scale=1.0, seed=2)
    slower = _quiet_copy(tmp_path, "slower", scale=1 / 1.2, seed=2)  # every step takes 20% longer
    assert twinbench("compare", baseline, honest).returncode == 0
    out = twinbench("compare", baseline, slower)
    assert out.returncode == 1, out.stdout + out.stderr
    regressions = [line for line in out.stdout.splitlines() if "REGRESSION" in line]
    rows = sum(1 for r in json.loads(next(REPEAT_B.rglob("bench.json")).read_text())["rows"] if r["status"] == "ok")
    assert len(regressions) == rows and all(" throughput." in " " + line for line in regressions)
    assert f"{rows} regression(s)" in out.stdout
    # Loosened past the change (1/1.2 = -16.7%) the same slowdown passes.
    assert twinbench("compare", baseline, slower, "--fail", "throughput:20%").returncode == 0


def test_planted_parity_error_past_tolerance_is_a_regression(tmp_path):
    candidate = _copy(tmp_path)
    parity_path = candidate / "parity.json"
    doc = json.loads(parity_path.read_text())
    result = doc["results"]["baseline"] if "results" in doc else doc
    cell = result["table"]["3b"]["forward"]
    cell["max_rel"] = 10 * cell["tol"]
    cell["ok"] = False
    parity_path.write_text(json.dumps(doc))
    out = twinbench("compare", REPEAT_A, candidate)
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if "REGRESSION" in line)
    assert "parity.max_rel" in line and "forward 3b" in line


def test_bad_input_exits_2(tmp_path):
    missing = twinbench("compare", REPEAT_A, tmp_path / "nope")
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = twinbench("compare", REPEAT_A, tmp_path / "empty")
    assert empty.returncode == 2 and "holds no twinbench run records" in empty.stderr
    bad_rule = twinbench("compare", REPEAT_A, REPEAT_B, "--fail", "speed")
    assert bad_rule.returncode == 2 and "NAME:THRESHOLD" in bad_rule.stderr


def test_records_of_another_model_or_a_newer_schema_exit_2(tmp_path):
    candidate = _copy(tmp_path)
    record_path = next(candidate.rglob("run.json"))
    doc = json.loads(record_path.read_text())
    doc["config"]["model"] = "resnet50_c3"
    record_path.write_text(json.dumps(doc))
    for other in candidate.rglob("*.json"):  # the other records of this run say resnet50: one model only
        if other != record_path and other.name in ("parity.json", "bench.json", "residuals.json", "session.json"):
            other.unlink()
    out = twinbench("compare", REPEAT_A, candidate)
    assert out.returncode == 2 and "resnet50_c3" in out.stderr and "same model" in out.stderr

    doc["config"]["model"] = "resnet50"
    doc["schema_version"] = 99
    record_path.write_text(json.dumps(doc))
    newer = twinbench("compare", REPEAT_A, candidate)
    assert newer.returncode == 2 and "newer" in newer.stderr and "upgrade" in newer.stderr


def test_machines_that_differ_are_warned_about(tmp_path):
    candidate = _copy(tmp_path)
    for path in candidate.rglob("*.json"):
        doc = json.loads(path.read_text())
        for holder in (doc, doc.get("environment", {}), doc.get("env", {})):
            if isinstance(holder, dict) and isinstance(holder.get("machine"), dict):
                holder["machine"]["node"] = "another-host"
        path.write_text(json.dumps(doc))
    out = twinbench("compare", REPEAT_A, candidate)
    assert "warning: machine differs" in out.stderr


# ---- accuracy judged by its distributions ------------------------------------------------------------
def acc(values, fw: str = "torch") -> Metric:
    values = tuple(v / 100 for v in values)
    return Metric("accuracy.val", (("framework", fw),), sorted(values)[len(values) // 2], values, "higher")


def test_accuracy_worse_by_more_than_the_margin_and_significant_is_a_regression():
    rule = parse_rule("accuracy.val:0.05")
    base = acc([81, 83, 80, 82, 81])
    same = judge(base, acc([80, 82, 81, 83, 80]), rule)
    assert same.verdict == "same"
    worse = judge(base, acc([70, 72, 69, 71, 73]), rule)  # 10 points down, tight: a regression
    assert worse.verdict == "regression" and worse.p < 0.05 and "Welch" in worse.note
    better = judge(acc([70, 72, 69, 71, 73]), base, rule)
    assert better.verdict == "improved"


def test_accuracy_drop_within_the_noise_is_not_a_regression():
    rule = parse_rule("accuracy.val:0.05")
    # the means differ by 8 points but the runs spread by 20: no evidence (one run said 23%, another 88%)
    noisy = judge(acc([88, 60, 81, 42, 79]), acc([23, 81, 81, 69, 66]), rule)
    assert noisy.verdict == "same" and "not significant" in noisy.note
    # single runs: the threshold alone, said so
    single = judge(Metric("accuracy.val", (("framework", "torch"),), 0.88), Metric("accuracy.val", (("framework", "torch"),), 0.23), rule)
    assert single.verdict == "regression" and single.p is None


def test_training_accuracy_is_shown_with_a_two_sided_test_and_never_gates():
    """accuracy.train: fixing each batch's images raised it by 22-25 points on both sides
    (docs/profiles.md) while validation did not move, so it is reported, not a regression rule."""
    from scipy.stats import ttest_ind

    def train(values):
        return Metric("accuracy.train", (("framework", "torch"),), values[0], tuple(values), "higher")

    manifest, fixed = [0.63, 0.66, 0.61, 0.64, 0.65], [0.88, 0.91, 0.84, 0.93, 0.88]
    for a, b in ((manifest, fixed), (fixed, manifest)):
        change = judge(train(a), train(b), None)
        assert change.verdict == "same" and change.absolute
        assert change.change == pytest.approx(sum(b) / 5 - sum(a) / 5)
        assert change.p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
        assert "two-sided" in change.note
    # Every repeat on both sides the same value: no evidence of a change, not a significant one.
    assert judge(train([0.9] * 5), train([0.9] * 5), None).p == 1.0
    # Under the default rules a 25-point drop in training accuracy is shown, not a regression.
    (drop,) = compare_metrics([train(fixed)], [train(manifest)], resolve_rules([]))
    assert drop.metric == "accuracy.train" and drop.verdict == "same" and drop.p < 0.01


def _planted_accuracy_copy(tmp_path: Path, name: str, torch_values) -> Path:
    """repeat-b's training record, once per value: repeats of one set with the torch side's final
    validation accuracy planted."""
    target = tmp_path / name
    shutil.copytree(REPEAT_B, target)
    train = next(target.glob("train-*"))
    doc = json.loads((train / "run.json").read_text())
    shutil.rmtree(train)
    for i, value in enumerate(torch_values):
        rdir = target / "train-set" / f"repeat-{i}"
        rdir.mkdir(parents=True)
        d = json.loads(json.dumps(doc))
        d["repeat"] = {"set": "train-set", "index": i, "of": len(torch_values), "seed": 123 + i}
        d["frameworks"]["torch"]["final"]["val_accuracy"] = value
        d["frameworks"]["tf"]["final"]["val_accuracy"] = 0.80 + 0.01 * (i % 2)
        (rdir / "run.json").write_text(json.dumps(d))
    return target


def test_compare_cli_on_planted_accuracy_distributions(tmp_path):
    baseline = _planted_accuracy_copy(tmp_path, "base", [0.80, 0.82, 0.81, 0.79])
    honest = _planted_accuracy_copy(tmp_path, "honest", [0.81, 0.80, 0.82, 0.80])
    broken = _planted_accuracy_copy(tmp_path, "broken", [0.60, 0.62, 0.58, 0.61])
    out = twinbench("compare", baseline, honest, "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    out = twinbench("compare", baseline, broken, "--all")
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if "accuracy.val" in line and "torch" in line)
    assert "REGRESSION" in line and "n=4 vs 4" in line
