"""Automated schedule search: the best few-step plan for a denoiser, a solver (or a rule per step) and
an NFE budget (the paper's stated future work, section 6).

    teacher = solve_teacher(model, x, candidate_grid(schedule, 40), options={})
    result = search(model, teacher, solver="dpmpp_2m", nfe=5)
    result = search(model, teacher, solver="auto", nfe=5)   # every deterministic one-call rule, per step
    result.plan                       # a Plan; result.plan.discretization is the Searched record

It sees only a denoiser `D(x, sigma, **options)`, never a network:

1. the teacher: the ODE solution of the starting latents at every level of a candidate grid on the
   model's noise schedule (solvers/search/teacher.py);
2. "dp": the sigmas (and, with several rules, the rule of each step: solvers/search/menu.py) by
   dynamic programming over that grid with a free terminal level, under the local (GITS) or global
   (OSS) cost model, with an optional per-step on/off bit of a denoiser option (solvers/search/dp.py);
3. "grid", "polish": refinement of that result on the exact objective, the RMSE of the plan's output
   to the teacher's x(0) over all samples (solvers/search/refine.py);
4. "shift": each step's decoupled evaluation level (solvers/eval_shift.py) on the same objective.
   A single solver runs dp, grid, polish by default (`default_stages`), several rules all four.

`estimate` counts the denoiser calls beforehand; `baselines` are the presets to hold the result against
and DMN, a zero-evaluation baseline (solvers/search/dmn.py), `whole_menu` every fixed plan of every
deterministic solver, `compare` scores them all on held-out samples. `python -m solvers.search` is the
command.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

import safeio
from schedule import NoiseSchedule
from solvers.search.compare import Row, baselines, best_fixed, compare, dmn_plan, gain, presets_at, whole_menu
from solvers.search.dmn import dmn_sigmas
from solvers.search.dp import Lattice, brute_force, dynamic_program
from solvers.search.menu import AUTO, deterministic, label, rules
from solvers.search.problem import Cost, Counted, Path, Problem, Result, Stage, rmse
from solvers.search.record import Searched
from solvers.search.refine import grid_descent, polish, refine_calls, tune_shifts
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
    "AUTO",
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
    "best_fixed",
    "brute_force",
    "candidate_grid",
    "check_budget",
    "compare",
    "default_stages",
    "deterministic",
    "dmn_plan",
    "dmn_sigmas",
    "dynamic_program",
    "estimate",
    "gain",
    "has_exact_solution",
    "presets_at",
    "rmse",
    "rules",
    "search",
    "solve_teacher",
    "states_problem",
    "whole_menu",
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


def default_stages(solver: str) -> tuple[str, ...]:
    """dp, grid, polish for one solver (as the first search did); all the stages for several rules."""
    return STAGES if len(rules(solver)) > 1 else tuple(stage for stage in STAGES if stage != "shift")


def _check(solver: str, nfe: int, cost: str, stages: Sequence[str]) -> tuple[str, ...]:
    """The rules of `solver`, once every setting is checked."""
    menu = rules(solver)
    if nfe < 1:
        raise ValueError(f"the NFE budget must be 1 or more, got {nfe}")
    if cost not in COSTS:
        raise ValueError(f"unknown cost model {cost!r}; choose from {', '.join(COSTS)}")
    Searched.check_stages(tuple(stages))
    return menu


def check_budget(levels: int, solver: str, nfe: int) -> None:
    """Refuse, before the teacher, an NFE budget that no path on a grid of `levels` positive levels spends
    exactly: a path takes steps of its rules' calls into positive levels (at most levels - 1 of them,
    the first level being the start), then maybe one step into 0, which costs one call (`Lattice`)."""
    calls = sorted({SOLVERS[rule].calls for rule in rules(solver)})
    fewest = {0: 0}  # calls spent -> the fewest steps into positive levels that spend them exactly
    for n in range(1, nfe + 1):
        counts = [fewest[n - c] + 1 for c in calls if n - c in fewest]
        if counts:
            fewest[n] = min(counts)
    ways = [fewest[n] for n in (nfe, nfe - 1) if n in fewest]  # ending above 0, or with a step into 0
    if not ways:
        spent = max(n for n in range(1, nfe) if n in fewest or n - 1 in fewest)
        each = " or ".join(map(str, calls))
        raise safeio.InputError(
            "no plan of {solver} ({each} calls a step, one for a last step into 0) spends exactly {nfe} "
            "NFE; pick another {steps}, e.g. {spent}",
            solver=solver,
            each=each,
            nfe=nfe,
            spent=spent,
        )
    if min(ways) + 1 > levels:
        raise safeio.InputError(
            "no plan on a grid of {levels} levels spends exactly {nfe} NFE with {solver}; pass {grid} "
            "{least} or more, or fewer {steps}",
            levels=levels,
            nfe=nfe,
            solver=solver,
            least=min(ways) + 1,
        )


def estimate(
    grid: Sequence[float],
    solver: str,
    nfe: int,
    *,
    cost: str = "global",
    stages: Sequence[str] | None = None,
    bit: bool = False,
    teacher: str = EXACT,
    substeps: int = 0,
) -> Estimate:
    """The denoiser calls `solve_teacher` and `search` will make with these settings."""
    stages = default_stages(solver) if stages is None else stages
    menu = _check(solver, nfe, cost, stages)
    lattice = Lattice(tuple(grid), menu, nfe, (False, True) if bit else (False,))
    calls = 0 if teacher == EXACT else SOLVERS[teacher].calls
    alternatives = max(sum(SOLVERS[o].calls == SOLVERS[r].calls for o in menu) - 1 for r in menu)
    return Estimate(
        teacher_calls(grid, teacher, substeps, calls),
        lattice.dp_calls(cost) + nfe,  # and one run of its result
        refine_calls(nfe, nfe, bit, stages, alternatives),
    )


def search(
    denoise: Callable[..., Tensor],
    teacher: Teacher,
    *,
    solver: str,
    nfe: int,
    cost: str = "global",
    stages: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    bit: tuple[str, Any] | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    model: str = "",
    progress: Callable[[int], Any] | None = None,
) -> Result:
    """The best plan spending exactly `nfe` denoiser calls from the teacher's starting latents, with
    `solver` on every step, or, for a list `a,b,...` or `auto` (every deterministic one-call rule), a rule
    chosen per step. `stages` default to `default_stages(solver)`.

    `options` go to the denoiser on every step (guidance, ...); `bit` = (option, value) searches, per
    step, that option at `value` or None (off). `decode` maps final states before they are compared with
    the teacher's x(0). `seed` and `model` only go into the record. `progress(n)` hears of every denoiser
    call on n samples.
    """
    stages = default_stages(solver) if stages is None else tuple(stages)
    menu = _check(solver, nfe, cost, stages)
    counted = Counted(denoise, progress)
    problem = Problem(counted, teacher, solver, nfe, dict(options or {}), bit, decode)
    done: list[Stage] = []
    shifts = None

    def finish(name: str, sigmas: Sequence[float], path: Path, value: Cost) -> None:
        plan = problem.plan(sigmas, path.bits, path.rules, shifts, f"{name}-{label(solver)}-{nfe}")
        done.append(Stage(name, plan, value.total, counted.calls - sum(stage.calls for stage in done)))

    path, _ = dynamic_program(problem, cost)
    value = problem.run(problem.sigmas(path), path.bits, path.rules)
    finish("dp", problem.sigmas(path), path, value)
    if "grid" in stages:
        path, value = grid_descent(problem, path, value)
        finish("grid", problem.sigmas(path), path, value)
    sigmas = problem.sigmas(path)
    if "polish" in stages:
        sigmas, value = polish(problem, sigmas, path.bits, path.rules, value)
        finish("polish", sigmas, path, value)
    if "shift" in stages:
        shifts, value = tune_shifts(problem, sigmas, path.bits, path.rules, value)
        finish("shift", sigmas, path, value)
    record = Searched(
        N=len(path.bits),
        solver=solver,
        nfe=nfe,
        cost=cost,
        grid=len(teacher.grid) - 1,
        samples=teacher.states.shape[1],
        seed=seed,
        stages=stages,
        teacher=teacher.method,
        substeps=teacher.substeps,
        option=None if bit is None else bit[0],
        decoded=decode is not None,
        model=model,
        rules=menu if len(menu) > 1 else (),
    )
    plan = problem.plan(sigmas, path.bits, path.rules, shifts, f"searched-{label(solver)}-{nfe}", record)
    return Result(plan, tuple(done))
