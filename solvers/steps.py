"""One step of each solver, in data-prediction form.

Every rule is declared in the solver table (solvers/table.py) by its `@solver(...)` line and has
the same signature

    rule(x, denoised, sigma, sigma_next, history, denoise) -> x_next

- x, denoised: the current sample and D(x; sigma), already evaluated by the loop;
- sigma > sigma_next > 0: the step (the loop handles a step into 0: it returns `denoised`);
- history: (sigma_j, D_j) of the earlier steps, most recent last (multistep rules read it);
- denoise(x, sigma) -> D: for rules that evaluate the model again inside the step (Heun, 2S).

Notation (DPM-Solver++, Lu et al. 2022): lambda = -log sigma, h = lambda_next - lambda =
log(sigma / sigma_next) > 0. The exact solution of the probability-flow ODE is (paper eq. 11)

    x_next = (sigma_next / sigma) x + sigma_next * integral_lambda^lambda_next e^l D(x_l; sigma_l) dl,

and the rules differ in how they approximate D over the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from solvers.table import solver

History = Sequence[tuple[float, Tensor]]
Denoise = Callable[[Tensor, float], Tensor]


@solver(calls=1, order=1, short="euler", display="Euler")
def euler(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history: History, denoise: Denoise
) -> Tensor:
    """Euler on dx/dsigma = (x - D) / sigma (Karras et al. 2022, eq. 3 with s = 1). Order 1."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


@solver(calls=2, order=2, short="heun", display="Heun")
def heun(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history: History, denoise: Denoise
) -> Tensor:
    """Karras et al. (2022) Algorithm 1: Euler, then the trapezoidal correction. Order 2, 2 calls."""
    slope = (x - denoised) / sigma
    x_euler = x + (sigma_next - sigma) * slope
    slope_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (slope + slope_next) / 2


@solver(calls=1, order=1, short="1s", display="DPM++ 1S")
def dpmpp_1s(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history: History, denoise: Denoise
) -> Tensor:
    """DPM-Solver++1S (DDIM in data prediction), paper eq. (12): D held constant. Order 1.

    With x = x0 + sigma * eps this is algebraically Euler's step: (sigma'/sigma) x + (1 - sigma'/sigma) D.
    """
    h = math.log(sigma / sigma_next)
    return (sigma_next / sigma) * x - math.expm1(-h) * denoised


@solver(calls=2, order=2, short="2s", display="DPM++ 2S")
def dpmpp_2s(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history: History, denoise: Denoise
) -> Tensor:
    """DPM-Solver++(2S) with the midpoint in lambda (r = 1/2): D taken at the midpoint. Order 2, 2 calls."""
    h = math.log(sigma / sigma_next)
    sigma_mid = math.sqrt(sigma * sigma_next)  # lambda + h / 2
    x_mid = (sigma_mid / sigma) * x - math.expm1(-h / 2) * denoised
    return (sigma_next / sigma) * x - math.expm1(-h) * denoise(x_mid, sigma_mid)


@solver(calls=1, order=2, short="2m", display="DPM++ 2M")
def dpmpp_2m(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history: History, denoise: Denoise
) -> Tensor:
    """DPM-Solver++(2M), paper eq. (13)-(14): D extrapolated from this and the previous step. Order 2.

    The first step has no history and is first order.
    """
    if not history:
        return dpmpp_1s(x, denoised, sigma, sigma_next, history, denoise)
    sigma_prev, denoised_prev = history[-1]
    h = math.log(sigma / sigma_next)
    r = math.log(sigma_prev / sigma) / h  # r_i = h_{i-1} / h_i
    d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev  # eq. (14)
    return (sigma_next / sigma) * x - math.expm1(-h) * d


@solver(calls=1, order=3, short="3m", display="DPM++ 3M")
def dpmpp_3m(
    x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, history: History, denoise: Denoise
) -> Tensor:
    """DPM-Solver++(3M): D is the quadratic through this and the two previous estimates (in lambda),
    integrated exactly against e^lambda. Order 3 once two earlier steps exist; lower order before.

    With u = lambda - lambda_i and D(u) = D + D' u + D'' u^2 / 2, eq. (11) gives
    x_next = e^-h x + (1 - e^-h) D + (h - 1 + e^-h) D' + (h^2/2 - h + 1 - e^-h) D''.
    """
    h = math.log(sigma / sigma_next)
    phi_1 = -math.expm1(-h)
    phi_2 = h - phi_1
    phi_3 = h * h / 2 - phi_2
    x_next = (sigma_next / sigma) * x + phi_1 * denoised
    if not history:
        return x_next
    # Newton divided differences on the nonuniform lambda grid (u = 0, -h1, -h1 - h2).
    sigma_1, denoised_1 = history[-1]
    h1 = math.log(sigma_1 / sigma)
    slope_0 = (denoised - denoised_1) / h1
    if len(history) < 2:
        return x_next + phi_2 * slope_0
    sigma_2, denoised_2 = history[-2]
    h2 = math.log(sigma_2 / sigma_1)
    curvature = (slope_0 - (denoised_1 - denoised_2) / h2) / (h1 + h2)  # D'' / 2
    return x_next + phi_2 * (slope_0 + curvature * h1) + phi_3 * 2 * curvature
