"""Learning-rate schedules both training workers apply, computed once here (framework-free).

The workers set the optimizer's learning rate before every step from :func:`learning_rate_at`,
so TF and torch step with the same float32 value (Keras keeps the rate in a float32 variable;
KerasAdam converts the Python float to the parameter's dtype). ``constant`` is the seed's
``compile(optimizer="adam")``; ``cosine`` decays to zero over the run (Loshchilov & Hutter 2017,
without restarts), which ends a short run on small steps instead of wherever Adam's last large
step left it (docs/profiles.md).
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "cosine")


def learning_rate_at(schedule: str, base: float, step: int, total_steps: int) -> float:
    """The rate for step ``step`` (0-based, counted over the whole run) of ``total_steps``,
    rounded to float32, the precision both optimizers keep it in."""
    if schedule == "constant":
        rate = base
    elif schedule == "cosine":
        if total_steps < 1 or not 0 <= step < total_steps:
            raise ValueError(f"step {step} is outside a run of {total_steps} steps")
        rate = base * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    return float(np.float32(rate))
