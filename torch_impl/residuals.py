"""Residual structure: how much each residual branch F(x) contributes next to its shortcut.

Worker task ``residual_ratios`` (mirror of ``tf_impl.residuals``): for given weights and a batch
of validation images (NHWC, already preprocessed as the model is fed), the norm ratio
``||F(x)|| / ||shortcut(x)||`` per residual unit and per image, in inference mode. A ratio well
below 1 means the block mostly passes its input on (the identity dominates); near or above 1, the
branch rewrites it.

Each residual unit is read from the model's own split into branch and shortcut, before the add:
``Bottleneck.branches(x)`` for ResNet-50's blocks, ``C3Stage.unit_branches(x)`` for the units
inside a ``resnet50_c3`` stage (a C3 stage itself joins by concatenation, not by an add).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.residuals import summarise
from bench.spec import spec_from_args
from torch_impl import model as tm
from torch_impl import weights as tw

BATCH = 16  # images per forward pass: bounds the activation memory at 224 px


def unit_norms(model: tm.ResNet, x: torch.Tensor) -> dict[str, tuple[str, torch.Tensor, torch.Tensor]]:
    """Residual unit name -> (block id, ||F(x)|| per image, ||shortcut(x)|| per image)."""
    out: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = {}
    h = model.forward_stem(x)
    for block_id, block in model.blocks.items():
        if hasattr(block, "unit_branches"):  # C3 stage: the residual units inside it
            for name, branch, shortcut in block.unit_branches(h):
                out[name] = (block_id, _norms(branch), _norms(shortcut))
            h = block(h)
        else:
            branch, shortcut = block.branches(h)
            out[block_id] = (block_id, _norms(branch), _norms(shortcut))
            h = torch.relu(branch + shortcut)
    return out


def _norms(t: torch.Tensor) -> torch.Tensor:
    """L2 norm per image, in float64 (sums over up to 55x55x256 values)."""
    return torch.linalg.vector_norm(t.double().flatten(1), dim=1)


@torch.no_grad()
def residual_ratios(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Task: per residual unit, ||F(x)|| / ||shortcut(x)|| on ``inputs['x']`` for ``args['weights']``."""
    spec = spec_from_args(args)
    model = tm.build(spec)
    if args.get("weights"):
        bundle = tw.load_file(args["weights"], spec)
        tw.from_bundle(model, spec, bundle, source=args["weights"])
    model.eval()
    x_all = validation_images(args, inputs)
    branch_norms: dict[str, list[np.ndarray]] = {}
    shortcut_norms: dict[str, list[np.ndarray]] = {}
    blocks: dict[str, str] = {}
    for start in range(0, len(x_all), BATCH):
        x = torch.from_numpy(np.ascontiguousarray(x_all[start:start + BATCH])).float().permute(0, 3, 1, 2)
        for name, (block_id, fn, sn) in unit_norms(model, x).items():
            blocks[name] = block_id
            branch_norms.setdefault(name, []).append(fn.numpy())
            shortcut_norms.setdefault(name, []).append(sn.numpy())
    units = []
    for name, block_id in blocks.items():
        fn, sn = np.concatenate(branch_norms[name]), np.concatenate(shortcut_norms[name])
        units.append(summarise(name, block_id, fn, sn))
    return {"framework": "torch", "model": spec.name, "images": int(len(x_all)),
            "weights": args.get("weights"), "units": units}, None


def validation_images(args: dict, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """``inputs['x']`` (NHWC), or the manifest's validation images ``args['indices']`` decoded by
    this side's own pipeline (``args['pipeline']``: bench.manifest.PipelineOptions fields)."""
    if "x" in inputs:
        return inputs["x"]
    from bench.manifest import PipelineOptions, load_manifest
    from torch_impl.data import load_images

    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")
    x, _ = load_images(manifest, "validation", args["indices"], PipelineOptions.from_dict(args["pipeline"]))
    return x
