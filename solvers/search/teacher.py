"""The candidate grid and the teacher: the reference solution the search measures every plan against.

The grid is G noise levels log-uniform (uniform in log-SNR) from the model's sigma_max to its
sigma_min, then 0. The teacher is the ODE solution from the starting latents at every grid level:
the model's own exact solution where it has one (`solvers.analytic`: `solve(x, sigma_from,
sigma_to)`), else a fine solve with `substeps` steps of a solver per grid interval and a last step
from sigma_min into 0 (which returns D(x; sigma_min), as every sampler ending at 0 does). States that
are not finite are refused (a plan measured against them would score nan), as is a cached teacher of
another shape (`states_problem`, pipeline/search.py's cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from schedule import NoiseSchedule, exponential
from solvers.loop import NonFinite, StepInfo, sample
from solvers.plan import Plan

EXACT = "exact"


def candidate_grid(schedule: NoiseSchedule, points: int) -> tuple[float, ...]:
    """`points` noise levels log-uniform from sigma_max to sigma_min, then 0 (points + 1 in all)."""
    if points < 2:
        raise ValueError(f"the candidate grid needs at least 2 noise levels, got {points}")
    inner = exponential(points - 1, schedule.sigma_min, schedule.sigma_max).tolist()[1:-1]
    return (schedule.sigma_max, *inner, schedule.sigma_min, 0.0)  # the ends exactly, not through exp(log)


@dataclass(frozen=True)
class Teacher:
    """The teacher's x at every grid level: states[i] is x(grid[i]) for all samples, states[-1] is x(0)."""

    grid: tuple[float, ...]
    states: Tensor  # [len(grid), K, ...]
    method: str  # EXACT, or the solver of the fine solve
    substeps: int  # solver steps per grid interval (0 when exact)

    @property
    def x0(self) -> Tensor:
        return self.states[-1]

    def rows(self, rows: slice) -> Teacher:
        """The teacher of some of its samples."""
        return Teacher(self.grid, self.states[:, rows], self.method, self.substeps)


def has_exact_solution(denoise: Callable[..., Tensor]) -> bool:
    return callable(getattr(denoise, "solve", None))


def solve_teacher(
    denoise: Callable[..., Tensor],
    x: Tensor,
    grid: Sequence[float],
    options: Mapping[str, Any],
    *,
    solver: str = EXACT,
    substeps: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> Teacher:
    """The teacher from x at grid[0]: `solver=EXACT` uses `denoise.solve` (`progress(n)` hears of each
    grid interval solved for n samples); any solver of the table runs `substeps` log-uniform steps per
    grid interval with `options` on every step."""
    grid = tuple(float(s) for s in grid)
    if solver == EXACT:
        if not has_exact_solution(denoise):
            raise ValueError(
                "the denoiser has no exact solve(x, sigma_from, sigma_to); give the teacher a solver"
            )
        points = [x]
        for s_from, s_to in pairwise(grid):
            points.append(denoise.solve(points[-1], s_from, s_to))
            if progress is not None:
                progress(len(x))
        return _finite(Teacher(grid, torch.stack(points), EXACT, 0))
    if substeps < 1:
        raise ValueError(f"a teacher solver needs 1 or more steps per grid interval, got {substeps}")
    fine = fine_sigmas(grid, substeps)
    seen: list[Tensor] = []

    def keep(info: StepInfo) -> None:
        if info.index % substeps == 0:
            seen.append(info.x)

    plan = Plan(fine, solver, final="keep", name="teacher", **options)
    try:
        end = sample(denoise, x, plan, keep)
        reached = [*seen, end]
    except NonFinite:  # x at grid[0] is the start; the levels not reached count as not finite
        known = seen or [x]
        reached = [*known, *[torch.full_like(x, math.nan)] * (len(grid) - len(known))]
    return _finite(Teacher(grid, torch.stack(reached), solver, substeps))


def _finite(teacher: Teacher) -> Teacher:
    finite = torch.isfinite(teacher.states).flatten(2).all(-1)  # [level, sample]
    if not finite.all():
        level, row = (int(i) for i in (~finite).nonzero()[0])
        raise ValueError(
            f"the teacher's solve ({teacher.method}) gave non-finite states, first of sample {row} at grid "
            f"level {level} (sigma {teacher.grid[level]:.4g}): the denoiser returned nan or inf there, and "
            "no plan can be measured against it"
        )
    return teacher


def states_problem(states: object, shape: Sequence[int]) -> str | None:
    """Why `states` cannot be a teacher's states of `shape` (e.g. one sample's [levels, C, h, w], as the
    cache of pipeline/search.py holds them), or None: not a floating-point tensor of that shape, or not
    all finite."""
    if not isinstance(states, Tensor) or not states.is_floating_point():
        kind = f"{states.dtype} tensor" if isinstance(states, Tensor) else type(states).__name__
        return f"its states are a {kind}, not floating point"
    if tuple(states.shape) != tuple(shape):
        return f"its states have shape {list(states.shape)}, not {list(shape)}"
    if not torch.isfinite(states).all():
        return "its states are not all finite"
    return None


def fine_sigmas(grid: Sequence[float], substeps: int) -> list[float]:
    """`substeps` log-uniform steps in each interval of the positive grid, then the step into 0."""
    positive = torch.tensor(grid[:-1], dtype=torch.float64).log()
    ramp = torch.arange(substeps, dtype=torch.float64) / substeps
    inner = torch.lerp(positive[:-1, None], positive[1:, None], ramp).flatten().exp()
    return [*inner.tolist(), grid[-2], 0.0]


def teacher_calls(grid: Sequence[float], solver: str, substeps: int, calls: int) -> int:
    """Denoiser calls of `solve_teacher` with a solver of `calls` calls per step (0 when exact)."""
    if solver == EXACT:
        return 0
    return (len(grid) - 2) * substeps * calls + 1
