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

from bench.residuals import stage_results, unit_summaries, validation_images
from bench.spec import spec_from_args
from torch_impl import model as tm
from torch_impl import weights as tw
from torch_impl.data import load_images


def unit_norms(model: tm.ResNet, x: torch.Tensor) -> dict[str, tuple[str, torch.Tensor, torch.Tensor]]:
    """Residual unit name -> (block id, ||F(x)|| per image, ||shortcut(x)|| per image)."""
    out: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = {}
    h = model.forward_stem(x)
    for block_id, block in model.blocks.items():
        if hasattr(block, "unit_branches"):  # C3 stage: the residual units inside it
            h, units = block.unit_branches(h)  # the stage's output from the same pass
            for name, branch, shortcut in units:
                out[name] = (block_id, _norms(branch), _norms(shortcut))
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
    """Task: per residual unit, ||F(x)|| / ||shortcut(x)|| on ``inputs['x']`` (or the manifest's
    images) for each weight file of ``args['stages']`` ({stage: file}:
    one model build and one decode for all; ``bench.residuals.measure_stages``)."""
    spec = spec_from_args(args)
    model = tm.build(spec)
    model.eval()

    def numpy_norms(x: np.ndarray) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
        x = torch.from_numpy(np.ascontiguousarray(x)).float().permute(0, 3, 1, 2)  # NHWC -> NCHW
        return {name: (block_id, fn.numpy(), sn.numpy()) for name, (block_id, fn, sn) in unit_norms(model, x).items()}

    def units(weights):
        tw.load_into(model, spec, weights)
        return unit_summaries(x_all, numpy_norms)

    x_all = validation_images(args, inputs, load_images)
    return stage_results("torch", spec.name, len(x_all), args, units), None
