"""Multistep rules on the eps form of the ODE, dx/dsigma = eps(x, sigma) = (x - D) / sigma: they
extrapolate eps from this and earlier steps (eps_j = (x_j - D_j) / sigma_j, from the history) and
integrate the extrapolation over [sigma, sigma_next].

- DEIS (Zhang & Chen 2023), diffusers' `DEISMultistepScheduler` ("deis" / "logrho"): eps as the
  Lagrange polynomial in log sigma, integrated exactly in sigma.
- iPNDM and iPNDM-v as GITS (Chen et al. 2024, zju-pi/diff-sampler) and ComfyUI define them:
  Adams-Bashforth in sigma with the fixed coefficients of equal steps, and with the authors'
  coefficients recomputed from the actual step sizes. Both warm up from order 1 to 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import numpy as np
from torch import Tensor

from solvers.table import Solver, Step, register

# Adams-Bashforth weights of eps_i, eps_{i-1}, ... for equal steps (iPNDM), orders 1-4.
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def _recent(step: Step, x: Tensor, denoised: Tensor, count: int) -> tuple[list[float], list[Tensor]]:
    """sigma_j and eps_j of this step and of the `count - 1` before it, most recent first."""
    earlier = [(s, x_j, d_j) for s, x_j, d_j in step.history[len(step.history) - count + 1 :]]
    points = [(step.sigma, x, denoised), *reversed(earlier)]
    return [s for s, _, _ in points], [(x_j - d_j) / s for s, x_j, d_j in points]


def exp_lagrange_weights(nodes: Sequence[float], start: float, end: float) -> list[float]:
    """w_j = integral_start^end l_j(u) e^u du for the Lagrange basis l_j on `nodes`, exactly: an
    antiderivative of P(u) e^u is e^u (P - P' + P'' - ...)."""
    weights = []
    for j, u_j in enumerate(nodes):
        others = [u for k, u in enumerate(nodes) if k != j]
        basis = np.poly1d(others, r=True) / math.prod(u_j - u for u in others)
        antiderivative = sum((-1) ** k * basis.deriv(k) if k else basis for k in range(len(nodes)))
        weights.append(math.exp(end) * antiderivative(end) - math.exp(start) * antiderivative(start))
    return weights


def deis(x: Tensor, denoised: Tensor, step: Step, order: int = 3, lower_order_final: bool = True) -> Tensor:
    """DEIS-p: x_next = x + sum_j eps_j integral_sigma^sigma_next l_j(log rho) d rho over the last p
    steps. p warms up from 1; diffusers' lower_order_final gives order 1 on the last step and <= 2 on
    the one before when the plan has fewer than 15 steps. Order 1 is Euler (= DPM++ 1S)."""
    p = min(order, len(step.history) + 1)
    if lower_order_final and step.steps < 15:
        p = min(p, step.steps - step.index)
    sigmas, eps = _recent(step, x, denoised, p)
    weights = exp_lagrange_weights(
        [math.log(s) for s in sigmas], math.log(step.sigma), math.log(step.sigma_next)
    )
    for w, e in zip(weights, eps, strict=True):
        x = x + w * e
    return x


def ipndm(x: Tensor, denoised: Tensor, step: Step, max_order: int = 4) -> Tensor:
    """iPNDM: x_next = x + (sigma_next - sigma) sum_j c_j eps_j with equal-step Adams-Bashforth c_j.

    Order 4 on equal steps in sigma; on the unequal steps of real schedules equal-step weights are
    exact only for constant eps, which leaves global order 2 (measured 2.0 on Karras, 8 to 512 steps).
    """
    p = min(max_order, len(step.history) + 1)
    slope = sum(c * e for c, e in zip(ADAMS_BASHFORTH[p - 1], _recent(step, x, denoised, p)[1], strict=True))
    return x + (step.sigma_next - step.sigma) * slope


def ipndm_v(x: Tensor, denoised: Tensor, step: Step, max_order: int = 4) -> Tensor:
    """iPNDM-v: the same with the published variable-step coefficients (GITS `ipndm_v_sampler`,
    ComfyUI `sample_ipndm_v`), in step sizes h = sigma_next - sigma, h1 = sigma - sigma_{i-1}, ....

    As published they are Adams-Bashforth's on equal steps up to order 3 only: order 4 gives
    c_1 = 57/24 there, not AB4's 55/24 (exact for quadratic eps only), and its c_4 carries h1/h2 where
    h2/h3 would make the weights sum to 1 (they sum to 1 + t2 q (h2/h3 - h1/h2)), so it integrates a
    constant eps exactly only when the last steps are in geometric progression (the exponential
    discretization). On smooth grids that error is O(h^3) a step: global order 2 (Karras, 1024
    steps: slope 1.9); from exact history on a geometric grid the local error falls like h^4.
    """
    p = min(max_order, len(step.history) + 1)
    sigmas, eps = _recent(step, x, denoised, p)
    grid = [step.sigma_next, *sigmas, *[math.nan] * 4]  # sigma_{i+1}, sigma_i, sigma_{i-1}, ...
    h, h1, h2, h3 = (grid[k] - grid[k + 1] for k in range(4))
    c = [1.0] if p == 1 else [1 + h / h1 / 2, -h / h1 / 2]
    if p >= 3:
        t1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
        c = [c[0] + t1, c[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    if p == 4:
        q = h1 * (h1 + h2) / (h2 * (h2 + h3))
        t2 = (((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2)))
              * (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))  # fmt: skip
        c = [
            c[0] + t2,
            c[1] - (1 + h1 / h2 + q) * t2,
            c[2] + (h1 / h2 + q * (1 + h2 / h3)) * t2,
            -t2 * q * h1 / h2,
        ]
    return x + h * sum(ck * e for ck, e in zip(c, eps, strict=True))


for _order in (2, 3):
    register(
        Solver(f"deis_{_order}", partial(deis, order=_order), 1, _order, f"deis_{_order}", f"DEIS {_order}")
    )
register(Solver("ipndm", ipndm, 1, 2, "ipndm", "iPNDM"))
register(Solver("ipndm_v", ipndm_v, 1, 2, "ipndm_v", "iPNDM-v"))
