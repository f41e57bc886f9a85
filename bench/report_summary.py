"""The report's Summary section: the verdicts table, the conditions and the steps of a
``twinbench run`` session."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from bench.report_doc import Section, fmt_bytes, fmt_num, fmt_pct, short_commit
from bench.frameworks import ARMS, FRAMEWORK_LABELS, FRAMEWORKS as FW
from bench.quartiles import quartiles
from bench.report_records import (SectionBuilder, TrainSet, bench_rows, machine_text, profile_of,
                                  train_set, versions_text)
from bench.runset import Record, parity_result, parity_rows


def _worst_parity(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell closest to (or furthest past) its limit."""
    scored = [r for r in rows if isinstance(r["value"], (int, float)) and r.get("limit")]
    if not scored:
        return None
    return max(scored, key=lambda r: r["value"] / r["limit"])


def _pooled_epochs(records: Sequence[Record], fw: str, key: str) -> list[float]:
    """``key`` of epochs 2..N (the first includes tracing) of every run of ``fw``."""
    out = []
    for r in records:
        hist = (r.doc.get("frameworks", {}).get(fw) or {}).get("history") or []
        out += [e.get(key) for e in (hist[1:] or hist) if isinstance(e.get(key), (int, float))]
    return out


def _sharing(records: Sequence[Any], threads: Any) -> str:
    """How the training workers shared the machine: their threads, and how many ran at a time
    (``--parallel``: its workers' timings are taken beside each other, not on a quiet machine)."""
    parallel = max((int(((r.doc["frameworks"].get(fw) or {}).get("executor") or {}).get("parallel") or 1)
                    for r in records for fw in r.doc.get("frameworks") or {}), default=1)
    if parallel == 1:
        return ""  # one worker at a time, all its threads: the usual conditions
    each = f"{threads} thread{'s' if threads != 1 else ''} each, " if threads else ""
    return f", {parallel} training workers at a time ({each}--parallel)"


def _median_iqr(values: Sequence[float], fmt: str, unit: str) -> str:
    if not values:
        return "-"
    q1, median, q3 = quartiles(values)
    return f"{median:{fmt}} {unit} (IQR {q1:{fmt}}-{q3:{fmt}}, n={len(values)} epochs)"


def ratio_note(target: Any, settings: dict[str, Any]) -> str:
    """The target of an ours/reference ratio, and the size it is judged at: below ~128 px
    per-operation overhead, not the network, sets the ratio (issue 6 measures it at 224 px)."""
    size = settings.get("input_size")
    where = f"this run {size} px" if size else "same run"
    judged = "" if not size or size >= 197 else "; judged at 224 px, where per-op overhead does not dominate"
    return f"target >= {target}{judged}; {where}, same batch and precision"


MEMORY_MEASURES = {"cpu_peak_rss": "peak RSS of each worker process", "gpu_allocator_peak": "allocator peak on the GPU"}


def _memory_label(fws: dict[str, Any]) -> str:
    """What the memory figures are, in a few words (the record's ``label`` has the long form)."""
    measures = {(r.get("memory") or {}).get("measure") for r in fws.values()}
    measures.discard(None)
    return "; ".join(MEMORY_MEASURES.get(m, m) for m in sorted(measures))


class SummarySections(SectionBuilder):
    """The Summary section."""

    def summary(self) -> Section:
        s = Section("Summary")
        ctx = self.ctx
        train, bench, parity = ctx.latest("train"), ctx.latest("bench"), ctx.latest("parity")
        datacheck, session = ctx.latest("datacheck"), ctx.latest("session")
        rows: list[dict[str, str]] = []
        tset = train_set(ctx)
        # A column for each further arm (keras-torch), only where it ran.
        self.extra = [fw for fw in ARMS if fw not in FW and (
            any(fw in (r.doc.get("frameworks") or {}) for r in (tset.records if train and tset else []))
            or (bench is not None and any(r.get("framework") == fw for r in bench.doc.get("rows", []))))]

        def add(measure: str, tf: str, torch: str, note: str = "", arms: dict[str, str] | None = None) -> None:
            rows.append({"measure": measure, "TensorFlow": tf, "PyTorch": torch,
                         **{FRAMEWORK_LABELS[fw]: (arms or {}).get(fw, "-") for fw in self.extra}, "note": note})

        if parity:
            result = parity_result(parity.doc)
            worst = _worst_parity(parity_rows(result))
            verdict = str(result.get("verdict", "?")).upper()
            first = result.get("first_failure")
            where = (f"first failure: {first['check']} at {first['block']}" if first else
                     f"closest: {worst['check']} at {worst['block']} {worst['value']:.1e} (limit {worst['limit']:.1e}"
                     + (f", {worst['ratio']:.2g} x its own error" if worst.get("ratio") is not None else "") + ")"
                     if worst else "")
            cfg = result.get("config", {})
            add(f"parity ({len(result.get('columns', []))} checks x {len(result.get('rows', []))} points, "
                f"{cfg.get('dtype', '?')})", "reference", verdict, where)
        else:
            add("parity", "-", "-", "not measured")
        if datacheck:
            for decoder, splits in (datacheck.doc.get("decoders") or {}).items():
                worst = max((v.get("max_abs", 0.0) for v in splits.values()), default=float("nan"))
                judged = decoder == "accurate"
                ok = all(v.get("images_over_tolerance", 0) == 0 and v.get("label_mismatches", 0) == 0
                         for v in splits.values())
                add(f"input pipelines, {decoder} decoder", "reference",
                    ("PASS" if ok else "FAIL") if judged else "reported",
                    f"max |TF - torch| {worst:.3g} of 255 per image" + (f" (tolerance {datacheck.doc.get('tolerance')})"
                                                                        if judged else " (TF's fast IDCT; not judged)"))
        if train and tset:
            self._summary_training(tset, add)
        else:
            add("training", "-", "-", "not run")
        if bench:
            self._summary_bench(bench, add)
        else:
            add("benchmark", "-", "-", "not run")
        s.table(pd.DataFrame(rows), "Verdicts. Throughput is images per second (higher is better); spread in "
                                    "brackets where repeats exist.")
        s.table(self.conditions(train, bench, parity, session, tset), "Conditions")
        if session:
            s.table(self.steps(session), "What `twinbench run` did, step by step")
        return s

    def _summary_bench(self, bench: Record, add) -> None:
        """The benchmark rows of the verdicts: best throughput of ours, ours / reference, best MFU."""
        frame = bench_rows(bench)
        for mode, what in (("train", "training"), ("infer", "inference")):
            sub = frame[(frame["mode"] == mode) & (~frame["reference"])] if len(frame) else frame
            if not len(sub):
                continue
            arms = [*FW, *self.extra]
            best = {fw: sub[sub["framework"] == fw].sort_values("median").tail(1) for fw in arms}
            cells = {}
            for fw in arms:
                b = best[fw]
                cells[fw] = ("-" if not len(b) else
                             f"{b['median'].iloc[0]:.1f} img/s (IQR {b['q1'].iloc[0]:.1f}-{b['q3'].iloc[0]:.1f})")
            settings = {fw: best[fw]["setting"].iloc[0] for fw in arms if len(best[fw])}
            note = (next(iter(settings.values())) if len(set(settings.values())) == 1 else
                    "; ".join(f"{FRAMEWORK_LABELS[fw]}: {v}" for fw, v in settings.items()))
            add(f"{what} throughput, bench (best setting of ours)", *(cells[fw] for fw in FW), note,
                arms={fw: cells[fw] for fw in self.extra})
        for q in bench.doc.get("arm_ratios", []):
            arm, other = q["kind"].split("/")
            add(f"{FRAMEWORK_LABELS[arm]} / {FRAMEWORK_LABELS[other]}, {q['mode']} throughput (ours)",
                *("reference" if fw == other else "-" for fw in FW),
                f"median ratio; band Q1/Q3..Q3/Q1 of the timed windows; b{q['batch']} {q['input_size']} px "
                f"{q['precision']}{gap_note(q)}", arms={arm: f"{q['ratio']:.2f}x [{q['low']:.2f}-{q['high']:.2f}]"})
        for mode, what in (("train", "training"), ("infer", "inference")):
            found = {q["framework"]: q for q in bench.doc.get("ratios", [])
                     if q.get("kind") == "ours/reference" and q.get("mode") == mode}
            if found:
                target = next(iter(found.values())).get("target")
                add(f"ours / the framework's own ResNet-50, {what}",
                    *(f"{found[fw]['throughput']:.2f}x (per FLOP {found[fw].get('per_flop', float('nan')):.2f}x)"
                      if fw in found else "-" for fw in FW), ratio_note(target, bench.doc.get("settings", {})))
        if len(frame) and frame["mfu"].notna().any():
            cells = []
            for fw in FW:
                sub = frame[(frame["framework"] == fw) & (~frame["reference"])]
                cells.append(fmt_pct(sub["mfu"].max()) if len(sub) and sub["mfu"].notna().any() else "-")
            peaks = bench.doc.get("machine_peaks", {})
            add("best MFU (ours)", *cells, "of the measured matmul peak: " + ", ".join(
                f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in sorted(peaks.items())))

    def _summary_training(self, tset: TrainSet, add) -> None:
        from bench.stats import fmt_ci, fmt_spread

        train = tset.records[-1]
        fws = train.doc.get("frameworks", {})
        c = train.doc.get("config", {})
        per = tset.stats["per_framework"]

        def per_fw(fn) -> tuple[str, str]:
            return tuple(fn(fw) if fw in fws else "-" for fw in FW)  # type: ignore[return-value]

        def arms(fn) -> dict[str, str]:
            return {fw: fn(fw) for fw in self.extra if fw in fws}

        n_classes = len(train.doc.get("manifest", {}).get("classes") or []) or None
        done = max((len(r.get("history") or []) for r in fws.values()), default=0)
        of = f" of {c.get('epochs')}" if c.get("epochs") and done < c["epochs"] else ""
        comparison = tset.stats.get("comparison") or ""
        accuracy = lambda fw: fmt_spread(per.get(fw, {}).get("val_accuracy"))  # noqa: E731
        best = lambda fw: fmt_spread(per.get(fw, {}).get("best_val_accuracy"))  # noqa: E731
        add(f"final validation accuracy (epoch {done}{of}), mean ± std over seeds", *per_fw(accuracy),
            "; ".join(x for x in (f"chance {1 / n_classes:.0%}" if n_classes else "", comparison) if x),
            arms=arms(accuracy))
        add("best validation accuracy, mean ± std over seeds", *per_fw(best), arms=arms(best))
        for ref, other in (("tf", "torch"), *((a, b) for b in self.extra for a in (*FW,))):
            pair = tset.stats["pairs"].get(f"{ref}-{other}")
            if not pair:
                continue
            m = pair["val_accuracy"]
            diff = m["diff"]
            mean = f"{diff['mean']:+.1f} points" if diff.get("mean") is not None else "-"
            cells = {ref: "reference", other: pair["verdict"]["word"].upper()}
            add(f"{'TF' if ref == 'tf' else FRAMEWORK_LABELS[ref]} - {FRAMEWORK_LABELS[other]}, final validation "
                f"accuracy (n={m['n']} paired seeds)", *(cells.get(fw, "-") for fw in FW),
                f"difference {mean}, 95% CI {fmt_ci(m)}; margin ±{tset.margin:g} points; {pair['verdict']['why']}",
                arms={fw: cells[fw] for fw in self.extra if fw in cells})
        if tset.chaos and tset.chaos.get("status") == "complete":
            add(f"chaos control ({tset.chaos['steps']} steps, manifest order)", "reference",
                f"{tset.chaos['factor']:.3g}x", tset.chaos.get("summary", ""))
        speed = lambda fw: _median_iqr(_pooled_epochs(tset.records, fw, "train_throughput"), ".1f", "img/s")  # noqa: E731
        add("training throughput in fit (median of epochs 2..N over all runs)", *per_fw(speed),
            f"{c.get('input_size')} px, batch {c.get('batch_size')}, {c.get('precision')}"
            + _sharing(tset.records, c.get("threads")), arms=arms(speed))
        memory = lambda fw: (fmt_bytes(max(((r.doc["frameworks"].get(fw) or {}).get("memory") or {})  # noqa: E731
                                           .get("peak_bytes") or 0 for r in tset.records) or None)
                             + f" (n={len(tset.records)})")
        add("peak memory during training (largest of the runs)", *per_fw(memory), _memory_label(fws),
            arms=arms(memory))
        states = {fw: r.get("status") for fw, r in fws.items()}
        if any(v != "complete" for v in states.values()):
            status = lambda fw: f"{fws[fw].get('status')}: {fws[fw].get('message') or ''}".strip(": ")  # noqa: E731
            add("training status (latest run)", *per_fw(status), arms=arms(status))

    def conditions(self, train: Record | None, bench: Record | None, parity: Record | None,
                   session: Record | None, tset: TrainSet | None = None) -> pd.DataFrame:
        any_record = train or bench or parity or session
        rows = []

        def add(key: str, value: Any) -> None:
            if value not in (None, "", {}):
                rows.append({"condition": key, "value": str(value)})

        if session:
            add("run", f"{session.doc.get('run_id')} ({session.doc.get('status')}), started {session.doc.get('created')}")
            add("command", " ".join(session.doc.get("command", [])))
        add("device", machine_text(any_record))
        add("versions", versions_text(train or bench or any_record))
        add("commit", short_commit(any_record.commit) if any_record else None)
        if train:
            c = train.doc.get("config", {})
            add("training", f"profile {profile_of(train)}: {c.get('model')} {c.get('input_size')} px, "
                            f"{c.get('pooling')} pooling, {c.get('classes')} classes, batch {c.get('batch_size')}, "
                            f"{c.get('epochs')} epochs, {c.get('optimizer')} lr {c.get('learning_rate')}, "
                            f"{c.get('precision')}, order {c.get('order')}, decoder {c.get('decoder')}, "
                            f"preprocessing {c.get('preprocessing')}, init {c.get('init')}, {_seeds_text(tset, c)}")
            add("threads", f"{c.get('threads')} intra-op on both sides" if c.get("threads") else None)
            m = train.doc.get("manifest", {})
            add("data", f"{m.get('train')} training / {m.get('validation')} validation images, classes "
                        f"{', '.join(m.get('classes') or [])}; manifest fingerprint {str(m.get('fingerprint'))[:16]}")
        if parity:
            cfg = parity_result(parity.doc).get("config", {})
            add("parity", f"{cfg.get('model')} {cfg.get('dtype')}, batch {cfg.get('batch')} at {cfg.get('input_size')} px "
                          f"({cfg.get('pooling')} pooling), checks {', '.join(cfg.get('checks') or [])}; weights "
                          f"{cfg.get('weights') or 'random, calibrated'}; images "
                          f"{'from the manifest' if cfg.get('manifest') else 'random'}")
        if bench:
            st = bench.doc.get("settings", {})
            add("benchmark", f"{st.get('input_size')} px, batches {st.get('batches')}, precisions {st.get('precisions')}, "
                             f"layouts {st.get('layouts')}, compile {st.get('compiles')}, "
                             f"{st.get('repeats')} windows x {st.get('steps')} steps after {st.get('warmup')} warm-up")
        return pd.DataFrame(rows, columns=["condition", "value"])

    def steps(self, session: Record) -> pd.DataFrame:
        rows = [{"step": st.get("name"), "status": st.get("status"), "seconds": fmt_num(st.get("seconds"), ".0f"),
                 "output": st.get("output") or "", "message": st.get("message") or ""}
                for st in session.doc.get("steps", [])]
        return pd.DataFrame(rows, columns=["step", "status", "seconds", "output", "message"])


def _seeds_text(tset: TrainSet | None, config: dict[str, Any]) -> str:
    """The seed of one run, or the seeds of a repeated set (the latest record alone names its own)."""
    seeds = [r.doc.get("config", {}).get("seed") for r in (tset.records if tset else [])]
    if len(seeds) > 1:
        return f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} repeats, run i at seed + i)"
    return f"seed {config.get('seed')}"


def gap_note(q: dict[str, Any]) -> str:
    """Where a slower arm's step loses most (bench.measure.op_gaps; the Performance section has the table)."""
    gaps = q.get("op_gaps")
    if not gaps or q["ratio"] >= 1 or not gaps["ops"]:
        return ""
    top = gaps["ops"][:2]
    return ("; slower mostly in " + ", ".join(f"{o['name']} (+{o['excess_ms']:.0f} ms a step)" for o in top)
            + " (one profiled step each, Performance)")
