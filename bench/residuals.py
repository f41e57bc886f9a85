"""Residual structure, framework-free: the per-unit summary both workers return, and the call
that measures both frameworks on one batch.

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


def measure(model_args: dict[str, Any], weights: dict[str, str | Path], *, x: np.ndarray | None = None,
            images: dict[str, Any] | None = None, config: WorkerConfig | None = None,
            job_root: Path | None = None) -> dict[str, Any]:
    """Both frameworks' ratios; ``weights`` maps framework -> weight file (one bundle for both
    compares the frameworks; each side's trained weights, the effect of training).

    The images: ``x`` (NHWC, as the model is fed), or ``images`` = {"manifest", "data_root",
    "indices", "pipeline"}: validation images each side decodes with its own pipeline (the two
    pipelines agree within 0.01 of 255, ``twinbench data check``).
    """
    if (x is None) == (images is None):
        raise ValueError("pass either x or images")
    out: dict[str, Any] = {}
    for fw in FRAMEWORKS:
        if fw not in weights:
            continue
        job_dir = None if job_root is None else Path(job_root) / f"residuals-{fw}"
        out[fw] = run_job(config, Job(fw, "residual_ratios", {**model_args, **(images or {}), "weights": str(weights[fw])},
                                      arrays=None if x is None else {"x": x}, job_dir=job_dir, inputs=("weights",),
                                      manifest="manifest")).result
    return out
