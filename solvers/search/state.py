"""A sampler's state between steps, and the one place the search takes a step.

Every step the search takes (the DP's edges, the brute-force check, the local costs) goes through
`advance`; only it calls a step rule and extends the history, exactly as `solvers.sample` does. A
change of the step-rule signature is a change here only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from solvers.table import SOLVERS, Past, Step, no_noise

DETERMINISTIC = no_noise("the schedule search runs deterministic solvers only")


@dataclass(frozen=True)
class State:
    """x at noise level sigma, with the history (sigma_j, x_j, D_j) of the steps that led there."""

    sigma: float
    x: Tensor
    history: tuple[Past, ...] = ()


def advance(
    solver: str,
    state: State,
    denoised: Tensor,
    sigma_next: float,
    denoise: Callable[..., Tensor],
    steps: int,
) -> State:
    """One step of `solver` from `state` to sigma_next, given denoised = D(state.x; state.sigma) and the
    step's `denoise(x, sigma)` for rules that call the model again; `steps` is the plan's step count
    N that lower-order-final rules read. A step into 0 returns `denoised`."""
    if sigma_next == 0:
        x = denoised
    else:
        step = Step(len(state.history), steps, state.sigma, sigma_next, state.history, denoise, DETERMINISTIC)
        x = SOLVERS[solver].rule(state.x, denoised, step)
    return State(sigma_next, x, (*state.history, Past(state.sigma, state.x, denoised)))
