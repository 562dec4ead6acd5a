"""DMN (Xue et al., CVPR 2024, "Accelerating Diffusion Sampling with Optimized Time Steps"): a data-free
discretization that minimises an analytic bound on the global error of multistep DPM-Solver++.

The objective is the one LD3's code ships (`samplers/general_solver.py`, `StepOptim.sel_lambdas_lof_obj`),
written for lambda = log(alpha / sigma_vp) = -log sigma in this project's sigma: over N steps from
sigma_max to sigma_min, step s of order k (1 at the first and last step, 2 at the second and last but
one, 3 elsewhere; at most the solver's order) contributes the exponential-integral weights J of its k
data-prediction estimates, each times the error scale sigma_vp^2 / alpha of latent models. For
N <= 7 the first three steps' terms are summed as norms (the published `truncNum = 3`), the others
signed per node; the bound is the sum of absolute values. The published code minimises it with scipy's
trust-constr under lambda monotone; here lambda is kept monotone by construction (its increments are a
softmax) and minimised with L-BFGS. No denoiser evaluation: a zero-cost baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from schedule import NoiseSchedule, time_uniform


def bound(lambdas: Tensor, order: int = 3) -> Tensor:
    """DMN's error bound for the N + 1 lambdas of N steps (float64, differentiable)."""
    n_steps = len(lambdas) - 1
    h = lambdas[1:] - lambdas[:-1]
    e = lambdas.exp()
    alpha, sigma_vp = (1 + (-2 * lambdas).exp()).rsqrt(), (1 + (2 * lambdas).exp()).rsqrt()
    d = sigma_vp**2 / alpha  # the data-prediction error scale of latent models

    def phi0(x: Tensor) -> Tensor:
        return x.expm1()

    def phi1(x: Tensor) -> Tensor:
        return x.exp() * x - phi0(x)

    def phi2(x: Tensor) -> Tensor:
        return x.exp() * x * x - 2 * phi1(x)

    truncated = 3 if n_steps <= 7 else 0
    norms, signed = [], torch.zeros(n_steps, dtype=lambdas.dtype)
    for s in range(n_steps):
        k = min(order, 1 + min(s, n_steps - 1 - s), 3)
        if k == 1:
            norms.append((e[s + 1] - e[s]) * d[s])
            continue
        if k == 2:
            n, hh = s - 1, h[s]
            weights = [-e[s] * phi1(hh) / h[n], e[s] * (phi1(hh) + h[n] * phi0(hh)) / h[n]]
        else:
            n, hh, h0, h1 = s - 2, h[s], h[s - 2], h[s - 1]
            weights = [
                e[s] * (phi2(hh) + h1 * phi1(hh)) / (h0 * (h0 + h1)),
                -e[s] * (phi2(hh) + (h0 + h1) * phi1(hh)) / (h0 * h1),
                e[s] * (phi2(hh) + (2 * h1 + h0) * phi1(hh) + h1 * (h0 + h1) * phi0(hh)) / (h1 * (h0 + h1)),
            ]
        terms = torch.stack([w * d[n + m] for m, w in enumerate(weights)])
        if s < truncated:
            norms.append(terms.norm())
        else:
            signed = signed + torch.zeros_like(signed).index_put((torch.arange(n, n + k),), terms)
    return torch.stack(norms).abs().sum() + signed.abs().sum()


def dmn_sigmas(schedule: NoiseSchedule, steps: int, order: int = 3, iterations: int = 200) -> Tensor:
    """The N + 1 DMN sigmas from sigma_max to sigma_min, started (as the published code does for latent
    models) from steps uniform in the schedule's time."""
    with torch.inference_mode(False), torch.enable_grad():  # also when called under inference mode
        start = -time_uniform(steps, schedule).log()
        first, last = start[0], start[-1]
        theta = (start[1:] - start[:-1]).log().clone().requires_grad_(True)

        def lambdas() -> Tensor:
            return torch.cat([first[None], first + (last - first) * theta.softmax(0).cumsum(0)])

        optimizer = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            value = bound(lambdas(), order)
            value.backward()
            return value

        optimizer.step(closure)
        sigmas = (-lambdas()).exp().detach()
    sigmas[0], sigmas[-1] = schedule.sigma_max, schedule.sigma_min
    return sigmas
