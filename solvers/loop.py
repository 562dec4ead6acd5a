"""The sampling loop: one denoiser call per step, the step rule, the final policy.

What a run needs that does not depend on x is read before the first step: each step's options
(`prepare_options`: e.g. FreeU settings with their factors on the device, read once per distinct
value) and, for graph capture, the step noise (`draw_ahead`: every draw made up front into one device
buffer, read back in order by `buffered`). The step rules are unchanged; they get the prepared values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from solvers.eval_shift import EVAL_SHIFT, evaluation_level
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


def draw_ahead(noise: NoiseSource, like: Tensor, count: int) -> Tensor:
    """The first `count` draws of `noise` for tensors like `like`, made now: [count, *like.shape]."""
    return torch.stack([noise(like) for _ in range(count)]) if count else like.new_empty((0, *like.shape))


def buffered(drawn: Tensor) -> NoiseSource:
    """A source giving drawn[0], drawn[1], ... in order (`draw_ahead`): the same values as drawing
    lazily, with no host work or copy at the steps, so a CUDA graph can replay reads of the buffer."""
    order = iter(range(len(drawn)))

    def draw(like: Tensor) -> Tensor:
        k = next(order, None)
        if k is None:
            raise ValueError(f"the step rules drew more than the {len(drawn)} noise tensors drawn ahead")
        return drawn[k]

    return draw


def noise_draws(plan: Plan) -> int:
    """An upper bound on the noise draws of a run: one per step of a stochastic rule into sigma > 0."""
    return sum(SOLVERS[s].stochastic and plan.sigmas[i + 1] > 0 for i, s in enumerate(plan.solver))


def prepare_options(plan: Plan, read: Mapping[str, Callable[[Any], Any]]) -> tuple[dict[str, Any], ...]:
    """Each step's options, those named in `read` turned into what the denoiser takes, read once per
    distinct value (steps with equal settings share one object, and its tensors)."""
    done: dict[tuple[str, str], Any] = {}

    def value(key: str, entry: Any) -> Any:
        if key not in read:
            return entry
        seen = (key, json.dumps(entry, sort_keys=True))
        if seen not in done:
            done[seen] = read[key](entry)
        return done[seen]

    return tuple({k: value(k, v) for k, v in plan.step_options(i).items()} for i in range(plan.steps))


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
    options: Sequence[Mapping[str, Any]] | None = None,
) -> Tensor:
    """Solve the probability-flow ODE (or, with stochastic rules, its SDE) from x at plan.sigmas[0].

    `denoise(x, sigma, **options) -> D(x; sigma)` gets the step's options (guidance, freeu, ...) as
    the plan holds them; an analytic denoiser may ignore them. A step into sigma = 0 returns the
    denoised estimate. Stochastic rules draw from `noise` (required when the plan has one).
    `options` are the steps' options as `prepare_options` gives them (default: the plan's own). The
    loop applies "eval_shift" itself (solvers/eval_shift.py): D is evaluated at sigma e^shift.
    """
    stochastic = sorted({s for s in plan.solver if SOLVERS[s].stochastic})
    if stochastic and noise is None:
        raise ValueError(
            f"solver {stochastic[0]} adds noise at every step; pass sample(..., noise=...) "
            "(e.g. solvers.loop.generator_noise(torch.Generator().manual_seed(0)))"
        )
    options = options or prepare_options(plan, {})
    shifts = [step.get(EVAL_SHIFT) for step in options]  # the loop's own option: the denoiser never sees it
    options = [{key: value for key, value in step.items() if key != EVAL_SHIFT} for step in options]
    history: list[Past] = []
    for i in range(plan.steps):
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        denoise_step = partial(denoise, **options[i])
        denoised = denoise_step(x, evaluation_level(sigma, shifts[i]))
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
        x = denoise(x, plan.sigmas[-1], **options[-1])
    return x
