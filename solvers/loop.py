"""The sampling loop: one denoiser call per step, the step rule, the final policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from solvers.plan import Plan
from solvers.table import SOLVERS


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees before step `index` moves x from `sigma` to `sigma_next`."""

    index: int
    sigma: float
    sigma_next: float
    x: Tensor
    denoised: Tensor


def sample(
    denoise: Callable[..., Tensor],
    x: Tensor,
    plan: Plan,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Solve the probability-flow ODE from x at plan.sigmas[0] along the plan.

    `denoise(x, sigma, **options) -> D(x; sigma)` gets the step's options (guidance, freeu, ...) as
    the plan holds them; an analytic denoiser may ignore them. A step into sigma = 0 returns the
    denoised estimate.
    """
    history: list[tuple[float, Tensor]] = []
    for i in range(plan.steps):
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        denoise_step = partial(denoise, **plan.step_options(i))
        denoised = denoise_step(x, sigma)
        if callback is not None:
            callback(StepInfo(i, sigma, sigma_next, x, denoised))
        if sigma_next == 0:
            x = denoised
        else:
            x = SOLVERS[plan.solver[i]].rule(x, denoised, sigma, sigma_next, history, denoise_step)
        history.append((sigma, denoised))
    if plan.final == "denoise":
        x = denoise(x, plan.sigmas[-1], **plan.step_options(plan.steps - 1))
    return x
