"""bench.stats against scipy on known samples, and the verdict on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from bench import stats


def test_describe_matches_numpy():
    values = [81.4, 77.9, 84.1, 79.6, 80.5]
    d = stats.describe(values)
    assert d["n"] == 5 and d["mean"] == pytest.approx(np.mean(values))
    assert d["std"] == pytest.approx(np.std(values, ddof=1)) and (d["min"], d["max"]) == (77.9, 84.1)
    assert stats.describe([70.0])["std"] is None


def test_paired_interval_and_tests_are_scipys():
    tf = np.array([87.6, 70.8, 81.4, 42.5, 79.6])
    torch = np.array([23.0, 18.6, 81.4, 81.4, 68.1])
    out = stats.paired(tf, torch, margin=5.0)
    d = tf - torch
    # t interval by hand from the t quantile: the same numbers scipy's confidence_interval gives
    half = st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert out["ci_t"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert out["ttest"]["p"] == pytest.approx(st.ttest_rel(tf, torch).pvalue)
    p1 = st.ttest_1samp(d, -5.0, alternative="greater").pvalue
    p2 = st.ttest_1samp(d, 5.0, alternative="less").pvalue
    assert out["tost"]["p"] == pytest.approx(max(p1, p2))
    assert "ci_bootstrap" in out and out["ci_bootstrap"][0] < d.mean() < out["ci_bootstrap"][1]
    # this morning's quick-profile figures: far too noisy for any verdict
    assert out["verdict"]["word"] == "inconclusive"


def test_no_bootstrap_below_five_pairs():
    out = stats.paired([80.0, 82.0, 81.0], [79.0, 83.0, 80.5], margin=5.0)
    assert "ci_bootstrap" not in out and "ci_t" in out


def test_equal_samples_are_equivalent():
    rng = np.random.default_rng(0)
    a = 80 + rng.normal(0, 1.0, 8)
    b = a + rng.normal(0, 0.5, 8)  # the same up to small noise
    out = stats.paired(a, b, margin=5.0)
    assert out["verdict"]["word"] == "equivalent" and out["tost"]["p"] < 0.05


def test_an_equivalent_verdict_shows_the_tosts_own_interval():
    """TOST at alpha 0.05 is the 90% interval inside the margin; the 95% one may reach past it.
    This session's seed-200 run (n=3): -0.3 points, 95% CI [-6.6, +6.1], TOST p 0.043."""
    tf, torch = np.array([68, 62, 71]) / 113 * 100, np.array([70, 64, 68]) / 113 * 100  # of 113 images
    out = stats.paired(tf, torch, margin=5.0)
    ci90 = st.ttest_rel(tf, torch).confidence_interval(0.90)
    assert out["tost"]["ci"] == pytest.approx([ci90.low, ci90.high])
    assert out["verdict"]["word"] == "equivalent" and out["tost"]["p"] == pytest.approx(0.0429, abs=1e-4)
    assert -5 < out["tost"]["ci"][0] and out["tost"]["ci"][1] < 5  # the duality the verdict rests on
    assert out["ci_t"][0] < -5  # ... while the 95% interval reaches past the margin
    assert "90% CI [-4.6, +4.0] inside the margin" in out["verdict"]["why"]
    noisy = stats.paired([60.2, 54.9, 62.8], [61.9, 50.6, 66.2], margin=5.0)
    assert noisy["verdict"]["word"] == "inconclusive" and not (-5 < noisy["tost"]["ci"][0] < noisy["tost"]["ci"][1] < 5)


def test_shifted_samples_are_different():
    rng = np.random.default_rng(1)
    a = 85 + rng.normal(0, 1.0, 6)
    b = a - 12 + rng.normal(0, 1.0, 6)  # the port loses 12 points every time
    out = stats.paired(a, b, margin=5.0)
    assert out["verdict"]["word"] == "different" and out["ttest"]["p"] < 0.05
    assert out["ci_t"][0] > 5.0


def test_too_noisy_is_inconclusive_with_a_repeat_count():
    a = np.array([80.0, 90.0, 70.0, 85.0])
    b = np.array([82.0, 78.0, 74.0, 84.0])  # differences -2, 12, -4, 1: mean 1.75, sd 7.1
    out = stats.paired(a, b, margin=5.0)
    assert out["verdict"]["word"] == "inconclusive"
    need = out["verdict"]["repeats_needed"]
    assert need is not None and need > 4
    # the count is the smallest n at which TOST would decide at this mean and spread
    d = a - b
    m, s = abs(d.mean()), d.std(ddof=1)
    assert m + st.t.ppf(0.95, need - 1) * s / math.sqrt(need) < 5.0
    assert m + st.t.ppf(0.95, need - 2) * s / math.sqrt(need - 1) >= 5.0


def test_a_difference_at_the_margin_can_never_be_equivalent():
    assert stats.repeats_needed(6.0, 2.0, 5.0) is None
    # differences 6, 4.5, 7 (mean 5.8 > margin, tight): significant, and never equivalent
    out = stats.paired([80.0, 81.0, 79.0], [74.0, 76.5, 72.0], margin=5.0)
    assert out["verdict"]["word"] == "different" and out["ttest"]["p"] < 0.05
    # the same mean with a spread the t-test cannot resolve: inconclusive, and no repeat count helps
    out = stats.paired([80.0, 90.0, 70.0], [74.0, 76.5, 72.0], margin=5.0)
    assert out["verdict"]["word"] == "inconclusive"
    assert out["verdict"]["repeats_needed"] is None and "cannot show equivalence" in out["verdict"]["why"]
    # Inside the margin but near it (measured: make run's +4.72 points, sd about 11): no count under
    # the hint's cap decides, and the verdict must not call the difference past the margin.
    assert stats.repeats_needed(4.72, 11.0, 5.0) is None
    out = stats.paired([60.2, 47.8, 56.6], [56.6, 50.4, 43.4], margin=5.0)  # differences 3.6, -2.6, 13.2
    why = out["verdict"]["why"]
    assert out["verdict"]["word"] == "inconclusive" and out["verdict"]["repeats_needed"] is None
    assert "inside the margin ±5" in why and "past the margin" not in why and "more than 1000 repeats" in why


def test_one_run_has_no_spread_and_no_verdict():
    out = stats.paired([80.0], [70.0], margin=5.0)
    assert out["verdict"]["word"] == "inconclusive" and "n=1" in out["verdict"]["why"]
    assert stats.fmt_spread(stats.describe([70.0])) == "70.0% (n=1, no spread)"


def _record(index: int, tf: float, torch: float, status: str = "complete") -> dict:
    def run(acc: float, st_: str) -> dict:
        return {"status": st_, "final": {"val_accuracy": acc / 100, "best_val_accuracy": acc / 100 + 0.01,
                                         "val_loss": 0.5, "accuracy": 0.9}}

    return {"repeat": {"set": "s", "index": index, "seed": 123 + index}, "config": {"order": "manifest"},
            "frameworks": {"torch": run(torch, status), "tf": run(tf, "complete")}}


def test_compare_repeats_pairs_by_index_and_counts_each_once():
    records = [_record(0, 80, 79), _record(1, 82, 83), _record(2, 81, 80.5),
               _record(1, 82, 81)]  # repeat 1 again (a rerun): replaces the first, never counted twice
    out = stats.compare_repeats(records, margin=5.0)
    assert out["n_repeats"] == 3 and out["frameworks"] == ["tf", "torch"]
    assert out["per_framework"]["torch"]["val_accuracy"]["values"] == pytest.approx([79, 81, 80.5])
    pair = out["pairs"]["tf-torch"]
    assert pair["val_accuracy"]["n"] == 3 and pair["val_accuracy"]["diff"]["mean"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert "manifest order" in out["comparison"]


def test_every_order_names_its_comparison():
    """A verdict says which comparison it is about: every pipeline order has its sentence."""
    from bench.orders import ORDERS

    assert set(stats.ORDER_MEANING) == set(ORDERS)
    records = [_record(0, 80, 79), _record(1, 82, 83)]
    for doc in records:
        doc["config"]["order"] = "fixed-batches"
    out = stats.compare_repeats(records, margin=5.0)
    assert out["orders"] == ["fixed-batches"] and "keeping its images every epoch" in out["comparison"]


def test_compare_repeats_leaves_out_unfinished_runs():
    out = stats.compare_repeats([_record(0, 80, 79), _record(1, 82, 20, status="stopped")], margin=5.0)
    assert out["excluded"]["torch"] == [1]
    assert out["pairs"]["tf-torch"]["val_accuracy"]["n"] == 1


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13])
def test_quartiles_match_numpy_and_pytest_benchmark(n):
    """One IQR for the whole tool: ``linear`` is numpy's (and pandas') default; ``pytest-benchmark``
    is pytest_benchmark.stats.Stats' own, so stored bench IQRs compare with pytest-benchmark's."""
    from pytest_benchmark.stats import Stats

    from bench.quartiles import iqr, quartiles

    values = list(np.random.default_rng(n).lognormal(size=n))
    q1, median, q3 = quartiles(values)
    assert (q1, median, q3) == pytest.approx(np.percentile(values, [25, 50, 75]), rel=1e-12)
    pb = Stats()
    for v in values:
        pb.update(v)
    q1, median, q3 = quartiles(values, "pytest-benchmark")
    assert (q1, median, q3) == pytest.approx((pb.q1, pb.median, pb.q3), rel=1e-12)
    assert iqr(values, "pytest-benchmark") == pytest.approx(pb.iqr, rel=1e-12)
    with pytest.raises(ValueError, match="quartile method"):
        quartiles(values, "nearest")


def test_spread_sources_split_the_accuracy_variance_exactly():
    """The per-seed accuracy's sample variance is the images' variances plus their covariances."""
    rng = np.random.default_rng(7)
    correct = rng.random((5, 113)) < rng.random(113)  # images of every difficulty
    out = stats.spread_sources(correct)
    acc = correct.mean(axis=1) * 100
    assert out["variance"] == pytest.approx(acc.var(ddof=1), rel=1e-12)
    assert out["per_image_variance"] == pytest.approx(correct.var(axis=0, ddof=1).sum() / 113**2 * 1e4, rel=1e-12)
    assert out["per_image_variance"] + out["between_images_variance"] == pytest.approx(out["variance"], rel=1e-12)
    mixed = (correct.min(axis=0) != correct.max(axis=0)).sum()
    assert (out["mixed"], out["always_right"] + out["never_right"]) == (mixed, 113 - mixed)


def test_spread_sources_on_constructed_runs():
    # Every run equally good, on different images: no spread, all of the per-image part cancelled.
    equal = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    out = stats.spread_sources(equal)
    assert out["variance"] == pytest.approx(0, abs=1e-9) and out["per_image_variance"] > 0
    assert out["between_images_variance"] == pytest.approx(-out["per_image_variance"])
    assert "none (the images' covariances sum below 0)" in stats.fmt_sources("tf", out)
    # The same images right in every run: nothing to split.
    same = stats.spread_sources(np.array([[1, 1, 0, 0]] * 3))
    assert same["variance"] == same["per_image_variance"] == 0 and same["mixed"] == 0
    # Nested runs (run k gets the k easiest images right): whole runs better or worse.
    nested = stats.spread_sources(np.tril(np.ones((4, 4)))[:, ::-1][::-1])
    assert nested["between_images_variance"] > 0 and nested["variance"] > nested["per_image_variance"] > 0
    with pytest.raises(ValueError, match="at least 2 runs"):
        stats.spread_sources(np.ones((1, 5)))


def test_compare_repeats_splits_each_frameworks_spread_from_its_predictions():
    labels = [0, 1, 2, 3, 0, 1]
    rights = {"tf": [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]],
              "torch": [[1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0], [0, 0, 1, 0, 1, 0]]}
    records = []
    for i in range(3):
        doc = _record(i, 50, 50)
        for fw, runs in rights.items():
            predicted = [lab if ok else (lab + 1) % 4 for lab, ok in zip(labels, runs[i])]
            doc["frameworks"][fw]["predictions"] = {"paths": [f"v/{k}.jpg" for k in range(6)], "labels": labels,
                                                    "predicted": predicted}
        records.append(doc)
    out = stats.compare_repeats(records, margin=5.0)
    for fw, runs in rights.items():
        assert out["spread_sources"][fw] == stats.spread_sources(np.array(runs))
    records[1]["frameworks"]["tf"]["status"] = "stopped"  # an unfinished run's predictions are not counted
    assert stats.compare_repeats(records, margin=5.0)["spread_sources"]["tf"] == stats.spread_sources(
        np.array(rights["tf"])[[0, 2]])
    records[2]["frameworks"]["torch"]["predictions"]["paths"][0] = "other.jpg"  # another validation set
    assert set(stats.compare_repeats(records, margin=5.0)["spread_sources"]) == {"tf"}
