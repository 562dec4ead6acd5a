"""One step of each single- and multistep ODE solver of the DPM-Solver family, in data-prediction form.

Every rule is declared in the solver table (solvers/table.py) by its `@solver(...)` line and has
the same signature `rule(x, denoised, step) -> x_next` (`solvers.table.Step`: sigma > sigma_next > 0,
the history of (sigma_j, x_j, D_j), denoise, noise). The loop handles a step into 0: it returns D.

Notation (DPM-Solver++, Lu et al. 2022): lambda = -log sigma, h = lambda_next - lambda =
log(sigma / sigma_next) > 0. The exact solution of the probability-flow ODE is (paper eq. 11)

    x_next = (sigma_next / sigma) x + sigma_next * integral_lambda^lambda_next e^l D(x_l; sigma_l) dl,

and the rules differ in how they approximate D over the step.
"""

from __future__ import annotations

import math

from torch import Tensor

from solvers.table import Step, solver


@solver(calls=1, order=1, short="euler", display="Euler")
def euler(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """Euler on dx/dsigma = (x - D) / sigma (Karras et al. 2022, eq. 3 with s = 1). Order 1."""
    sigma, sigma_next = step.sigma, step.sigma_next
    return x + (sigma_next - sigma) * (x - denoised) / sigma


@solver(calls=2, order=2, short="heun", display="Heun")
def heun(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """Karras et al. (2022) Algorithm 1: Euler, then the trapezoidal correction. Order 2, 2 calls."""
    sigma, sigma_next = step.sigma, step.sigma_next
    slope = (x - denoised) / sigma
    x_euler = x + (sigma_next - sigma) * slope
    slope_next = (x_euler - step.denoise(x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (slope + slope_next) / 2


@solver(calls=1, order=1, short="1s", display="DPM++ 1S")
def dpmpp_1s(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """DPM-Solver++1S (DDIM in data prediction), paper eq. (12): D held constant. Order 1.

    With x = x0 + sigma * eps this is algebraically Euler's step: (sigma'/sigma) x + (1 - sigma'/sigma) D.
    """
    h = math.log(step.sigma / step.sigma_next)
    return (step.sigma_next / step.sigma) * x - math.expm1(-h) * denoised


@solver(calls=2, order=2, short="2s", display="DPM++ 2S")
def dpmpp_2s(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """DPM-Solver++(2S) with the midpoint in lambda (r = 1/2): D taken at the midpoint. Order 2, 2 calls."""
    sigma, sigma_next = step.sigma, step.sigma_next
    h = math.log(sigma / sigma_next)
    sigma_mid = math.sqrt(sigma * sigma_next)  # lambda + h / 2
    x_mid = (sigma_mid / sigma) * x - math.expm1(-h / 2) * denoised
    return (sigma_next / sigma) * x - math.expm1(-h) * step.denoise(x_mid, sigma_mid)


@solver(calls=1, order=2, short="2m", display="DPM++ 2M")
def dpmpp_2m(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """DPM-Solver++(2M), paper eq. (13)-(14): D extrapolated from this and the previous step. Order 2.

    The first step has no history and is first order.
    """
    if not step.history:
        return dpmpp_1s(x, denoised, step)
    sigma, sigma_next = step.sigma, step.sigma_next
    sigma_prev, _, denoised_prev = step.history[-1]
    h = math.log(sigma / sigma_next)
    r = math.log(sigma_prev / sigma) / h  # r_i = h_{i-1} / h_i
    d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev  # eq. (14)
    return (sigma_next / sigma) * x - math.expm1(-h) * d


@solver(calls=1, order=2, short="3m", display="DPM++ 3M")
def dpmpp_3m(x: Tensor, denoised: Tensor, step: Step, eta: float = 0.0) -> Tensor:
    """DPM-Solver++(3M) as published and run by k-diffusion (`sample_dpmpp_3m_sde`), diffusers
    (`DPMSolverMultistepScheduler`, solver_order=3) and ComfyUI: first order, then second, then the
    multistep update of DPM-Solver's `multistep_dpm_solver_third_update`. eta > 0 is its SDE (3M SDE).

    With h-scaled differences d1 ~ h D' and d2 ~ h^2 D''/2 of the last three estimates it adds
    phi_2 d1 - phi_3 d2, phi_2 = 1 - (1 - e^-h)/h, phi_3 = phi_2/h - 1/2: half the curvature term of the
    exact integral (see dpmpp_3m_exact), so its local error is O(h^3), not O(h^4): global order 2.
    """
    sigma, sigma_next, history = step.sigma, step.sigma_next, step.history
    h = math.log(sigma / sigma_next)
    h_eta = h * (eta + 1)
    x_next = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    if len(history) >= 2:
        (sigma_2, _, denoised_2), (sigma_1, _, denoised_1) = history[-2:]
        r0, r1 = math.log(sigma_1 / sigma) / h, math.log(sigma_2 / sigma_1) / h
        d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        x_next = x_next + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
    elif history:
        sigma_1, _, denoised_1 = history[-1]
        x_next = x_next + phi_2 * (denoised - denoised_1) / (math.log(sigma_1 / sigma) / h)
    if eta:
        x_next = x_next + step.noise() * sigma_next * math.sqrt(-math.expm1(-2 * h * eta))
    return x_next


@solver(calls=1, order=3, short="3m_exact", display="DPM++ 3M exact")
def dpmpp_3m_exact(x: Tensor, denoised: Tensor, step: Step) -> Tensor:
    """DPM++ 3M with the quadratic integrated exactly: D is the quadratic through this and the two
    previous estimates (in lambda), integrated exactly against e^lambda. Order 3 once two earlier
    steps exist; lower order before. (This was fewstep-sd's `dpmpp_3m` in plan formats 1 and 2.)

    With u = lambda - lambda_i and D(u) = D + D' u + D'' u^2 / 2, eq. (11) gives
    x_next = e^-h x + (1 - e^-h) D + (h - 1 + e^-h) D' + (h^2/2 - h + 1 - e^-h) D''.
    In the h-scaled differences of `dpmpp_3m` the curvature coefficient is 1 - 2 phi_2/h, twice the
    published rule's 1/2 - phi_2/h; only this one is exact for a quadratic D (local error O(h^4)).
    """
    sigma, sigma_next, history = step.sigma, step.sigma_next, step.history
    h = math.log(sigma / sigma_next)
    phi_1 = -math.expm1(-h)
    phi_2 = h - phi_1
    phi_3 = h * h / 2 - phi_2
    x_next = (sigma_next / sigma) * x + phi_1 * denoised
    if not history:
        return x_next
    # Newton divided differences on the nonuniform lambda grid (u = 0, -h1, -h1 - h2).
    sigma_1, _, denoised_1 = history[-1]
    h1 = math.log(sigma_1 / sigma)
    slope_0 = (denoised - denoised_1) / h1
    if len(history) < 2:
        return x_next + phi_2 * slope_0
    sigma_2, _, denoised_2 = history[-2]
    h2 = math.log(sigma_2 / sigma_1)
    curvature = (slope_0 - (denoised_1 - denoised_2) / h2) / (h1 + h2)  # D'' / 2
    return x_next + phi_2 * (slope_0 + curvature * h1) + phi_3 * 2 * curvature
