"""Automated schedule search: the best few-step plan for a denoiser, a solver and an NFE budget (the
paper's stated future work, section 6).

    teacher = solve_teacher(model, x, candidate_grid(schedule, 40), options={})
    result = search(model, teacher, solver="dpmpp_2m", nfe=5)
    result.plan                       # a Plan; result.plan.discretization is the Searched record

It sees only a denoiser `D(x, sigma, **options)`, never a network:

1. the teacher: the ODE solution of the starting latents at every level of a candidate grid on the
   model's noise schedule (solvers/search/teacher.py);
2. "dp": the sigmas by dynamic programming over that grid with a free terminal level, under the
   local (GITS) or global (OSS) cost model, with an optional per-step on/off bit of a denoiser option
   (solvers/search/dp.py);
3. "grid", "polish": refinement of that result on the exact objective, the RMSE of the plan's output
   to the teacher's x(0) over all samples (solvers/search/refine.py).

`estimate` counts the denoiser calls beforehand; `baselines` are the presets to hold the result against
and DMN, a zero-evaluation baseline (solvers/search/dmn.py), `compare` scores them all on held-out
samples. `python -m solvers.search` is the command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

import safeio
from schedule import NoiseSchedule
from solvers.search.compare import Row, baselines, compare, dmn_plan, gain, presets_at
from solvers.search.dmn import dmn_sigmas
from solvers.search.dp import Lattice, brute_force, dynamic_program
from solvers.search.problem import Cost, Counted, Path, Problem, Result, Stage, rmse
from solvers.search.record import Searched
from solvers.search.refine import grid_descent, polish, refine_calls
from solvers.search.state import State, advance
from solvers.search.teacher import (
    EXACT,
    Teacher,
    candidate_grid,
    has_exact_solution,
    solve_teacher,
    states_problem,
    teacher_calls,
)
from solvers.table import SOLVERS

COSTS, STAGES = Searched.COSTS, Searched.STAGES

__all__ = [
    "COSTS",
    "EXACT",
    "STAGES",
    "Cost",
    "Counted",
    "Estimate",
    "Lattice",
    "Path",
    "Problem",
    "Result",
    "Row",
    "Searched",
    "Stage",
    "State",
    "Subject",
    "Teacher",
    "advance",
    "baselines",
    "brute_force",
    "candidate_grid",
    "check_budget",
    "compare",
    "dmn_plan",
    "dmn_sigmas",
    "dynamic_program",
    "estimate",
    "gain",
    "has_exact_solution",
    "presets_at",
    "rmse",
    "search",
    "solve_teacher",
    "states_problem",
]


@dataclass(frozen=True)
class Subject:
    """A model as the command searches it (solvers/search/__main__.py; pipeline/search.py makes the one of
    real weights): its noise schedule and name, a denoiser over the search samples and one over the
    held-out samples, and `teach(grid, options, solver, substeps, progress)`, the teacher of the search
    samples followed by the held-out ones (None on the ranks that only help with it)."""

    schedule: NoiseSchedule
    name: str
    search: Callable[..., Tensor]
    held_out: Callable[..., Tensor]
    teach: Callable[..., Teacher | None]
    exact: bool = False  # whether it has an exact solution to teach with
    decode: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class Estimate:
    """Denoiser calls of a search, each one call on all its samples: the teacher's, the DP's (with one
    run of its result), and at most the refinement's."""

    teacher: int
    dp: int
    refine: int


def _check(solver: str, nfe: int, cost: str, stages: Sequence[str]) -> None:
    if solver not in SOLVERS:
        raise ValueError(safeio.unknown("solver", solver, SOLVERS))
    if SOLVERS[solver].stochastic:
        raise ValueError(f"{solver} adds noise at every step; the search compares deterministic paths only")
    if nfe < 1:
        raise ValueError(f"the NFE budget must be 1 or more, got {nfe}")
    if cost not in COSTS:
        raise ValueError(f"unknown cost model {cost!r}; choose from {', '.join(COSTS)}")
    Searched.check_stages(tuple(stages))


def check_budget(levels: int, solver: str, nfe: int) -> None:
    """Refuse, before the teacher, an NFE budget that no path on a grid of `levels` positive levels spends
    exactly: a path takes steps of the solver's calls into positive levels (at most levels - 1 of them,
    the first level being the start), then maybe one step into 0, which costs one call (`Lattice`)."""
    calls = SOLVERS[solver].calls
    ways = [n // calls for n in (nfe, nfe - 1) if n >= 0 and n % calls == 0]  # ending above 0, or at 0
    if not ways:
        raise ValueError(
            f"no plan of {solver} ({calls} calls a step, one for a last step into 0) spends exactly {nfe} "
            f"NFE; pick another --steps, e.g. {nfe - (nfe - 1) % calls}"
        )
    if min(ways) + 1 > levels:
        raise ValueError(
            f"no plan on a grid of {levels} levels spends exactly {nfe} NFE with {solver}; pass --grid "
            f"{min(ways) + 1} or more, or fewer --steps"
        )


def estimate(
    grid: Sequence[float],
    solver: str,
    nfe: int,
    *,
    cost: str = "global",
    stages: Sequence[str] = STAGES,
    bit: bool = False,
    teacher: str = EXACT,
    substeps: int = 0,
) -> Estimate:
    """The denoiser calls `solve_teacher` and `search` will make with these settings."""
    _check(solver, nfe, cost, stages)
    lattice = Lattice(tuple(grid), solver, nfe, (False, True) if bit else (False,))
    calls = 0 if teacher == EXACT else SOLVERS[teacher].calls
    return Estimate(
        teacher_calls(grid, teacher, substeps, calls),
        lattice.dp_calls(cost) + nfe,  # and one run of its result
        refine_calls(nfe, nfe, bit, stages),
    )


def search(
    denoise: Callable[..., Tensor],
    teacher: Teacher,
    *,
    solver: str,
    nfe: int,
    cost: str = "global",
    stages: Sequence[str] = STAGES,
    options: Mapping[str, Any] | None = None,
    bit: tuple[str, Any] | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    model: str = "",
    progress: Callable[[int], Any] | None = None,
) -> Result:
    """The best plan of `solver` spending exactly `nfe` denoiser calls from the teacher's starting latents.

    `options` go to the denoiser on every step (guidance, ...); `bit` = (option, value) searches, per
    step, that option at `value` or None (off). `decode` maps final states before they are compared with
    the teacher's x(0). `seed` and `model` only go into the record. `progress(n)` hears of every denoiser
    call on n samples.
    """
    _check(solver, nfe, cost, stages)
    counted = Counted(denoise, progress)
    problem = Problem(counted, teacher, solver, nfe, dict(options or {}), bit, decode)
    done: list[Stage] = []

    def finish(name: str, sigmas: Sequence[float], bits: Sequence[bool], value: Cost) -> None:
        plan = problem.plan(sigmas, bits, f"{name}-{SOLVERS[solver].short}-{nfe}")
        done.append(Stage(name, plan, value.total, counted.calls - sum(stage.calls for stage in done)))

    path, _ = dynamic_program(problem, cost)
    value = problem.run(problem.sigmas(path), path.bits)
    finish("dp", problem.sigmas(path), path.bits, value)
    if "grid" in stages:
        path, value = grid_descent(problem, path, value)
        finish("grid", problem.sigmas(path), path.bits, value)
    sigmas = problem.sigmas(path)
    if "polish" in stages:
        sigmas, value = polish(problem, sigmas, path.bits, value)
        finish("polish", sigmas, path.bits, value)
    record = Searched(
        N=len(path.bits),
        solver=solver,
        nfe=nfe,
        cost=cost,
        grid=len(teacher.grid) - 1,
        samples=teacher.states.shape[1],
        seed=seed,
        stages=tuple(stages),
        teacher=teacher.method,
        substeps=teacher.substeps,
        option=None if bit is None else bit[0],
        decoded=decode is not None,
        model=model,
    )
    plan = problem.plan(sigmas, path.bits, f"searched-{SOLVERS[solver].short}-{nfe}", record)
    return Result(plan, tuple(done))
