"""A step's decoupled evaluation level (LD3, Tong et al. 2025: the time the model is evaluated at is
a parameter of its own, apart from the time the step integrates from).

Plan option "eval_shift", one number per step: step i evaluates D(x_i; sigma_i e^shift) and then
integrates from sigma_i as its rule says, with that estimate in place of D(x_i; sigma_i). The loop
applies it (solvers/loop.py), so any denoiser D(x, sigma) gets it without taking an option, and it
costs no call. 0 is the neutral value: the step is exactly the plain one.
"""

from __future__ import annotations

import math
from typing import Any

EVAL_SHIFT = "eval_shift"
MAX_SHIFT = 1.0  # at most a factor e either way: a correction, not another noise level


def check_eval_shift(value: Any) -> float:
    """A step's shift in log sigma: a finite number in [-MAX_SHIFT, MAX_SHIFT]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"is {value!r}; an eval_shift is a number (log sigma), 0 for none")
    if abs(value) > MAX_SHIFT:
        raise ValueError(f"is {value}; an eval_shift lies in [-{MAX_SHIFT:g}, {MAX_SHIFT:g}]")
    return float(value)


def evaluation_level(sigma: float, shift: float | None) -> float:
    """The level D is evaluated at: sigma itself when there is no shift (bitwise the plain step)."""
    return sigma if not shift else sigma * math.exp(shift)
