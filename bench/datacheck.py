"""``twinbench data``: the demo dataset, the pipeline parity check, the pipeline speed check.

    twinbench data demo [DIR] [--seed 0] [--force]
    twinbench data check MANIFEST [--decoder accurate|seed|both] [--image-size 224] [--json OUT]
    twinbench data speed MANIFEST [--framework tf|torch|both] [--steps 8] [--rounds 2] [--json OUT]

``check`` compares the TF and the torch tensor of every image of the manifest; ``speed`` times
training fed by the real pipeline against batches in memory. How: docs/records.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import envelope
from bench.errors import CheckFailed, UserError
from bench.dataset import DECODERS, PREPROCESSINGS, SPLITS, Manifest, PipelineOptions, load_manifest
from bench.orders import ORDERS
from bench.options import add_model_options, add_worker_options, model_args, positive_int, worker_config
from bench.executor import Job, run_job
from bench.runner import WorkerConfig
from bench.runset import DATACHECK_FORMAT, DATACHECK_VERSION

# Max |TF - torch| per image, 0..255 scale, with the accurate decoder: bilinear resizing differs
# by up to ~0.003 between tf.image.resize and F.interpolate (measured); decoding not at all.
ACCURATE_TOLERANCE = 0.01
# The input pipeline is not the bottleneck when real-data training throughput is at least this
# fraction of the throughput on batches already in memory.
SPEED_TARGET = 0.95
SPEED_FORMAT = "twinbench.data-speed"  # not read by reports: the speed check prints its verdict
SPEED_VERSION = 1


def run_data_check(manifest: Manifest, options: PipelineOptions, decoders: tuple[str, ...] = ("accurate",),
                   *, config: WorkerConfig | None = None) -> dict[str, Any]:
    """Both pipelines over the whole manifest; the report as a JSON-able dict (see module docstring)."""
    config = config or WorkerConfig()
    with tempfile.TemporaryDirectory(prefix="twinbench-datacheck-") as tmp:
        common = {"manifest": manifest_file(manifest, Path(tmp)), "data_root": str(manifest.root), "quiet": config.quiet}
        tf_out = run_job(config, Job("tf", "data_check", {**common, "pipeline": options.to_dict(),
                                                          "decoders": list(decoders)},
                                     job_dir=Path(tmp) / "tf", manifest="manifest"))
        torch_out = run_job(config, Job("torch", "data_check",
                                        {**common, "pipeline": options.replace(decoder="accurate").to_dict(),
                                         "reference": tf_out.result["images"]},
                                        job_dir=Path(tmp) / "torch", manifest="manifest",
                                        inputs=tuple(f"reference.{d}.{split}" for d, paths in
                                                     tf_out.result["images"].items() for split in paths)))
    return summarize(manifest, options, decoders, tf_out.arrays, torch_out.arrays)


def manifest_file(manifest: Manifest, tmp: Path) -> str:
    """A path the workers can read the manifest from (written to ``tmp`` if it came from memory)."""
    if manifest.source is not None:
        return str(manifest.source)
    path = tmp / "manifest.json"
    manifest.save(path)
    return str(path)


def summarize(manifest: Manifest, options: PipelineOptions, decoders: tuple[str, ...],
              tf_arrays: dict[str, np.ndarray], torch_arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The report from the workers' arrays: TF labels ``labels_<decoder>_<split>``; torch
    ``max|mean|frac_<decoder>_<split>`` (per image) and ``labels_<split>``."""
    report: dict[str, Any] = {
        "manifest": manifest.info(),
        "pipeline": options.to_dict(),
        "tolerance": ACCURATE_TOLERANCE,
        "decoders": {},
    }
    ok = True
    for decoder in decoders:
        splits = {}
        for split in SPLITS:
            entries = manifest.entries(split)
            expected = manifest.labels(split)
            max_abs = torch_arrays[f"max_{decoder}_{split}"]
            mean_abs = torch_arrays[f"mean_{decoder}_{split}"]
            frac = torch_arrays[f"frac_{decoder}_{split}"]
            tf_labels = tf_arrays[f"labels_{decoder}_{split}"]
            torch_labels = torch_arrays[f"labels_{split}"]
            label_mismatches = int(np.sum((tf_labels != expected) | (torch_labels != expected)))
            worst = int(np.argmax(max_abs))
            over = [entries[i].path for i in np.flatnonzero(max_abs > ACCURATE_TOLERANCE)]
            splits[split] = {
                "images": len(entries),
                "max_abs": float(max_abs.max()),
                "mean_abs": float(mean_abs.mean()),
                "median_image_max_abs": float(np.median(max_abs)),
                "images_differing": int(np.sum(max_abs > 0)),
                "values_differing": float(frac.mean()),
                "images_over_tolerance": len(over),
                "over_tolerance": over[:20],
                "worst_image": {"path": entries[worst].path, "max_abs": float(max_abs[worst])},
                "label_mismatches": label_mismatches,
                "per_image_max_abs": {e.path: round(float(v), 6) for e, v in zip(entries, max_abs)},
            }
            ok &= label_mismatches == 0 and (decoder != "accurate" or not over)
        report["decoders"][decoder] = splits
    report["ok"] = ok
    return report


def format_report(report: dict[str, Any]) -> str:
    p = report["pipeline"]
    lines = [f"data check: {report['manifest']['path']} (fingerprint {report['manifest']['fingerprint'][:12]}), "
             f"{p['image_size']} px, preprocessing {p['preprocessing']}; max |TF - torch| per image, 0..255 scale",
             f"{'decoder':<9} {'split':<11} {'images':>6} {'max':>9} {'mean':>9} {'differ':>7} "
             f"{'>tol':>5} {'labels':>7}  worst image"]
    for decoder, splits in report["decoders"].items():
        for split, s in splits.items():
            labels = "ok" if s["label_mismatches"] == 0 else f"{s['label_mismatches']} bad"
            lines.append(f"{decoder:<9} {split:<11} {s['images']:>6} {s['max_abs']:>9.4g} {s['mean_abs']:>9.3g} "
                         f"{s['images_differing']:>7} {s['images_over_tolerance']:>5} {labels:>7}  "
                         f"{s['worst_image']['path']} ({s['worst_image']['max_abs']:.4g})")
    lines.append(f"tolerance {report['tolerance']} per image for the accurate decoder; the seed decoder "
                 f"(TF's fast IDCT) is reported, not judged")
    return "\n".join(lines)


# ---- the manifest options ------------------------------------------------------------------------
def add_manifest_options(parser: argparse.ArgumentParser) -> None:
    """MANIFEST, --data-root and --verify, for the subcommands that read one."""
    parser.add_argument("manifest", metavar="MANIFEST", help="a manifest written by 'twinbench manifest'")
    parser.add_argument("--data-root", metavar="DIR", help="where the images are now, if they moved")
    # "none" is for workers whose parent verified: a command always checks at least the sizes.
    parser.add_argument("--verify", choices=("hash", "size"), default="hash",
                        help="check the files against the manifest first: sha256 (default) or sizes only")


def manifest_from_args(args: argparse.Namespace) -> Manifest:
    return load_manifest(args.manifest, data_root=args.data_root, verify=args.verify,
                         quiet=getattr(args, "quiet", True))


# ---- the command -----------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("data", help="the demo dataset; the TF vs torch input-pipeline check")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{demo,check,speed}")

    d = dsub.add_parser("demo", help="write the deterministic demo dataset (4 classes, 565 JPEGs, 224 px)")
    d.add_argument("dir", metavar="DIR", nargs="?", help="where to write it (default: data/demo in the repository)")
    d.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    d.add_argument("--force", action="store_true", help="replace a demo written with other settings")
    d.set_defaults(func=cmd_demo)

    c = dsub.add_parser("check", help="run both input pipelines over a manifest and compare every image")
    add_manifest_options(c)
    c.add_argument("--decoder", choices=(*DECODERS, "both"), default="both",
                   help="accurate (must match within 0.01), seed (TF's fast IDCT: gap reported), or both (default)")
    c.add_argument("--image-size", type=positive_int, default=224, help="resize to N x N (default 224)")
    c.add_argument("--preprocessing", choices=PREPROCESSINGS, default="none", help="none (default) or caffe")
    c.add_argument("--batch-size", type=positive_int, default=32, help="decode batch (default 32)")
    c.add_argument("--workers", type=int, default=None, help="torch DataLoader workers (default min(4, cores))")
    c.add_argument("--json", metavar="OUT", help="also write the report (with per-image differences) as JSON")
    add_worker_options(c)
    c.set_defaults(func=cmd_check)

    sp = dsub.add_parser("speed", help="training throughput fed by the real pipeline vs batches in memory",
                         description="Alternating blocks of synced training steps: fed by each framework's "
                                     "pipeline (native order, decoding as it goes) and by the same kind of "
                                     "batches already in memory. The pipeline is not the bottleneck when "
                                     f"the ratio is at least {SPEED_TARGET}.")
    add_manifest_options(sp)
    sp.add_argument("--framework", choices=("tf", "torch", "both"), default="both")
    sp.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default 8, the seed's)")
    sp.add_argument("--steps", type=positive_int, default=8, help="training steps per timed block (default 8)")
    sp.add_argument("--rounds", type=positive_int, default=2, help="real/memory block pairs (default 2)")
    sp.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    sp.add_argument("--workers", type=int, default=None, help="torch DataLoader workers (default min(4, cores))")
    sp.add_argument("--order", choices=ORDERS, default="native",
                    help="native (default; TF caches decoded batches after the first epoch, as the seed) or "
                         "manifest / fixed-batches (both decode every epoch)")
    sp.add_argument("--decoder", choices=DECODERS, default="accurate", help="JPEG decoder (default accurate)")
    sp.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    add_model_options(sp)
    add_worker_options(sp)
    sp.set_defaults(func=cmd_speed)


def cmd_demo(args: argparse.Namespace) -> int:
    from bench import demo

    directory = Path(args.dir) if args.dir else demo.default_demo_dir()
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, received {args.seed}")
    existed = demo.is_complete(directory, args.seed)
    demo.write_demo(directory, args.seed, force=args.force)
    total = sum(demo.CLASS_COUNTS.values())
    state = "already there" if existed else "wrote"
    print(f"{state}: {directory}: {total} JPEG images at {demo.IMAGE_SIZE} px in {len(demo.CLASS_COUNTS)} classes "
          f"({', '.join(f'{k} {v}' for k, v in demo.CLASS_COUNTS.items())}); seed {args.seed}")
    print(f"next: twinbench manifest {directory} -o {directory.parent / 'demo-manifest.json'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    manifest = manifest_from_args(args)
    options = PipelineOptions(image_size=args.image_size, batch_size=args.batch_size,
                              preprocessing=args.preprocessing, workers=args.workers)
    decoders = DECODERS if args.decoder == "both" else (args.decoder,)
    report = run_data_check(manifest, options, decoders, config=worker_config(args))
    print(format_report(report))
    if args.json:
        envelope.write(args.json, envelope.record(DATACHECK_FORMAT, DATACHECK_VERSION, report))
        print(f"wrote {args.json}")
    if not report["ok"]:
        bad = [f"{d}/{s}" for d, splits in report["decoders"].items() for s, v in splits.items()
               if v["label_mismatches"] or (d == "accurate" and v["images_over_tolerance"])]
        raise CheckFailed(f"the TF and torch pipelines disagree ({', '.join(bad)}): see the table above")
    return 0


def run_pipeline_speed(manifest: Manifest, options: PipelineOptions, model: dict[str, Any], *,
                       frameworks: tuple[str, ...] = ("tf", "torch"), steps: int = 8, rounds: int = 2,
                       warmup: int = 2, config: WorkerConfig | None = None) -> dict[str, Any]:
    """Real-pipeline vs in-memory training throughput per framework (medians over the rounds)."""
    config = config or WorkerConfig()
    report: dict[str, Any] = {"manifest": manifest.info(), "pipeline": options.to_dict(), "model": model,
                              "target": SPEED_TARGET, "frameworks": {}}
    for fw in frameworks:
        with tempfile.TemporaryDirectory(prefix="twinbench-speed-") as tmp:
            job = {**model, "manifest": manifest_file(manifest, Path(tmp)), "data_root": str(manifest.root),
                   "pipeline": options.to_dict(), "steps": steps, "rounds": rounds, "warmup": warmup,
                   "quiet": config.quiet}
            out = run_job(config, Job(fw, "pipeline_speed", job, job_dir=Path(tmp) / fw, manifest="manifest",
                                      group="pipeline-speed")).result
        real = float(np.median([r["images_per_s"] for r in out["runs"]["real"]]))
        memory = float(np.median([r["images_per_s"] for r in out["runs"]["memory"]]))
        wait = float(np.median([r["wait_fraction"] for r in out["runs"]["real"]]))
        report["frameworks"][fw] = {**out, "real_images_per_s": real, "memory_images_per_s": memory,
                                    "ratio": real / memory, "real_wait_fraction": wait}
    return report


def format_speed(report: dict[str, Any]) -> str:
    p = report["pipeline"]
    lines = [f"pipeline speed: training steps at {p['image_size']} px, batch {p['batch_size']}, order {p['order']}, "
             f"decoder {p['decoder']}; medians of alternating timed blocks",
             f"{'framework':<10} {'real img/s':>11} {'memory img/s':>13} {'ratio':>7} {'waiting':>8}"]
    for fw, r in report["frameworks"].items():
        lines.append(f"{fw:<10} {r['real_images_per_s']:>11.2f} {r['memory_images_per_s']:>13.2f} "
                     f"{r['ratio']:>7.3f} {100 * r['real_wait_fraction']:>7.1f}%")
    lines.append(f"target: ratio >= {report['target']} (the input pipeline is not the bottleneck); 'waiting' is "
                 f"the share of real-data time spent waiting for the next batch")
    return "\n".join(lines)


def cmd_speed(args: argparse.Namespace) -> int:
    manifest = manifest_from_args(args)
    model = model_args(args)
    options = PipelineOptions(image_size=args.input_size, batch_size=args.batch_size, workers=args.workers,
                              order=args.order, decoder=args.decoder)
    frameworks = ("tf", "torch") if args.framework == "both" else (args.framework,)
    report = run_pipeline_speed(manifest, options, model, frameworks=frameworks, steps=args.steps,
                                rounds=args.rounds, warmup=args.warmup, config=worker_config(args))
    print(format_speed(report))
    if args.json:
        envelope.write(args.json, envelope.record(SPEED_FORMAT, SPEED_VERSION, report))
        print(f"wrote {args.json}")
    return 0
