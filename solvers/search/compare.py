"""What a searched plan is compared with: the presets of the same solver at the same NFE, and DMN, then
every other deterministic solver's (the whole menu), all scored on held-out samples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from itertools import pairwise
from typing import Any

from schedule import NoiseSchedule
from solvers.plan import Plan
from solvers.presets import BASELINE_DISCRETIZATIONS, preset
from solvers.search.dmn import dmn_sigmas
from solvers.search.menu import deterministic, rules
from solvers.search.problem import Problem, Result
from solvers.table import SOLVERS


def presets_at(solver: str, nfe: int, schedule: NoiseSchedule, options: Mapping[str, Any]) -> list[Plan]:
    """The paper's discretization and every baseline one with `solver` on every step, each at the step
    count that spends exactly `nfe` calls (a kind that cannot, or has no plan at that count, is left
    out), `options` on every step."""
    entry, plans = SOLVERS[solver], []
    for kind in ("paper", *BASELINE_DISCRETIZATIONS):
        for steps in range(1, nfe + 1):
            name = f"paper-{steps}" if kind == "paper" else f"{kind}-{entry.short}-{steps}"
            try:
                plan = preset(name, schedule=schedule)
            except ValueError:  # e.g. a kind whose placement needs more steps, or another noise table
                continue
            if plan.solver != (solver,) * steps:
                plan = plan.replace(solver=solver, name=f"{name}+solver={solver}")
            plan = plan.replace(**options)
            if plan.nfe == nfe:
                plans.append(plan)
                break
    return plans


def dmn_plan(solver: str, nfe: int, schedule: NoiseSchedule, options: Mapping[str, Any]) -> Plan | None:
    """DMN's discretization for `solver` at `nfe` calls, x_N kept at sigma_min; None when no step count
    spends exactly `nfe`, or when its optimiser collapsed steps onto one level."""
    entry = SOLVERS[solver]
    if nfe % entry.calls:
        return None
    steps = nfe // entry.calls
    sigmas = _dmn(schedule, steps, min(entry.order, 3))
    if any(a <= b for a, b in pairwise(sigmas)):  # L-BFGS can collapse the steps (9 steps, order 3)
        return None
    return Plan(sigmas, solver, final="keep", name=f"dmn-{entry.short}-{steps}", **options)


@cache
def _dmn(schedule: NoiseSchedule, steps: int, order: int) -> tuple[float, ...]:
    """`dmn_sigmas`, solved once for every solver of that order (the whole menu asks for 15)."""
    return tuple(dmn_sigmas(schedule, steps, order=order).tolist())


@dataclass(frozen=True)
class Row:
    """One plan of the comparison: `kind` stage, preset or dmn (of a rule searched), or menu (a fixed plan
    of another solver); its cost on the search samples (stages only) and on the held-out ones (nan until
    scored)."""

    kind: str
    plan: Plan
    search: float | None
    held_out: float


def baselines(solver: str, nfe: int, schedule: NoiseSchedule, options: Mapping[str, Any]) -> list[Row]:
    """What a search of `solver` at `nfe` calls is held against: the presets and DMN, not scored yet."""
    rows = [Row("preset", plan, None, math.nan) for plan in presets_at(solver, nfe, schedule, options)]
    dmn = dmn_plan(solver, nfe, schedule, options)
    return rows + ([Row("dmn", dmn, None, math.nan)] if dmn is not None else [])


def whole_menu(solver: str, nfe: int, schedule: NoiseSchedule, options: Mapping[str, Any]) -> list[Row]:
    """The `baselines` of every rule a search of `solver` (a name, a list, `auto`) chose from, then those
    of every other deterministic solver as kind "menu": every fixed plan at `nfe` calls."""
    searched = rules(solver)
    others = [rule for rule in deterministic() if rule not in searched]
    rows = [row for rule in searched for row in baselines(rule, nfe, schedule, options)]
    return rows + [
        replace(row, kind="menu") for rule in others for row in baselines(rule, nfe, schedule, options)
    ]


def best_fixed(rows: Sequence[Row]) -> Row:
    """The fixed plan (preset, DMN or another solver's) of lowest held-out RMSE."""
    return min((row for row in rows if row.kind != "stage"), key=lambda row: row.held_out)


def compare(result: Result, held_out: Problem, against: Sequence[Row]) -> list[Row]:
    """The searched plan after each stage, then `against` (the `baselines`), each scored on the held-out
    samples (`held_out`: a Problem whose teacher holds them)."""
    rows = [Row("stage", stage.plan, stage.cost, math.nan) for stage in result.stages] + list(against)
    return [replace(row, held_out=held_out.score(row.plan)) for row in rows]


def gain(rows: Sequence[Row]) -> float:
    """How much lower the final stage's held-out RMSE is than the best preset's (0.25: 25% lower)."""
    best = min(row.held_out for row in rows if row.kind == "preset")
    return 1 - [row for row in rows if row.kind == "stage"][-1].held_out / best
