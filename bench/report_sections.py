"""The report's Parity, Performance, Residual structure and Models sections, and
:class:`Builder`, which builds all of a report's sections."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.report_doc import Section, fmt_num, fmt_pct, ratio, short_commit
from bench.frameworks import FRAMEWORK_LABELS, FRAMEWORKS as FW
from bench.report_records import SectionBuilder, bench_conditions, bench_rows, machine_text
from bench.report_summary import SummarySections
from bench.report_training import TrainingSections
from bench.runset import Record, metrics, parity_result, parity_rows


def block_table(spec) -> pd.DataFrame:
    t = pd.DataFrame(spec.block_table())
    t["params"] = [f"{v:,}" for v in t["params"]]
    t["GFLOPs"] = [f"{v / 1e9:.3f}" for v in t["flops"]]
    return t.drop(columns=["flops"])


def residual_frame(record: Record) -> pd.DataFrame:
    rows = []
    for stage in ("before", "after"):
        for fw, result in sorted((record.doc.get("stages", {}).get(stage) or {}).items()):
            for u in result.get("units", []):
                rows.append({"unit": u["unit"], "block": u["block"], "framework": fw, "stage": stage,
                             "median": u["ratio_median"], "q1": u["ratio_q1"], "q3": u["ratio_q3"],
                             "mean": u["ratio_mean"]})
    return pd.DataFrame(rows, columns=["unit", "block", "framework", "stage", "median", "q1", "q3", "mean"])


class MeasurementSections(SectionBuilder):
    """The Parity, Performance, Residual structure and Models sections."""

    def parity(self) -> Section:
        from bench import figures
        from bench.spec import build_spec

        s = Section("Parity")
        record = self.ctx.latest("parity")
        if record is None:
            s.p("No parity record: parity was not run.")
            return s
        result = parity_result(record.doc)
        cfg = result.get("config", {})
        rows = parity_rows(result)
        verdict = str(result.get("verdict", "?")).upper()
        first = result.get("first_failure")
        s.p(f"**{verdict}**: TensorFlow is the reference; {len(rows)} cells ({len(result.get('columns', []))} checks "
            f"x {len(result.get('rows', []))} probe points), {cfg.get('dtype')}, batch {cfg.get('batch')} at "
            f"{cfg.get('input_size')} px." + (f" First divergent block: {first['block']} ({first['check']}): "
                                              f"{first.get('reason', '')}." if first else ""))
        judge = result.get("judge") or {}
        if judge.get("mode") == "calibrated":
            s.p(f"Tolerances calibrated in this run: each framework's float32 error against its own float64 on the "
                f"same weights and inputs (the trajectory: against itself from the bundle moved by one ulp); a cell "
                f"passes when the cross-framework error is at most {judge.get('k', 2):g} x the larger own error "
                f"(floor {judge.get('floor', 0):.1e}). Gradients and the trajectory by the normwise error "
                f"||a-b||/||ref|| per tensor; the rest by max|a-b|/max|ref|.")
        frame = pd.DataFrame(rows)
        if len(frame):
            try:
                order = ["input"] + build_spec(cfg.get("model", "resnet50"), int(cfg.get("classes", 1000)),
                                               int(cfg.get("input_size", 224)), cfg.get("pooling", "avg7")).probe_points + ["loss"]
            except UserError:
                order = list(result.get("rows", []))
            order = [p for p in order if p in set(frame["block"])] + [b for b in result.get("rows", []) if b not in order]
            cond = (f"{cfg.get('model')} {cfg.get('dtype')}, batch {cfg.get('batch')} at {cfg.get('input_size')} px; "
                    f"{machine_text(record)}; commit {short_commit(record.commit)}; one measurement per cell "
                    f"(deterministic: a repeat gives the same numbers)")
            s.figure(self.save("parity.png", figures.parity_errors(frame, order=order, conditions=cond)),
                     "Cross-framework error per probe point, one line per check (max|a-b|/max|ref|; gradients "
                     "and trajectory ||a-b||/||ref|| when calibrated); dotted: each cell's limit. Right: the "
                     "ratio to the larger of the two frameworks' own float32 errors.")
            s.table(self.parity_summary(frame, result), "Per check: the cell nearest its limit (cross error, own "
                                                        "errors, ratio), the limits, and the first failing block")
        ablations = record.doc.get("ablations") if record.doc.get("format") == "twinbench.parity-ablations" else None
        if ablations:
            s.h3("What each known mismatch costs")
            s.table(self.ablation_table(record.doc), "Each alignment switched off alone on the torch side, against "
                                                     "the same TF reference: the check that catches it and where.")
        else:
            s.p("No ablation table in this record (run `twinbench parity --ablation-table --json OUT`).")
        curve = result.get("trajectory")
        if curve and curve.get("steps"):
            s.figure(self.save("trajectory.png", figures.parity_trajectory(
                curve, conditions=f"{cfg.get('model')} {cfg.get('dtype')}, batch {cfg.get('batch')} at "
                                  f"{cfg.get('input_size')} px; {machine_text(record)}")),
                     f"{curve['steps']} training steps on identical batches in identical order: the losses and "
                     f"how far the two frameworks drift apart.")
        loss = result.get("loss")
        if loss:
            s.p(f"Loss on the parity batch: TF {loss.get('tf'):.8g}, torch {loss.get('torch'):.8g}.")
        return s

    def parity_summary(self, frame: pd.DataFrame, result: dict[str, Any]) -> pd.DataFrame:
        rows = []
        for check, sub in frame.groupby("check", sort=False):
            score = sub["value"].astype(float) / sub["limit"].astype(float)
            worst = sub.loc[score.idxmax()]
            failing = sub[~sub["passed"]]
            limits = sub["limit"].astype(float).sort_values()
            rows.append({"check": check, "metric": worst["metric"], "judge": worst["judge"], "at": worst["block"],
                         "cross error": fmt_num(float(worst["value"]), ".2e"),
                         "own TF": fmt_num(worst["own_tf"], ".1e"), "own torch": fmt_num(worst["own_torch"], ".1e"),
                         "ratio": fmt_num(worst["ratio"], ".2g"), "limit there": fmt_num(worst["limit"], ".1e"),
                         "median limit": fmt_num(float(limits.iloc[len(limits) // 2]), ".1e"),
                         "fixed tolerance": fmt_num(worst["fixed_tol"], ".0e"),
                         "cells": len(sub), "failing": len(failing),
                         "first failing block": failing["block"].iloc[0] if len(failing) else "-"})
        return pd.DataFrame(rows)

    def ablation_table(self, doc: dict[str, Any]) -> pd.DataFrame:
        rows = []
        for name, a in (doc.get("ablations") or {}).items():
            first = a.get("first_failure") or {}
            worst = a.get("worst") or {}
            check = first.get("check")
            expected = a.get("expected") or {}
            rows.append({"ablation": name, "what it switches off": a.get("description", ""),
                         "first failure": f"{check} at {first.get('block')}" if first else "none (not detected)",
                         "error there": fmt_num(first.get("value", first.get("max_rel")), ".1e"),
                         "x its limit": fmt_num(ratio(first.get("value", first.get("max_rel")),
                                                       first.get("limit", first.get("tol"))), ".3g"),
                         "x own error": fmt_num(first.get("ratio"), ".3g"),
                         "worst forward": fmt_num(worst.get("forward"), ".1e"),
                         "expected": f"{expected.get('check')} at {expected.get('block')}" if expected else "-",
                         "as expected": {True: "yes", False: "no"}.get(a.get("detected"), "-")})
        return pd.DataFrame(rows)

    def performance(self) -> Section:
        from bench import figures

        s = Section("Performance")
        record = self.ctx.latest("bench")
        train = self.ctx.latest("train")
        if record is None:
            s.p("No benchmark record: the benchmark was not run.")
        else:
            frame = bench_rows(record)
            cond = bench_conditions(record)
            if len(frame):
                frame = frame.sort_values(["mode", "framework", "reference", "setting"]).reset_index(drop=True)
                reps = sorted(set(frame["windows"]))
                spread = (f"bars: median; error bars: interquartile range over {'/'.join(map(str, reps))} timed "
                          f"windows; hatched: the framework's own ResNet-50")
                s.figure(self.save("throughput.png", figures.throughput_bars(frame, conditions=cond, spread=spread)),
                         "Throughput per framework and setting, ours beside the framework's own ResNet-50 "
                         "(torchvision / keras.applications).")
                s.table(self.bench_table(frame), "Every measured row (warm-up excluded; first step = tracing/compile)")
                # One list for both modes: say the mode in each bar's label, training first.
                by_mode = frame.assign(label=[f"{'training' if m == 'train' else 'inference'}: {lab}"
                                              for m, lab in zip(frame["mode"], frame["label"])],
                                       order=[0 if m == "train" else 1 for m in frame["mode"]])
                by_mode = by_mode.sort_values(["order", "framework", "reference"], kind="stable")
                if frame["peak_mb"].notna().any():
                    s.figure(self.save("memory.png", figures.memory_bars(by_mode.dropna(subset=["peak_mb"]),
                                                                         conditions=cond)),
                             "Peak memory per row, measured in a separate loop after resetting the peak counters.")
                if frame["mfu"].notna().any():
                    peaks = record.doc.get("machine_peaks", {})
                    peak_text = "measured peak: " + ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s (a large matmul)"
                                                              for d, v in sorted(peaks.items()))
                    s.figure(self.save("mfu.png", figures.mfu_bars(by_mode.dropna(subset=["mfu"]), peaks=peak_text,
                                                                   conditions=cond)),
                             "MFU: achieved FLOP/s (FLOPs per image from bench.spec) over the machine's measured peak.")
            failed = [r for r in record.doc.get("rows", []) if r.get("status") != "ok"]
            if failed:
                s.table(pd.DataFrame([{"row": r.get("id"), "status": r.get("status"), "error": r.get("error")}
                                      for r in failed]), "Rows that did not measure")
            ratios = record.doc.get("ratios", [])
            if ratios:
                s.table(pd.DataFrame([{"ratio": q.get("kind"), "framework": FRAMEWORK_LABELS.get(q["framework"], q["framework"]),
                                       "mode": q.get("mode"), "throughput": f"{q['throughput']:.3f}x",
                                       "per FLOP": fmt_num(q.get("per_flop"), ".3f") + ("x" if q.get("per_flop") else ""),
                                       "target": f">= {q.get('target')}"} for q in ratios]),
                        "Ours against the framework's own ResNet-50 (same batch, precision and run), and end-to-end "
                        "against compute-only")
            self.op_gap_tables(s, record)
            for note in record.doc.get("notes", []):
                s.p(f"Note: {note}")
        if train:
            s.p(f"Training-loop throughput (`twinbench train`, {train.doc.get('config', {}).get('input_size')} px) "
                f"is in the Training section; it includes the input pipeline.")
        return s

    def op_gap_tables(self, s: Section, record: Record) -> None:
        """Where an arm slower than another spends the difference: the ops of one profiled step
        each (bench.measure.op_gaps), by excess self time."""
        for q in record.doc.get("arm_ratios", []):
            gaps = q.get("op_gaps")
            if not gaps or q["ratio"] >= 1:
                continue
            arm, other = (FRAMEWORK_LABELS.get(f, f) for f in q["kind"].split("/"))
            total = gaps["total_ms"]
            rows = [{"op": o["name"],
                     f"{arm} ms (calls)": f"{o['ms'][0]:.1f} ({o['calls'][0] if o['listed'][0] else '-'})",
                     f"{other} ms (calls)": (f"{o['ms'][1]:.1f} ({o['calls'][1]})" if o["listed"][1]
                                             else "0 (not called)"),
                     "excess ms": f"{o['excess_ms']:.1f}",
                     "share of the gap": fmt_pct(o["excess_ms"] / (total[0] - total[1])) if total[0] > total[1] else "-"}
                    for o in gaps["ops"]]
            s.table(pd.DataFrame(rows),
                    f"Where {arm} is slower than {other} ({q['ratio']:.2f}x, {q['mode']}, b{q['batch']} "
                    f"{q['input_size']} px {q['precision']}): one profiled step each (torch.profiler, self "
                    f"{gaps['clock']} time; n=1, no spread), {total[0]:.0f} ms against {total[1]:.0f} ms; the ops "
                    f"where it spends the most more")

    def bench_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({
            "framework": [FRAMEWORK_LABELS.get(f, f) for f in frame["framework"]], "model": frame["model"],
            "mode": frame["mode"], "setting": frame["setting"],
            "img/s (median)": [fmt_num(v, ".2f") for v in frame["median"]],
            "IQR": [f"{fmt_num(a, '.2f')}-{fmt_num(b, '.2f')}" for a, b in zip(frame["q1"], frame["q3"])],
            "windows": frame["windows"], "first step s": [fmt_num(v, ".2f") for v in frame["first_step_s"]],
            "MFU": [fmt_pct(v) if v == v and v is not None else "-" for v in frame["mfu"]],
            "peak MB": [fmt_num(v, ",.0f") for v in frame["peak_mb"]],
        })

    def residuals(self) -> Section:
        from bench import figures, figures_diagrams
        from bench.spec import build_spec

        s = Section("Residual structure")
        ctx = self.ctx
        train = ctx.latest("train")
        size = int(train.doc.get("config", {}).get("input_size", 224)) if train else 224
        spec = build_spec(ctx.model, 1000)
        s.p(f"The block table of `{ctx.model}` from `bench.spec` at the seed's 224 px and 1000 classes "
            f"(FLOPs = 2 x multiply-accumulates of convs and the dense layer).")
        s.table(block_table(spec), "Per block: kind, filters, stride, output shape, parameters, forward FLOPs")
        if size != 224:
            small = build_spec(ctx.model, 1000, size, "global")
            s.p(f"At the training size here ({size} px): {small.forward_flops() / 1e9:.2f} GFLOPs forward per image "
                f"({small.forward_flops() / spec.forward_flops():.3f} of 224 px).")
        s.figure(self.save("blocks.png", figures_diagrams.block_diagrams(spec)),
                 "The block kinds, drawn from bench.spec: main path F(x) on the left, shortcut on the right.")
        record = ctx.latest("residuals")
        if record is None:
            s.p("No residual measurements in this run.")
            return s
        table = residual_frame(record)
        images = record.doc.get("images", {})
        cond = (f"{record.doc.get('model')} at {images.get('input_size', '?')} px, {images.get('count', '?')} validation "
                f"images; inference mode; {machine_text(ctx.latest('train') or record)}")
        s.figure(self.save("residual_ratios.png", figures.residual_ratios(table, conditions=cond)),
                 "||F(x)|| / ||shortcut(x)|| per residual unit on validation images, both frameworks, from the "
                 "shared starting weights (before) and each framework's trained weights (after).")
        wide = table.pivot_table(index="unit", columns=["stage", "framework"], values="median", sort=False)
        wide.columns = [f"{stage} {FRAMEWORK_LABELS.get(fw, fw)}" for stage, fw in wide.columns]
        wide = wide.reset_index()
        for col in wide.columns[1:]:
            wide[col] = [fmt_num(v, ".3f") for v in wide[col]]
        s.table(wide, "Median ratio over the images per residual unit")
        before = table[table["stage"] == "before"]
        if len(before) and set(before["framework"]) == set(FW):
            tf = before[before["framework"] == "tf"].set_index("unit")["median"]
            torch = before[before["framework"] == "torch"].set_index("unit")["median"]
            gap = float((tf - torch).abs().max() / tf.abs().max())
            s.p(f"Before training both frameworks hold the same weights: their ratios agree to {gap:.1e} "
                f"(relative), a per-block parity check on its own.")
        typical = table.groupby(["stage", "framework"])["median"].median()
        if "after" in typical and "before" in typical:
            s.p("Median over the units: " + "; ".join(
                f"{FRAMEWORK_LABELS.get(fw, fw)} {typical['before'].get(fw, float('nan')):.2f} before training, "
                f"{typical['after'].get(fw, float('nan')):.2f} after" for fw in FW if fw in typical["after"])
                + ". Below 1 the shortcut carries most of the signal and the block adds a correction to it.")
        return s

    def models(self) -> Section | None:
        from bench import figures, figures_diagrams
        from bench.spec import build_spec

        models = self.ctx.models
        if len(models) < 2:
            return None
        s = Section("Models side by side")
        rows = []
        tables = {}
        for model in models:
            spec = build_spec(model, 1000)
            tables[model] = pd.DataFrame(spec.block_table())
            row: dict[str, Any] = {"model": model, "parameters": f"{spec.param_counts()['total']:,}",
                                   "GFLOPs (224 px)": f"{spec.forward_flops() / 1e9:.2f}"}
            ms = {(m.name, m.labels): m for m in metrics(self.ctx.of("train", model) + self.ctx.of("bench", model))}
            for fw in FW:
                lab = FRAMEWORK_LABELS[fw]
                acc = ms.get(("accuracy.val", (("framework", fw),)))
                fit = ms.get(("throughput.fit", (("framework", fw),)))
                mem = ms.get(("memory.peak", (("framework", fw), ("during", "training"))))
                row[f"val acc {lab}"] = fmt_pct(acc.value) if acc else "-"
                row[f"fit img/s {lab}"] = fmt_num(fit.value, ".1f") if fit else "-"
                row[f"train peak {lab}"] = fmt_num(mem.value, ",.0f") + " MB" if mem else "-"
                for mode in ("train", "infer"):
                    best = [m for (name, labels), m in ms.items() if name == f"throughput.{mode}"
                            and dict(labels).get("framework") == fw and dict(labels).get("setting", "").startswith("ours")]
                    row[f"bench {mode} img/s {lab}"] = fmt_num(max(m.value for m in best), ".1f") if best else "-"
            trains = self.ctx.of("train", model)
            row["training"] = (f"{trains[-1].doc['config'].get('input_size')} px, {trains[-1].doc['config'].get('epochs')} "
                               f"epochs") if trains else "-"
            rows.append(row)
        s.table(pd.DataFrame(rows).set_index("model").T.reset_index().rename(columns={"index": "measure"}),
                "Parameters and FLOPs from bench.spec; accuracy, throughput and memory from each model's records "
                "(same manifest and settings where the records say so)")
        s.figure(self.save("models.png", figures.model_blocks(tables)),
                 "Parameters and forward FLOPs per block, each model (224 px).")
        for model in models:
            if model != self.ctx.model:
                s.figure(self.save(f"blocks_{model}.png", figures_diagrams.block_diagrams(build_spec(model, 1000))),
                         f"The block kinds of {model}, drawn from bench.spec.")
        return s


class Builder(SummarySections, TrainingSections, MeasurementSections):
    """Builds the sections and writes the figures for one report."""
