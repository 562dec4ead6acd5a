"""The samplers of consistency-distilled models: LCM (Luo et al. 2023) and TCD (Zheng et al. 2024), as
diffusers' LCMScheduler and TCDScheduler step, and TCD's per-step option `gamma`.

Both are defined on DDPM timesteps t of SD's 1000-step training table, the table of every model they
were distilled for (SD 1.5, SDXL). In the loop's form x = x_t / sqrt(abar_t), sigma^2 = (1 - abar_t) /
abar_t, and D the model's x0 estimate:

- LCM: D' = c_out D + c_skip x_t with the boundary condition at the scaled time 10 t, sigma_data 0.5:
  c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25); then fresh noise to the
  next level, x' = D' + sigma' z (x_t' = sqrt(abar') D' + sqrt(1 - abar') z); the last step returns D'.
- TCD: s = floor((1 - gamma) t'), x_s = D + sigma_s eps with eps = (x - D) / sigma, then fresh noise
  up to the next level, x' = x_s + sqrt(sigma'^2 - sigma_s^2) z (x_t' = sqrt(abar'/abar_s) x_s +
  sqrt(1 - abar'/abar_s) z). gamma = 0 is deterministic (DDIM); its plans end at t = 0 (sigma_min),
  where diffusers' last step lands, not at 0.

Neither discretizes the ODE or SDE (their steps jump to a fixed noise level), so the table's `order`
is its minimum, 1: more steps do not converge to the data law.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

import safeio
from schedule import DiscreteSchedule
from solvers.options import Flag, Option, declare, number
from solvers.table import Step, solver

SD = DiscreteSchedule.sd()
GAMMA = 0.3  # TCD's default gamma (diffusers' eta), its authors' recommendation
# A plan placed on a checkpoint's float32 copy of the table lands within 3e-3 of SD's integer timesteps.
_SNAP = 1e-2


def timestep(sigma: float) -> float:
    """The DDPM timestep of `sigma` on SD's table: the integer where sigma is one of the table's
    levels (the timesteps these schedulers step between), else the fractional t."""
    t = SD.t(sigma)
    return float(round(t)) if abs(t - round(t)) < _SNAP else t


def boundary(t: float) -> tuple[float, float]:
    """LCM's (c_skip, c_out) at timestep t: scaled time 10 t, sigma_data 0.5."""
    scaled = 10 * t
    return 0.25 / (scaled**2 + 0.25), scaled / math.sqrt(scaled**2 + 0.25)


@solver(calls=1, order=1, short="lcm", display="LCM", stochastic=True, to_zero=True)
def lcm(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """LCMScheduler's step: the boundary-conditioned estimate, re-noised to sigma_next (> 0) or
    returned (sigma_next = 0)."""
    c_skip, c_out = boundary(timestep(step.sigma))
    estimate = c_out * denoised + c_skip * x / math.sqrt(1 + step.sigma**2)  # x_t = x sqrt(abar_t)
    return estimate if step.sigma_next == 0 else estimate + step.sigma_next * step.noise()


@solver(calls=1, order=1, short="tcd", display="TCD", stochastic=True)
def tcd(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """TCDScheduler's step with the step's option gamma: to the level s = floor((1 - gamma) t_next)
    along the model's noise estimate, then fresh noise up to sigma_next."""
    gamma = step.options.get("gamma", GAMMA)
    t_next = timestep(step.sigma_next)
    s = math.floor((1 - gamma) * t_next)
    sigma_s = step.sigma_next if s == t_next else SD.sigma(float(s))
    x_s = denoised + (sigma_s / step.sigma) * (x - denoised)
    spread = math.sqrt(max(step.sigma_next**2 - sigma_s**2, 0.0))
    return x_s + spread * step.noise() if spread > 0 else x_s


def check_gamma(value: Any) -> float:
    """TCD's gamma: a number from 0 (deterministic) to 1."""
    gamma = safeio.number(value, 0)
    if gamma > 1:
        raise ValueError(f"must be at most 1, got {gamma:g}")
    return gamma


declare(
    Option(
        "gamma",
        GAMMA,
        check_gamma,
        label="TCD gamma",
        always=True,
        rule_only=True,
        flags=(
            Flag(
                "--tcd-gamma",
                f"TCD's gamma (diffusers' eta) on every step: 0 deterministic to 1 (default {GAMMA:g}, "
                "its authors')",
                {"type": lambda text: check_gamma(number(text)), "metavar": "G"},
            ),
        ),
    )
)
