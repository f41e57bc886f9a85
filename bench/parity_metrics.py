"""Parity metrics (framework-free): per-array statistics, cells and the two judges.

Each array pair is reduced to :func:`array_stats`, sufficient statistics a worker can compute too
(its own float32-vs-float64 error without shipping float64 arrays). From them, per cell:
``max_rel`` (max|a - b| / max|ref| per kind of array), ``norm_rel`` (||a - b|| / ||ref|| per
tensor) and ``cosine``. :func:`judge_fixed` compares with a tolerance; :func:`judge_calibrated`
passes a unit when the cross-framework error is at most ``K`` times the larger of the two
frameworks' own errors, never below ``FLOOR``. The metrics, K = 2 and the floor: docs/parity.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.atomic import json_safe

# tolerance = max(K x max(own errors), FLOOR). K = 2 is the triangle inequality: with x the exact
# (float64) value, |a - b| <= |a - x| + |x - b| <= 2 max(|a - x|, |b - x|), in max-abs and in
# any norm alike; measured ratios of the aligned port stay below it (docs/parity.md).
K = 2.0
# ... up to the rounding of the two sides' float64 references and of max|ref| in float32 (the
# cross error's denominator is float32's max|ref|, the own errors' float64's): measured ratios of
# 2.0 exactly occur (one ulp apart, each half an ulp from the exact value), so the bound gets
# this much room and no more.
SLACK = 1 + 2.0 ** -20
FLOOR = 2.0 ** -24  # float32's unit roundoff: no relative error below it is measurable in float32
CHUNK = 1 << 24  # elements per float64 chunk in array_stats: two reused 128 MiB buffers (fewer, larger
# chunks: each multi-threaded BLAS call costs ~8 ms of thread wake-up on a loaded 2-core machine)
_SCRATCH: list[np.ndarray] = []


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b in float64: einsum's single-threaded loop below 4M elements (BLAS wakes its threads
    for each call: 8 ms for 65k elements measured, einsum 0.09 ms), BLAS above."""
    return float(np.einsum("i,i->", a, b) if a.size < (1 << 22) else a @ b)


def _scratch(slot: int, n: int, fill: np.ndarray | None = None) -> np.ndarray:
    """A reused float64 buffer of n elements (fresh large allocations cost a page fault per 4 KiB:
    measured 0.3 s per 25M elements, more than the arithmetic)."""
    while len(_SCRATCH) <= slot:
        _SCRATCH.append(np.empty(CHUNK, dtype=np.float64))
    out = _SCRATCH[slot][:n]
    if fill is not None:
        out[...] = fill
    return out


def array_stats(ref: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Sufficient statistics of ``other`` against ``ref`` (JSON-safe; see the module docstring)."""
    ref, other = np.asarray(ref), np.asarray(other)
    out: dict[str, Any] = {"shape_ok": ref.shape == other.shape, "dtype_ok": ref.dtype == other.dtype,
                           "nonfinite_ok": True, "reason": None, "max_abs": 0.0, "scale": 0.0, "where": None,
                           "d2": 0.0, "r2": 0.0, "rd": 0.0, "o2": 0.0, "dot": 0.0, "size": int(ref.size)}
    if not out["dtype_ok"]:
        out["reason"] = f"dtype {other.dtype} != reference {ref.dtype}"
    if not out["shape_ok"]:
        out["reason"] = f"shape {other.shape} != reference {ref.shape}"
        out["max_abs"] = math.inf
        return out
    r, o = ref.ravel(), other.ravel()
    if r.size:
        # In float64 chunks (bounded temporaries): the difference and
        # three dot products; ||other||^2 and <ref, other> follow from them (other = ref - d).
        r2 = d2 = rd = 0.0
        best, flat, scale = -1.0, 0, 0.0
        for start in range(0, r.size, CHUNK):
            rs, os_ = r[start:start + CHUNK], o[start:start + CHUNK]
            rc = rs if rs.dtype == np.float64 else _scratch(0, len(rs), rs)
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the slow path below sorts it out
                dc = np.subtract(rc, os_, out=_scratch(1, len(rs)), dtype=np.float64)
            r2, d2, rd = r2 + _dot(rc, rc), d2 + _dot(dc, dc), rd + _dot(rc, dc)
            np.abs(dc, out=dc)
            i = int(np.argmax(dc))
            if dc[i] > best:
                best, flat = float(dc[i]), start + i
            scale = max(scale, float(rc.max()), float(-rc.min()))
        if not (math.isfinite(r2) and math.isfinite(d2)):  # squares of float32-range values cannot overflow
            return _nonfinite(out, ref, other)
        out.update(d2=d2, r2=r2, rd=rd, o2=max(r2 - 2 * rd + d2, 0.0), dot=r2 - rd, max_abs=best, scale=scale)
        out["where"] = {"index": [int(i) for i in np.unravel_index(flat, ref.shape)],
                        "ref": float(r[flat]), "other": float(o[flat])}
    return out


def _nonfinite(out: dict[str, Any], ref: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """array_stats where either side has NaN or inf: the masks must agree; metrics over the
    elements finite on both sides."""
    r, o = ref.astype(np.float64), other.astype(np.float64)
    for test, what in ((np.isnan, "NaN"), (np.isposinf, "+inf"), (np.isneginf, "-inf")):
        if not np.array_equal(test(r), test(o)):
            out["nonfinite_ok"] = False
            out["reason"] = out["reason"] or f"{what} positions differ"
    finite = np.isfinite(r) & np.isfinite(o)
    stats = array_stats(np.where(finite, r, 0.0), np.where(finite, o, 0.0))
    for key in ("max_abs", "scale", "where", "d2", "r2", "rd", "o2", "dot"):
        out[key] = stats[key]
    return out


def norm_rel(stats: dict[str, Any]) -> float:
    """||a - b|| / ||ref|| of one array's statistics."""
    if not stats["shape_ok"]:
        return math.inf
    if stats["r2"] > 0:
        return math.sqrt(stats["d2"] / stats["r2"])
    return 0.0 if stats["d2"] == 0 else math.inf


def cosine(stats: dict[str, Any]) -> float:
    """<ref, other> / (||ref|| ||other||); 1 for two zero arrays, 0 when only one is zero."""
    if not stats["shape_ok"]:
        return 0.0
    if stats["r2"] == 0 or stats["o2"] == 0:
        return 1.0 if stats["r2"] == stats["o2"] else 0.0
    # From the difference d = ref - other: (1 - x) / sqrt(1 - 2x + y), x = <ref, d>/||ref||^2,
    # y = ||d||^2/||ref||^2; no cancellation of two nearly equal norms.
    x, y = stats["rd"] / stats["r2"], stats["d2"] / stats["r2"]
    return min(1.0, (1 - x) / math.sqrt(max(1 - 2 * x + y, 1e-300)))


def group(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Metrics over several arrays of one kind: max_rel = max|a-b| over all / max|ref| over all;
    norm_rel the worst tensor's, cosine the smallest."""
    out: dict[str, Any] = {"shape_ok": True, "dtype_ok": True, "nonfinite_ok": True, "max_abs": 0.0,
                           "max_rel": 0.0, "norm_rel": 0.0, "cosine": 1.0, "where": None, "reason": None,
                           "norm_tensor": None}
    worst, scale = -1.0, 0.0
    for name, s in stats.items():
        for flag in ("shape_ok", "dtype_ok", "nonfinite_ok"):
            out[flag] = out[flag] and s[flag]
        if s["reason"] and out["reason"] is None:
            out["reason"] = f"{name}: {s['reason']}" if name else s["reason"]
        nr = norm_rel(s)
        if nr > out["norm_rel"] or out["norm_tensor"] is None:
            out["norm_rel"], out["norm_tensor"] = max(nr, out["norm_rel"]), name or None
        out["cosine"] = min(out["cosine"], cosine(s))
        if not s["shape_ok"]:
            continue
        scale = max(scale, s["scale"])
        if s["where"] is not None and s["max_abs"] > worst:
            worst = s["max_abs"]
            out["where"] = {"array": name or None, **s["where"]}
    if not out["shape_ok"]:
        out["max_abs"] = out["max_rel"] = math.inf
        return out
    out["max_abs"] = max(worst, 0.0)
    out["max_rel"] = out["max_abs"] / scale if scale > 0 else (0.0 if out["max_abs"] == 0 else math.inf)
    return out


def parts_metrics(parts: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Several kinds (e.g. parameters, m, v), each its own max_rel; the cell is its worst kind.
    ``parts`` maps kind -> {array name: array_stats}."""
    results = {kind: group(stats) for kind, stats in parts.items() if stats}
    if not results:
        raise ValueError("nothing to compare")
    kind = max(results, key=lambda k: (not results[k]["shape_ok"], results[k]["max_rel"]))
    out = dict(results[kind])
    for flag in ("shape_ok", "dtype_ok", "nonfinite_ok"):
        out[flag] = all(r[flag] for r in results.values())
    out["reason"] = next((r["reason"] for r in results.values() if r["reason"]), None)
    norm_kind = max(results, key=lambda k: results[k]["norm_rel"])
    out["norm_rel"], out["norm_tensor"] = results[norm_kind]["norm_rel"], results[norm_kind]["norm_tensor"]
    out["cosine"] = min(r["cosine"] for r in results.values())
    if len(results) > 1:
        out["parts"] = {k: json_safe(r["max_rel"]) for k, r in results.items()}
        out["worst_part"] = kind
    return out


def compare(ref: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Error metrics of ``other`` against ``ref``: shape, dtype, non-finite masks, max abs / rel,
    normwise relative error and cosine."""
    return compare_group({"": (ref, other)})


def compare_group(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Metrics over several arrays at once: max_rel = max|a-b| over all / max|ref| over all."""
    return group({name: array_stats(r, o) for name, (r, o) in pairs.items()})


def compare_parts(parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, Any]:
    """:func:`parts_metrics` of array pairs: ``parts`` maps kind -> {array name: (ref, other)}."""
    return parts_metrics({kind: {n: array_stats(r, o) for n, (r, o) in pairs.items()}
                          for kind, pairs in parts.items()})


def _sound(metrics: dict[str, Any]) -> bool:
    return bool(metrics["shape_ok"] and metrics["dtype_ok"] and metrics["nonfinite_ok"])


def judge_fixed(metrics: dict[str, Any], tol: float) -> dict[str, Any]:
    """A cell judged by a fixed tolerance on max_rel (float64, and float32 with --fixed-tolerances)."""
    cell = dict(metrics)
    ok = _sound(metrics) and metrics["max_rel"] <= tol
    cell.update(metric="max_rel", value=metrics["max_rel"], limit=tol, tol=tol, ok=bool(ok))
    if not ok and cell.get("reason") is None:
        cell["reason"] = f"max rel error {metrics['max_rel']:.2e} > tolerance {tol:.0e}"
    if ok:
        cell["reason"] = None
    return cell


def _units(parts: dict[str, dict[str, dict[str, Any]]], metric: str) -> dict[str, float]:
    """The units a calibrated cell is judged by: each kind's max_rel, or each tensor's norm_rel."""
    if metric == "max_rel":
        return {kind: group(stats)["max_rel"] for kind, stats in parts.items() if stats}
    return {f"{kind}:{name}" if len(parts) > 1 else name: norm_rel(s)
            for kind, stats in parts.items() for name, s in stats.items()}


def judge_calibrated(cross: dict[str, dict[str, dict[str, Any]]], own_tf: dict[str, dict[str, dict[str, Any]]],
                     own_torch: dict[str, dict[str, dict[str, Any]]], metric: str, *, k: float = K,
                     floor: float = FLOOR) -> dict[str, Any]:
    """A cell judged against the frameworks' own errors: per unit, pass when
    cross <= max(k x max(own_tf, own_torch), floor). The three arguments hold array_stats in the
    same kind -> {array: stats} shape; a unit missing from an own side counts as own error 0."""
    cell = parts_metrics(cross)
    values = _units(cross, metric)
    tf_units, torch_units = _units(own_tf, metric), _units(own_torch, metric)
    best: tuple[float, str] | None = None
    for unit, value in values.items():
        own = max(tf_units.get(unit, 0.0), torch_units.get(unit, 0.0))
        limit = max(k * own * SLACK, floor)
        score = value / limit if math.isfinite(value) else math.inf
        if best is None or score > best[0]:
            best = (score, unit)
    score, unit = best if best else (0.0, None)
    value = values.get(unit, 0.0)
    a, b = tf_units.get(unit, 0.0), torch_units.get(unit, 0.0)
    limit = max(k * max(a, b) * SLACK, floor)
    ok = _sound(cell) and score <= 1.0
    cell.update(metric=metric, value=value, limit=limit, unit=unit, own_tf=a, own_torch=b,
                ratio=value / max(a, b) if max(a, b) > 0 else (0.0 if value == 0 else math.inf),
                tol=limit if metric == "max_rel" else None, ok=bool(ok))
    if ok:
        cell["reason"] = None
    elif cell.get("reason") is None:
        name = metric.replace("_", " ")
        cell["reason"] = (f"{name} {value:.2e}{f' ({unit})' if unit and metric == 'norm_rel' else ''} > "
                          f"{k:g} x own {max(a, b):.1e} (TF {a:.1e}, torch {b:.1e})")
    return cell


