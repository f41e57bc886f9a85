"""Residual structure, framework-free: the per-unit summary both workers return, and the call
that measures both frameworks on the same validation images.

The measure is ``||F(x)|| / ||shortcut(x)||`` per residual unit and per validation image, the
norms taken over the whole (H, W, C) activation before the add. The workers'
``residual_ratios`` tasks (``tf_impl.residuals``, ``torch_impl.residuals``) compute the norms of
one batch; :func:`validation_images`, :func:`unit_summaries` and :func:`summarise` are the rest of
the task, the same on both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.quartiles import quartiles
from bench.frameworks import FRAMEWORKS
from bench.executor import Job, run_job
from bench.runner import WorkerConfig


BATCH = 16  # images per forward pass: bounds the activation memory at 224 px

# One batch (NHWC, as the model is fed) -> residual unit name -> (block id, ||F(x)|| per image,
# ||shortcut(x)|| per image), in model order.
UnitNorms = Callable[[np.ndarray], dict[str, tuple[str, np.ndarray, np.ndarray]]]


def validation_images(args: dict[str, Any], inputs: dict[str, np.ndarray], load_images: Callable) -> np.ndarray:
    """``inputs['x']`` (NHWC), or the manifest's validation images ``args['indices']`` decoded by
    the calling side's own pipeline: ``load_images`` is ``tf_impl.data.load_images`` or
    ``torch_impl.data.load_images`` (``args['pipeline']``: bench.dataset.PipelineOptions fields)."""
    if "x" in inputs:
        return inputs["x"]
    from bench.dataset import PipelineOptions, load_manifest

    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")
    x, _ = load_images(manifest, "validation", args["indices"], PipelineOptions.from_dict(args["pipeline"]))
    return x


def stage_results(framework: str, model: str, images: int, args: dict[str, Any],
                  units: Callable[[Any], list[dict[str, Any]]]) -> dict[str, Any]:
    """The task's result: per stage of ``args['stages']`` ({stage: weights}), ``units(weights)``
    (:func:`unit_summaries` with those weights loaded)."""
    if not args.get("stages"):
        raise ValueError("residual_ratios needs 'stages': {stage: weight file}")
    return {"framework": framework, "model": model, "images": int(images),
            "stages": {stage: {"weights": w, "units": units(w)} for stage, w in args["stages"].items()}}


def unit_summaries(x_all: np.ndarray, unit_norms: UnitNorms, batch: int = BATCH) -> list[dict[str, Any]]:
    """:func:`summarise` of every residual unit over all of ``x_all``, fed ``batch`` images at a time."""
    blocks: dict[str, str] = {}
    branch: dict[str, list[np.ndarray]] = {}
    shortcut: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x_all), batch):
        for name, (block_id, fn, sn) in unit_norms(x_all[start:start + batch]).items():
            blocks[name] = block_id
            branch.setdefault(name, []).append(fn)
            shortcut.setdefault(name, []).append(sn)
    return [summarise(name, block_id, np.concatenate(branch[name]), np.concatenate(shortcut[name]))
            for name, block_id in blocks.items()]


def summarise(name: str, block_id: str, branch: np.ndarray, shortcut: np.ndarray) -> dict[str, Any]:
    """One unit: per-image ratios, their mean, median and interquartile range."""
    branch, shortcut = np.asarray(branch, np.float64), np.asarray(shortcut, np.float64)
    ratio = branch / np.maximum(shortcut, np.finfo(np.float64).tiny)
    q1, median, q3 = quartiles(ratio)
    return {"unit": name, "block": block_id, "ratio_mean": float(ratio.mean()), "ratio_median": float(median),
            "ratio_q1": float(q1), "ratio_q3": float(q3), "ratio_std": float(ratio.std()),
            "branch_norm_mean": float(branch.mean()), "shortcut_norm_mean": float(shortcut.mean()),
            "ratios": [float(r) for r in ratio]}


def measure_stages(model_args: dict[str, Any], stages: dict[str, dict[str, str | Path]], *,
                   x: np.ndarray | None = None, images: dict[str, Any] | None = None,
                   config: WorkerConfig | None = None, job_root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Both frameworks' ratios for several weight sets ({stage: {framework: weight file}}, as twinbench
    run's before and after training) with one worker per framework for all of them: one start,
    one model build and one decode instead of one per stage. Returns {stage: {framework: result}},
    each result {"framework", "model", "images", "weights", "units"}. One bundle for both
    frameworks compares the frameworks; each side's trained weights, the effect of training.
    The images: ``x`` (NHWC, as the model is fed), or ``images`` = {"manifest", "data_root",
    "indices", "pipeline"}: validation images each side decodes with its own pipeline (the two
    agree within 0.01 of 255, ``twinbench data check``)."""
    if (x is None) == (images is None):
        raise ValueError("pass either x or images")
    out: dict[str, dict[str, Any]] = {stage: {} for stage in stages}
    for fw in FRAMEWORKS:
        mine = {stage: str(per_fw[fw]) for stage, per_fw in stages.items() if fw in per_fw}
        if not mine:
            continue
        job_dir = None if job_root is None else Path(job_root) / f"residuals-{fw}"
        result = run_job(config, Job(fw, "residual_ratios", {**model_args, **(images or {}), "stages": mine},
                                     arrays=None if x is None else {"x": x}, job_dir=job_dir,
                                     inputs=tuple(f"stages.{stage}" for stage in mine), manifest="manifest")).result
        head = {k: v for k, v in result.items() if k != "stages"}
        for stage, part in result["stages"].items():
            out[stage][fw] = {**head, **part}
    return out
