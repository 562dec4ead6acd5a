"""The sampling loop: one denoiser call per step, the step rule, the final policy.

A run is prepared, then run. `prepare` does what does not depend on x, once per batch: each step's
options read into what the denoiser takes (solvers/options.py: e.g. FreeU's factors on the device,
once per distinct value) and the step noise drawn ahead into one device buffer, read back in order by
`buffered`. `Prepared.run` then makes no host work of its own at the steps, and records on the device
whether each step stayed finite (no wait for the device either): what a CUDA graph capture needs
(pipeline/graphs.py). `sample` is the two in one call; the step rules never see the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from solvers.eval_shift import EVAL_SHIFT, evaluation_level
from solvers.options import denoiser_options, read_steps
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


class NonFinite(ArithmeticError):
    """The latents stopped being finite; the message names the step (one line)."""


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
            raise ValueError(
                f"the step rules drew more than the {len(drawn)} noise tensors drawn ahead; a rule "
                "that draws noise must be declared stochastic in the solver table"
            )
        return drawn[k]

    return draw


@dataclass(frozen=True)
class Prepared:
    """A plan made ready for one batch: each step's options as the denoiser takes them, and the step
    noise drawn ahead, [draws, *x.shape] (one per step of a stochastic rule into sigma > 0)."""

    plan: Plan
    options: tuple[dict[str, Any], ...]
    noise: Tensor

    def run(
        self,
        denoise: Callable[..., Tensor],
        x: Tensor,
        callback: Callable[[StepInfo], None] | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Solve from x at plan.sigmas[0]: (x at the end, finite), finite[i] being whether step i's x
        and D were finite (finite[N]: the result), recorded on the device. `denoise(x, sigma, **options)
        -> D(x; sigma)` gets the step's prepared options less those only its rule reads (`Step.options`
        has all); the loop applies "eval_shift" itself (solvers/eval_shift.py): step i's D is evaluated
        at sigma_i e^shift, the rule integrating from sigma_i, and the denoiser never sees the shift. A
        step into sigma = 0 returns D unless the rule takes it (`Solver.to_zero`). A callback sees each
        step after the check that it is finite (raising NonFinite). `noise`: the draws to read instead
        of `self.noise` (a captured graph's static buffer of the same shape)."""
        plan, draw = self.plan, buffered(self.noise if noise is None else noise)
        finite = torch.ones(plan.steps + 1, dtype=torch.bool, device=x.device)
        history: list[Past] = []
        model_options = [denoiser_options(options) for options in self.options]
        for i in range(plan.steps):
            sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
            rule = SOLVERS[plan.solver[i]]
            denoise_step = partial(denoise, **model_options[i])
            denoised = denoise_step(x, evaluation_level(sigma, self.options[i].get(EVAL_SHIFT)))
            finite[i] = torch.isfinite(x).all() & torch.isfinite(denoised).all()
            if callback is not None:
                self.check(finite)
                callback(StepInfo(i, sigma, sigma_next, x, denoised))
            if sigma_next == 0 and not rule.to_zero:
                x_next = denoised
            else:
                step = Step(
                    i,
                    plan.steps,
                    sigma,
                    sigma_next,
                    tuple(history),
                    denoise_step,
                    partial(draw, x),
                    self.options[i],
                )
                x_next = rule.rule(x, denoised, step)
            history.append(Past(sigma, x, denoised))
            x = x_next
        if plan.final == "denoise":
            x = denoise(x, plan.sigmas[-1], **model_options[-1])
        finite[plan.steps] = torch.isfinite(x).all()
        return x, finite

    def check(self, finite: Tensor) -> None:
        """Raise NonFinite naming the first step whose latents were not finite (one device sync)."""
        if bool(finite.all()):
            return
        k, n = int((~finite).nonzero()[0]), self.plan.steps
        if k == n:
            raise NonFinite(f"the latents became non-finite after step {n} of {n}")
        raise NonFinite(
            f"the latents became non-finite at step {k + 1} of {n} (sigma {self.plan.sigmas[k]:.4g})"
        )


def prepare(plan: Plan, like: Tensor, noise: NoiseSource | None = None) -> Prepared:
    """`plan` made ready for x like `like`: options read for its device, the step noise drawn from
    `noise` (required when the plan has a stochastic rule) in the order the steps would draw it."""
    stochastic = [i for i, s in enumerate(plan.solver) if SOLVERS[s].stochastic and plan.sigmas[i + 1] > 0]
    if stochastic and noise is None:
        raise ValueError(
            f"solver {plan.solver[stochastic[0]]} adds noise at every step; pass sample(..., noise=...) "
            "(e.g. solvers.loop.generator_noise(torch.Generator().manual_seed(0)))"
        )
    options = read_steps([plan.step_options(i) for i in range(plan.steps)], like.device)
    return Prepared(plan, options, draw_ahead(noise, like, len(stochastic)))


def sample(
    denoise: Callable[..., Tensor],
    x: Tensor,
    plan: Plan,
    callback: Callable[[StepInfo], None] | None = None,
    noise: NoiseSource | None = None,
) -> Tensor:
    """Solve the probability-flow ODE (or, with stochastic rules, its SDE) from x at plan.sigmas[0]:
    `prepare(plan, x, noise).run(denoise, x, callback)`'s x. `denoise(x, sigma, **options) -> D(x;
    sigma)` gets each step's options (guidance, freeu, ...) as their declarations read them; an
    analytic denoiser may ignore them. Stochastic rules draw from `noise`."""
    return prepare(plan, x, noise).run(denoise, x, callback)[0]
