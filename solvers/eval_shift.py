"""A step's decoupled evaluation level (LD3, Tong et al. 2025: the time the model is evaluated at is
a parameter of its own, apart from the time the step integrates from).

Per-step option "eval_shift", one number per step: step i evaluates D(x_i; sigma_i e^shift) and then
integrates from sigma_i as its rule says, with that estimate in place of D(x_i; sigma_i). The loop
applies it (solvers/loop.py, `Prepared.run`), so any denoiser D(x, sigma) gets it without taking an
option (it is `rule_only`: never passed to the denoiser), and it costs no call. 0 is the neutral
value, every plan's default: the step is exactly the plain one.
"""

from __future__ import annotations

import math
from typing import Any

from solvers.options import Option, declare

EVAL_SHIFT = "eval_shift"
MAX_SHIFT = 1.0  # at most a factor e either way: a correction, not another noise level


def check_eval_shift(value: Any) -> float:
    """A step's shift in log sigma: a finite number in [-MAX_SHIFT, MAX_SHIFT]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a number (a shift in log sigma, 0 for none), got {value!r}")
    if abs(value) > MAX_SHIFT:
        raise ValueError(f"must lie in [-{MAX_SHIFT:g}, {MAX_SHIFT:g}], got {value!r}")
    return float(value)


def evaluation_level(sigma: float, shift: float | None) -> float:
    """The level D is evaluated at: sigma itself when there is no shift (bitwise the plain step)."""
    return sigma if not shift else sigma * math.exp(shift)


declare(Option(EVAL_SHIFT, 0.0, check_eval_shift, rule_only=True))
