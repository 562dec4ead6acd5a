"""The sampling loop: one denoiser call per step, the step rule, the final policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from solvers.plan import Plan
from solvers.table import SOLVERS, Past, Step

# noise(like) -> a standard-normal tensor of like's shape, dtype and device; each call the next draw.
NoiseSource = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees before step `index` moves x from `sigma` to `sigma_next`."""

    index: int
    sigma: float
    sigma_next: float
    x: Tensor
    denoised: Tensor


def generator_noise(generator: torch.Generator) -> NoiseSource:
    """A noise source drawing from one torch.Generator (tests, notebooks; the pipeline draws per image)."""
    return lambda like: torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def _no_noise(like: Tensor) -> Tensor:
    raise ValueError(
        "a step rule drew noise but is not declared stochastic in the solver table, and sample() got "
        "no noise source; register it with stochastic=True"
    )


def sample(
    denoise: Callable[..., Tensor],
    x: Tensor,
    plan: Plan,
    callback: Callable[[StepInfo], None] | None = None,
    noise: NoiseSource | None = None,
) -> Tensor:
    """Solve the probability-flow ODE (or, with stochastic rules, its SDE) from x at plan.sigmas[0].

    `denoise(x, sigma, **options) -> D(x; sigma)` gets the step's options (guidance, freeu, ...) as
    the plan holds them; an analytic denoiser may ignore them. A step into sigma = 0 returns the
    denoised estimate. Stochastic rules draw from `noise` (required when the plan has one).
    """
    stochastic = sorted({s for s in plan.solver if SOLVERS[s].stochastic})
    if stochastic and noise is None:
        raise ValueError(
            f"solver {stochastic[0]} adds noise at every step; pass sample(..., noise=...) "
            "(e.g. solvers.loop.generator_noise(torch.Generator().manual_seed(0)))"
        )
    history: list[Past] = []
    for i in range(plan.steps):
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        denoise_step = partial(denoise, **plan.step_options(i))
        denoised = denoise_step(x, sigma)
        if callback is not None:
            callback(StepInfo(i, sigma, sigma_next, x, denoised))
        if sigma_next == 0:
            x_next = denoised
        else:
            step = Step(i, plan.steps, sigma, sigma_next, tuple(history), denoise_step,
                        partial(noise or _no_noise, x))  # fmt: skip
            x_next = SOLVERS[plan.solver[i]].rule(x, denoised, step)
        history.append(Past(sigma, x, denoised))
        x = x_next
    if plan.final == "denoise":
        x = denoise(x, plan.sigmas[-1], **plan.step_options(plan.steps - 1))
    return x
