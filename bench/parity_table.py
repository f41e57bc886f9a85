"""The parity table (framework-free): which arrays each (probe point, check) cell compares, the
cells judged (``bench.parity_metrics``), the first failure, the trajectory curve, text output.

``bench.parity`` runs the workers and calls these; the array keys and the trajectory sample are
``bench.parity_spec``'s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench import parity_metrics as pm
from bench.atomic import json_safe
from bench import parity_spec as ps
from bench.spec import ModelSpec

# The metric that decides a calibrated cell. Gradients and the trajectory by the normwise error per
# tensor: their max_rel is one element's (a ReLU or max-pool derivative flipped by the last bit).
CALIBRATED_METRIC = {"grad-iso": "norm_rel", "grad": "norm_rel", "traj": "norm_rel"}
# The arms in the printed table; the record's "tf"/"torch" slots are the reference's and the
# candidate's (config.arms names them).
SHORT = {"tf": "TF", "torch": "torch", "keras-torch": "kt"}
FIXED_ONLY = ("input",)  # two data pipelines: there is no float64 of a JPEG decoder


# ---- what belongs to which row ---------------------------------------------------------------------
def owner(spec: ModelSpec, layer_name: str) -> str:
    """The probe point that owns a weighted layer: stem, a block id, or logits (the head)."""
    if layer_name in {layer.name for layer in spec.stem_layers()}:
        return "stem"
    if layer_name in {layer.name for layer in spec.head_layers()}:
        return "logits"
    return spec.layer(layer_name).block


def weights_by_owner(spec: ModelSpec) -> dict[str, list[str]]:
    """Probe point -> the bundle keys (``layer/weight``) it owns, in model order."""
    out: dict[str, list[str]] = {}
    for layer in spec.layers():
        point = owner(spec, layer.name)
        out.setdefault(point, []).extend(f"{layer.name}/{w}" for w in layer.weight_names)
    return out


def trajectory_arrays(spec: ModelSpec, arrays: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """``trajK/<key>``: each sampled tensor after the last step (views), and ``traj/loss``."""
    sample = arrays[prefix + ps.TRAJ_SAMPLE][-1]
    out = {ps.key(ps.TRAJ_K, k): sample[s] for k, s in ps.sample_offsets(spec).items()}
    out[ps.TRAJ_LOSS] = arrays[prefix + ps.TRAJ_LOSS]
    return out


def trajectory_own(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """A side's chaos baseline: its trajectory from the bundle against its trajectory from the
    bundle perturbed by one ulp (``chaos/traj/...``), per sampled tensor and for the loss."""
    base, chaos = trajectory_arrays(spec, arrays), trajectory_arrays(spec, arrays, ps.key(ps.CHAOS, ""))
    return {k: pm.array_stats(base[k], chaos[k]) for k in base}


# ---- the table ------------------------------------------------------------------------------------
def cell_layout(spec: ModelSpec, other: dict[str, np.ndarray], columns: list[str],
                with_input: bool) -> dict[tuple[str, str], dict[str, dict[str, tuple[str, str]]]]:
    """(row, column) -> {kind: {array name: (reference key, other key)}} for every cell the other
    side returned arrays for."""
    key, same = ps.key, (lambda k: (k, k))

    def vs_ref(other_key: str) -> tuple[str, str]:
        return ps.reference_key(spec, other_key), other_key

    out: dict[tuple[str, str], dict[str, dict[str, tuple[str, str]]]] = {}
    if with_input and "input" in columns:
        out[("input", "input")] = {"": {"": same(ps.INPUT_X)}}
    for column, kind in (("forward", ps.FWD), ("isolated", ps.ISO), ("train", ps.TRAIN), ("train-iso", ps.TRISO)):
        if column not in columns:
            continue
        for point in spec.probe_points:
            if key(kind, point) in other:
                out[(point, column)] = {"": {"": vs_ref(key(kind, point))}}
    if "train" in columns and ps.TRAIN_LOSS in other:
        out[("loss", "train")] = {"": {"": same(ps.TRAIN_LOSS)}}
    traj = "traj" in columns and ps.TRAJ_SAMPLE in other
    for point, keys in weights_by_owner(spec).items():
        stats = [k for k in keys if ps.is_stat(k)]
        params = [k for k in keys if not ps.is_stat(k)]
        if "bn" in columns and stats and key(ps.BN, stats[0]) in other:
            out[(point, "bn")] = {stat: {k: same(key(ps.BN, k)) for k in stats if k.endswith("/" + stat)}
                                  for stat in ps.BN_STATS}
        if "grad" in columns and params and key(ps.GRAD, params[0]) in other:
            out[(point, "grad")] = {"": {k: same(key(ps.GRAD, k)) for k in params}}
        if "grad-iso" in columns and params and all(key(ps.GRADISO, k) in other for k in params):
            parts = {"params": {k: vs_ref(key(ps.GRADISO, k)) for k in params}}
            before = ps.previous_point(spec, point)
            if before and key(ps.DXISO, point) in other:
                parts["input"] = {f"d{before}": vs_ref(key(ps.DXISO, point))}
            out[(point, "grad-iso")] = parts
        for column in (ps.ADAM, ps.SGD):
            if column in columns and params and key(column, params[0]) in other:
                parts = {"params": {k: same(key(column, k)) for k in params}}
                for moment in ("m", "v"):
                    if ps.moment_key(column, moment, params[0]) in other:
                        parts[moment] = {k: same(ps.moment_key(column, moment, k)) for k in params}
                out[(point, column)] = parts
        if traj:
            out[(point, "traj")] = {"weights": {k: same(key(ps.TRAJ_K, k)) for k in params}, **{
                stat: {k: same(key(ps.TRAJ_K, k)) for k in stats if k.endswith("/" + stat)} for stat in ps.BN_STATS}}
    if traj:
        out[("loss", "traj")] = {"": {"": same(ps.TRAJ_LOSS)}}
    return out


def build_table(spec: ModelSpec, ref: dict[str, np.ndarray], other: dict[str, np.ndarray], columns: list[str],
                tolerances: dict[str, float], inputs: tuple[np.ndarray, np.ndarray] | None = None,
                own: dict[str, dict[str, dict[str, Any]]] | None = None, *, k: float = pm.K,
                floor: float = pm.FLOOR) -> dict[str, Any]:
    """Compare the reference's and the other side's arrays into ``{row: {column: cell | None}}``.
    ``own`` ({"tf": {other key: array_stats}, "torch": ...}): calibrate every cell both sides
    measured their own error for (``judge: calibrated``); the rest, and every cell without
    ``own``, against the fixed ``tolerances`` (``judge: fixed``)."""
    rows = (["input"] if inputs is not None else []) + list(spec.probe_points) + ["loss"]
    table: dict[str, dict[str, Any]] = {row: {c: None for c in columns} for row in rows}
    ref, other = dict(ref), dict(other)
    if inputs is not None:
        ref[ps.INPUT_X], other[ps.INPUT_X] = inputs
    if ps.TRAJ_SAMPLE in other and ps.TRAJ_SAMPLE in ref:
        ref.update(trajectory_arrays(spec, ref))
        other.update(trajectory_arrays(spec, other))
    for (row, column), parts in cell_layout(spec, other, columns, inputs is not None).items():
        cross = {kind: {name: pm.array_stats(ref[rk], other[ok]) for name, (rk, ok) in pairs.items()}
                 for kind, pairs in parts.items() if pairs}
        cell = None
        if own is not None and column not in FIXED_ONLY:
            sides = [{kind: {name: own[side][ok] for name, (_, ok) in pairs.items() if ok in own[side]}
                      for kind, pairs in parts.items() if pairs} for side in ("tf", "torch")]
            if all(any(kinds.values()) for kinds in sides):
                cell = pm.judge_calibrated(cross, sides[0], sides[1], CALIBRATED_METRIC.get(column, "max_rel"),
                                           k=k, floor=floor)
                cell.update(judge="calibrated", fixed_tol=tolerances[column])
        if cell is None:
            cell = pm.judge_fixed(pm.parts_metrics(cross), tolerances[column])
            cell["judge"] = "fixed"
        table[row][column] = cell
    return {"rows": rows, "table": table}


def trajectory_curve(spec: ModelSpec, ref: dict[str, np.ndarray], other: dict[str, np.ndarray],
                     onset: float) -> dict[str, Any]:
    """Per step: both losses, the loss's relative error, and the relative error of the sampled
    trainable weights and of the BN statistics (max|a-b| / max|ref| over all of them); with the
    chaos runs, the same for each side against itself from the one-ulp perturbed bundle."""
    offsets = ps.sample_offsets(spec)
    weights = np.concatenate([np.arange(s.start, s.stop) for k, s in offsets.items() if not ps.is_stat(k)])
    stats = np.concatenate([np.arange(s.start, s.stop) for k, s in offsets.items() if ps.is_stat(k)] or [np.arange(0)])

    def rel(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> list[float]:
        a, b = a.astype(np.float64), b.astype(np.float64)
        if not len(idx):
            return []
        return [float(np.max(np.abs(a[k, idx] - b[k, idx])) / max(np.max(np.abs(a[k, idx])), 1e-300))
                for k in range(len(a))]

    def loss_rel(la: np.ndarray, lb: np.ndarray) -> list[float]:
        la, lb = la.astype(np.float64), lb.astype(np.float64)
        return (np.abs(la - lb) / np.maximum(np.abs(la), 1e-300)).tolist()

    la, lb = ref[ps.TRAJ_LOSS].astype(np.float64), other[ps.TRAJ_LOSS].astype(np.float64)
    curve = {"steps": len(la), "loss_tf": la.tolist(), "loss_torch": lb.tolist(), "loss_rel": loss_rel(la, lb),
             "param_rel": rel(ref[ps.TRAJ_SAMPLE], other[ps.TRAJ_SAMPLE], weights),
             "bn_rel": rel(ref[ps.TRAJ_SAMPLE], other[ps.TRAJ_SAMPLE], stats), "onset": onset}
    curve["agree_steps"] = next((i for i in range(len(la)) if max(curve["loss_rel"][i], curve["param_rel"][i]) > onset),
                                len(la))
    chaos_loss, chaos_sample = ps.key(ps.CHAOS, ps.TRAJ_LOSS), ps.key(ps.CHAOS, ps.TRAJ_SAMPLE)
    for side, arrays in (("tf", ref), ("torch", other)):
        if chaos_sample in arrays:
            curve[f"chaos_{side}"] = {"loss_rel": loss_rel(arrays[ps.TRAJ_LOSS], arrays[chaos_loss]),
                                      "param_rel": rel(arrays[ps.TRAJ_SAMPLE], arrays[chaos_sample], weights)}
    return curve


def failures(table: dict[str, Any], columns: list[str]) -> list[dict[str, Any]]:
    """Failing cells, check by check in pipeline order (input, forward, ..., trajectory) and
    within a check in network order: the first names the earliest stage where the two
    implementations part, and the first block there. (Row-major order would blame the stem's
    gradient for a forward error at 3a, since gradient errors flow backwards.)"""
    out = []
    for column in columns:
        for row in table["rows"]:
            cell = table["table"][row].get(column)
            if cell is not None and not cell["ok"]:
                out.append({"block": row, "check": column, "metric": cell.get("metric", "max_rel"),
                            "value": json_safe(cell.get("value", cell["max_rel"])), "limit": cell.get("limit", cell["tol"]),
                            "max_rel": json_safe(cell["max_rel"]), "tol": cell["tol"],
                            "ratio": json_safe(cell.get("ratio")), "reason": cell["reason"]})
    return out


def first_divergent(table: dict[str, Any], columns: list[str]) -> dict[str, str | None]:
    """Per check, the first row whose cell fails (None if none does)."""
    out: dict[str, str | None] = {}
    for column in columns:
        out[column] = next((row for row in table["rows"]
                            if table["table"][row].get(column) is not None
                            and not table["table"][row][column]["ok"]), None)
    return out


def check_summary(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per check: cells, failing cells, the cell closest to (or furthest past) its limit with its
    cross error, own errors and ratio, and the loosest limit that decided any cell."""
    out = {}
    for column in result["columns"]:
        cells = [(row, c) for row in result["rows"] if (c := result["table"][row].get(column))]
        if not cells:
            continue

        def score(item):
            c = item[1]
            value = c["value"] if c["value"] is not None else math.inf
            return value / c["limit"] if c["limit"] else math.inf

        row, worst = max(cells, key=score)
        limits = sorted(c["limit"] for _, c in cells if c["limit"] is not None)
        out[column] = {"metric": worst["metric"], "judge": worst.get("judge"), "cells": len(cells),
                       "failing": sum(not c["ok"] for _, c in cells), "worst_block": row, "value": worst["value"],
                       "own_tf": worst.get("own_tf"), "own_torch": worst.get("own_torch"), "ratio": worst.get("ratio"),
                       "limit": worst["limit"], "loosest_limit": limits[-1] if limits else None,
                       "median_limit": limits[len(limits) // 2] if limits else None,
                       "fixed_tol": worst.get("fixed_tol", worst["limit"] if worst.get("judge") == "fixed" else None)}
    return out


# ---- text output ------------------------------------------------------------------------------------
def _num(value: Any, spec: str = ".1e") -> str:
    if value is None:
        return "inf"
    return "0" if value == 0 else format(value, spec)


def _fmt(cell: dict[str, Any] | None, what: str = "value") -> str:
    if cell is None:
        return "-"
    if not cell["shape_ok"]:
        return "shape!"
    if not cell["dtype_ok"]:
        return "dtype!"
    if not cell["nonfinite_ok"]:
        return "nan!"
    if what == "ratio" and cell.get("judge") != "calibrated":
        return "fixed"
    text = _num(cell.get(what), ".1e" if what == "value" else ".2g")
    return text if cell["ok"] else text + "!"


def format_table(result: dict[str, Any]) -> str:
    """The block x check tables ('!' marking a failing cell) and the per-check summary."""
    c = result["config"]
    columns = result["columns"]
    ref_arm, cand_arm = c.get("arms") or ("tf", "torch")
    R, C = SHORT[ref_arm], SHORT[cand_arm]
    width = {col: max(9, len(col) + 1) for col in columns}
    source = c["weights"] or f"random weights (seed {c['seed']})"
    if result.get("calibration"):
        source += ", calibrated"
    calibrated = result.get("judge", {}).get("mode") == "calibrated"
    lines = [f"parity {c['model']} {c['dtype']}: batch {c['batch']} at {c['input_size']} px, {source}; "
             f"{R} reference vs {C}"
             + (" (kt: the seed's Keras model on Keras' torch backend)" if "keras-torch" in (ref_arm, cand_arm) else "")
             + (f" with {', '.join(result['ablation'])} off" if result["ablation"] else ""),
             "cross-framework error per block and check: max|a-b|/max|ref|; grad-iso, grad, traj"
             + (": ||a-b||/||ref|| of the worst tensor" if calibrated else " too") + " ('!' = failing)", ""]

    def grid(what: str) -> None:
        lines.append(f"{'block':<8}" + "".join(f"{col:>{width[col]}}" for col in columns))
        for row in result["rows"]:
            lines.append(f"{row:<8}" + "".join(f"{_fmt(result['table'][row].get(col), what):>{width[col]}}"
                                              for col in columns))

    grid("value")
    if calibrated:
        j = result["judge"]
        lines += ["", f"ratio cross / max(own {R}, own {C}): each side's float32 against its own float64"
                      f" (traj: against itself from the bundle moved one ulp); pass <= {j['k']:g}, floor {j['floor']:.1e}",
                  ""]
        grid("ratio")
    lines += ["", "per check: the cell nearest its limit (cross, own errors, ratio, limit there); the median and "
                  "loosest limit over the cells; the fixed table's tolerance, and how much tighter (median/loosest)",
              f"{'check':<10}{'metric':>9}{'worst at':>9}{'cross':>9}{'own ' + R:>9}{'own ' + C:>10}{'ratio':>7}"
                  f"{'limit':>9}{'median':>9}{'loosest':>9}{'fixed':>8}{'tighter':>14}"]
    for column, s in check_summary(result).items():
        fixed, loosest, median = s["fixed_tol"], s["loosest_limit"], s["median_limit"]
        tighter = (f"{fixed / median:.0f}x/{fixed / loosest:.0f}x" if fixed and loosest and s["judge"] == "calibrated"
                   else "-")
        lines.append(f"{column:<10}{s['metric']:>9}{s['worst_block']:>9}{_num(s['value']):>9}"
                     f"{_num(s['own_tf']) if s['own_tf'] is not None else '-':>9}"
                     f"{_num(s['own_torch']) if s['own_torch'] is not None else '-':>10} "
                     f"{_num(s['ratio'], '.2g') if s['ratio'] is not None or s['judge'] == 'calibrated' else '-':>7}"
                     f"{_num(s['limit']):>9}{_num(median):>9}{_num(loosest):>9}{_num(fixed, '.0e') if fixed else '-':>8}"
                     f"{tighter:>14}")
    loss = result.get("loss")
    if loss:
        lines.append("")
        lines.append(f"loss: {R} {loss['tf']:.8g} (exact CE of the logits {loss['tf_from_logits']:.8g}: Keras "
                     f"{'recovers' if loss['keras_logits_recovered'] else 'does NOT recover'} the logits "
                     f"from the softmax), {C} {loss['torch']:.8g}")
    curve = result.get("trajectory")
    if curve:
        lines.append("")
        lines.append(f"trajectory: loss and weights within {curve['onset']:.0e} for the first "
                     f"{curve['agree_steps']} of {curve['steps']} steps")
        chaos = "chaos_tf" in curve and "chaos_torch" in curve
        lines.append(f"{'':<16}{'step':>4} {'loss ' + R:>12} {'loss ' + C:>12} {'loss rel':>9} {'param rel':>9} "
                     f"{'bn rel':>9}" + (f" {R + ' 1ulp':>9} {C + ' 1ulp':>10}" if chaos else ""))
        for i in range(curve["steps"]):
            line = (f"{'':<16}{i + 1:>4} {curve['loss_tf'][i]:>12.6f} {curve['loss_torch'][i]:>12.6f} "
                    f"{curve['loss_rel'][i]:>9.1e} {curve['param_rel'][i]:>9.1e} "
                    f"{(curve['bn_rel'][i] if curve['bn_rel'] else 0):>9.1e}")
            if chaos:
                line += f" {curve['chaos_tf']['param_rel'][i]:>9.1e} {curve['chaos_torch']['param_rel'][i]:>10.1e}"
            lines.append(line)
    lines.append("")
    first = result["first_failure"]
    if first:
        lines.append(f"FAIL: first divergent block {first['block']}, check {first['check']}: {first['reason']}"
                     f" ({len(result['failures'])} failing cells)")
    else:
        lines.append(f"PASS: every check within tolerance ({result['seconds']['total']:.0f} s)")
    return "\n".join(lines)


def summarize(result: dict[str, Any], expect: tuple[str, str] | None = None) -> dict[str, Any]:
    """Verdict, first failure, the worst error and the worst ratio per check, for an ablation table."""
    worst: dict[str, float | None] = {}
    ratio: dict[str, float | None] = {}
    shape = []
    for column in result["columns"]:
        cells = [cell for row in result["rows"] if (cell := result["table"][row].get(column))]
        if any(not cell["shape_ok"] for cell in cells):
            shape.append(column)
        values = [cell["value"] for cell in cells if cell["shape_ok"]]
        worst[column] = max((v if v is not None else math.inf for v in values), default=None)
        ratios = [cell.get("ratio") for cell in cells if cell["shape_ok"] and cell.get("judge") == "calibrated"]
        ratio[column] = max((v if v is not None else math.inf for v in ratios), default=None)
    first = result["first_failure"]
    out = {"verdict": result["verdict"], "first_failure": first, "worst": worst, "worst_ratio": ratio,
           "shape_mismatch": shape}
    if expect is not None:
        out["expected"] = {"check": expect[0], "block": expect[1]}
        out["detected"] = bool(first is not None and first["check"] == expect[0])
        out["at_expected_block"] = bool(out["detected"] and first["block"] == expect[1])
    return out


def format_ablation_table(result: dict[str, Any]) -> str:
    """What each mismatch costs: per ablation, the first failing block/check and the worst
    ratio (calibrated cells) or error (fixed) per check."""
    columns = result["results"]["baseline"]["columns"]
    calibrated = result["results"]["baseline"].get("judge", {}).get("mode") == "calibrated"
    what = "worst ratio cross / max(own) per check" if calibrated else "worst error per check"
    lines = [f"what each mismatch costs ({what}; each ablation alone, one TF reference)", ""]
    lines.append(f"{'ablation':<18}{'first failure':<22}" + "".join(f"{col:>10}" for col in columns))

    def line(name: str, summary: dict[str, Any]) -> str:
        first = summary["first_failure"]
        where = f"{first['check']} @ {first['block']}" if first else "none"
        cells = ""
        for col in columns:
            value = (summary.get("worst_ratio") or {}).get(col) if calibrated else None
            value = value if value is not None else summary["worst"].get(col)
            text = ("shape!" if col in summary["shape_mismatch"] else "-" if value is None
                    else format(value, ".2g" if calibrated else ".1e"))
            cells += f"{text:>10}"
        return f"{name:<18}{where:<22}{cells}"

    lines.append(line("(aligned)", result["baseline"]))
    for name, summary in result["ablations"].items():
        lines.append(line(name, summary))
    lines.append("")
    for name, summary in result["ablations"].items():
        lines.append(f"{name}: {summary['description']}")
    return "\n".join(lines)
