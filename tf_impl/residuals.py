"""Residual structure: how much each residual branch F(x) contributes next to its shortcut.

Worker task ``residual_ratios`` (mirror of ``torch_impl.residuals``): for given weights and a batch
of validation images (NHWC, already preprocessed as the model is fed), the norm ratio
``||F(x)|| / ||shortcut(x)||`` per residual unit and per image, in inference mode.

A sub-model exposes, per residual unit, the two tensors its add layer sums: the branch
(``<prefix>bn3``'s output) and the shortcut (``<prefix>res_bn``'s output in a conv_block, the
block's input in an identity_block). Reading them as the inputs of ``<prefix>add`` gives exactly
those tensors for ResNet-50's blocks and for the units inside a ``resnet50_c3`` stage
(``<stage prefix>m<i>_add``) alike.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bench import spec as specs
from bench.residuals import stage_results, unit_summaries, validation_images
from bench.spec import ModelSpec, spec_from_args
from tf_impl import model as tfm
from tf_impl import weights as tfw
from tf_impl.data import load_images


def residual_units(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(unit name, block id, add layer name) for every residual add, in model order."""
    units = []
    for block in spec.blocks:
        if block.kind == "c3_block":
            for i in range(block.depth):
                prefix = specs.c3_unit_prefix(block, i)
                units.append((prefix.rstrip("_"), block.id, prefix + "add"))
        else:
            units.append((block.id, block.id, block.prefix + "add"))
    return units


def branches_model(model: keras.Model, spec: ModelSpec) -> tuple[keras.Model, list[tuple[str, str]]]:
    """Input -> [F(x), shortcut(x)] for every residual unit; and the (unit, block) names."""
    outputs, names = [], []
    for unit, block_id, add_name in residual_units(spec):
        branch, shortcut = model.get_layer(add_name).input  # layers.add([branch, shortcut])
        outputs += [branch, shortcut]
        names.append((unit, block_id))
    return keras.Model(model.input, outputs), names


def residual_ratios(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Task: per residual unit, ||F(x)|| / ||shortcut(x)|| on ``inputs['x']`` (or the manifest's
    images) for each weight file of ``args['stages']`` ({stage: file}:
    one model build and one decode for all; ``bench.residuals.measure_stages``)."""
    spec = spec_from_args(args)
    model = tfm.build(spec)
    probe, names = branches_model(model, spec)  # reads the layers' current weights when called

    def numpy_norms(x: np.ndarray) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
        norms = []
        for t in probe(tf.constant(x, dtype=tf.float32), training=False):
            t = tf.reshape(tf.cast(t, tf.float64), (tf.shape(t)[0], -1))  # float64: sums over 55x55x256 values
            norms.append(tf.norm(t, axis=1).numpy())
        return {unit: (block_id, norms[2 * k], norms[2 * k + 1]) for k, (unit, block_id) in enumerate(names)}

    def units(weights):
        tfw.load_into(model, spec, weights)
        return unit_summaries(x_all, numpy_norms)

    x_all = validation_images(args, inputs, load_images)
    return stage_results("tf", spec.name, len(x_all), args, units), None
