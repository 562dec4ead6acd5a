"""Stochastic rules: each step also adds fresh noise, `step.noise()`, drawn per image by the caller
(`sample(..., noise=...)`; the pipeline seeds it from each image's seed), so an image does not depend
on its batch or device and replays bitwise.

As in k-diffusion, which these equal when fed the same noise: eta scales the noise each step adds
(eta = 0 is the ODE rule), s_noise is 1. Their `order` in the table is the weak order, the rate at
which the law of the output approaches the data law (tests/solvers/test_solvers.py measures it exactly on a
Gaussian); a single path does not converge to the ODE's.
"""

from __future__ import annotations

import math
from functools import partial

from torch import Tensor

from solvers.steps import dpmpp_3m
from solvers.table import Solver, Step, register, solver


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): go deterministically to sigma_down, then add noise of std sigma_up, so
    that sigma_down^2 + sigma_up^2 = sigma_next^2 (k-diffusion's `get_ancestral_step`, DDPM for eta = 1)."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@solver(calls=1, order=1, short="euler_a", display="Euler a", stochastic=True)
def euler_a(x: Tensor, denoised: Tensor, step: Step, eta: float = 1.0) -> Tensor:
    """Euler ancestral: an Euler step to sigma_down, then noise up to sigma_next."""
    sigma_down, sigma_up = ancestral_step(step.sigma, step.sigma_next, eta)
    x = x + (sigma_down - step.sigma) * (x - denoised) / step.sigma
    return x + step.noise() * sigma_up if sigma_up else x


@solver(calls=1, order=2, short="2m_sde", display="DPM++ 2M SDE", stochastic=True)
def dpmpp_2m_sde(x: Tensor, denoised: Tensor, step: Step, eta: float = 1.0, heun: bool = False) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022; k-diffusion `sample_dpmpp_2m_sde`): the SDE's linear part
    integrated exactly, D's first difference to the previous step weighted by phi / 2 (midpoint) or,
    with heun, by 1 - phi / ((1 + eta) h), phi = 1 - e^-(1+eta)h, each over r = h_prev / h."""
    h = math.log(step.sigma / step.sigma_next)
    eta_h = eta * h
    phi = -math.expm1(-h - eta_h)
    x = step.sigma_next / step.sigma * math.exp(-eta_h) * x + phi * denoised
    if step.history:
        sigma_prev, _, denoised_prev = step.history[-1]
        r = math.log(sigma_prev / step.sigma) / h
        weight = phi / (-h - eta_h) + 1 if heun else 0.5 * phi
        x = x + weight * (1 / r) * (denoised - denoised_prev)
    if eta:
        x = x + step.noise() * step.sigma_next * math.sqrt(-math.expm1(-2 * eta_h))
    return x


register(Solver("dpmpp_2m_sde_heun", partial(dpmpp_2m_sde, heun=True), 1, 2, "2m_sde_heun",
                "DPM++ 2M SDE Heun", stochastic=True))  # fmt: skip
register(Solver("dpmpp_3m_sde", partial(dpmpp_3m, eta=1.0), 1, 2, "3m_sde", "DPM++ 3M SDE", stochastic=True))
