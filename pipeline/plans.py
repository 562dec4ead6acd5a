"""The Plan of a run: a preset, a plan file or a replayed image's plan, then overrides of its parts.

Every hyperparameter of the paper is a knob here (and a flag of the commands): the discretization
and its knobs (N, stop, p1, p2 of eq. 18-19; Karras' rho), the solver, the guidance scale, FreeU's
b1, b2, s1, s2, its version and its step window, and the final policy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.models import FAMILIES, Family, owner
from schedule import DiscreteSchedule, NoiseSchedule
from schedule.discretizations import knobs as knob_names
from solvers import OPTIONS, Plan, PlanError, preset
from solvers.presets import PAPER_RECIPES, discretization_for

DEFAULT_STEPS = FAMILIES["sd1"].default_steps  # the README's command: the paper's 5-step preset


def check_plan(plan: Plan) -> Plan:
    """Refuse a plan with an option nobody declared (solvers/options.py: the Plan checked the values of
    the declared ones), which no part of the model takes. Returns the plan."""
    for name in plan.options:
        if name not in OPTIONS:
            known = ", ".join(OPTIONS)
            raise PlanError(
                f"the plan has an option {name!r} that no part of the model takes; known: {known}"
            )
    return plan


def read_plan_file(path: str | os.PathLike) -> Plan:
    """A Plan saved as JSON (`plan.to_json()`), checked like a plan built from flags."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise PlanError(f"cannot read plan file {path}: {_reason(err)}") from None
    try:
        return check_plan(Plan.from_json(text))
    except PlanError as err:
        raise PlanError(f"{path} is not a valid plan: {err}") from None


def build_plan(
    steps: int | None = None,
    preset_name: str | None = None,
    base: Plan | None = None,
    *,
    solver: str | None = None,
    discretization: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    final: str | None = None,
    schedule: NoiseSchedule | None = None,
    family: Family | None = None,
    **option_flags: Any,
) -> Plan:
    """The Plan of a run: `base` (a plan file's or a replayed image's), else the preset `preset_name`,
    else the paper's preset for `steps` (default: the family's, 5 for SD 1.x); then each override
    that is not None replaces its part on every step.

    - `family` (default SD 1.x's rows, unchecked) picks the paper's tuned row for `steps` (SDXL:
      paper-xl-6 and paper-xl-8), else the paper's rule; a tuned row of another family is refused,
      named directly, as `steps`, or as the preset a plan file or replay was made from.

    - `discretization` (a kind: paper, karras, ...) places the plan's step count anew; `knobs` change
      the discretization's knobs (stop, p1, p2, rho); a new `stop` also returns the Karras grid and
      stop index of eq. (19) to the paper's rule. Sigmas are recomputed only when one of them is given,
      so a plan file or a replay keeps its exact sigmas.
    - `option_flags`: the values of the per-step options' flags by dest (solvers/options.py), e.g.
      guidance=5.5; freeu=False (off), True (the paper's values) or (b1, b2, s1, s2), with
      freeu_version and freeu_steps (a window such as "2-4,6"): see solvers/freeu.py.
    - `schedule` is the model's noise schedule sigma(t) the sigmas are placed on (default SD's).

    The plan's name records the overrides (each option says how; guidance not).
    """
    schedule = DiscreteSchedule.sd() if schedule is None else schedule
    if sum(x is not None for x in (base, preset_name)) + (steps is not None and preset_name != "paper") > 1:
        raise ValueError("give only one of --steps, --preset and --plan (or --preset paper --steps N)")
    rows = (family or FAMILIES["sd1"]).rows
    model = (family or FAMILIES["sd1"]).kind  # discretizations with a model table (AYS) take its own
    if base is None:
        if preset_name in (None, "paper"):
            n = (family or FAMILIES["sd1"]).default_steps if steps is None else steps
            preset_name = rows.get(n, f"paper-{n}")
        _refuse_other_family(preset_name, family, f"--preset {preset_name}")
        base = preset(preset_name, schedule=schedule, model=model)
    else:
        made_from = base.name.split("+")[0]
        _refuse_other_family(made_from, family, f"the plan {base.name} (made from {made_from})")
    changes: list[str] = []
    recipe = base.discretization
    if discretization is not None:
        tuned = rows.get(base.steps) if discretization == "paper" else None
        recipe = (
            PAPER_RECIPES[tuned].discretization
            if tuned
            else discretization_for(discretization, base.steps, model)
        )
        changes.append(f"discretization={discretization}")
    if knobs:
        recipe = _turn_knobs(recipe, dict(knobs))
        changes += [
            f"{name}={value}" if isinstance(value, str) else f"{name}={value:g}"
            for name, value in knobs.items()
        ]
    sigmas = base.sigmas if recipe is base.discretization else recipe.sigmas(schedule)
    parts: dict[str, Any] = {"sigmas": sigmas, "discretization": recipe}
    if solver is not None:
        parts["solver"] = solver
        changes.append(f"solver={solver}")
    placed = base.replace(sigmas=sigmas, discretization=recipe)  # what sigma-based options read
    for option in OPTIONS.values():
        given = {dest: option_flags.pop(dest, None) for dest in option.dests}
        if any(value is not None for value in given.values()):
            column, text = option.overridden(placed, given)
            if column is not None:
                parts[option.name] = column
            changes += [text] if text else []
    if option_flags:
        raise TypeError(f"build_plan() got flags of no option: {', '.join(sorted(option_flags))}")
    if final is not None:
        parts["final"] = final
        changes.append(f"final={final}")
    parts["name"] = "+".join([base.name, *changes])
    return check_plan(base.replace(**parts))


def _refuse_other_family(preset_name: str, family: Family | None, what: str) -> None:
    """A tuned row of the paper is only run on the family it was tuned for (None: not known yet)."""
    tuned_for = owner(preset_name)
    if family is None or tuned_for is None or tuned_for is family:
        return
    rows = ", ".join(f"{name} (--steps {n})" for n, name in family.rows.items())
    raise PlanError(
        f"{what} is the paper's row for {tuned_for.label} ({tuned_for.size} px) but the weights are "
        f"{family.label}; its rows are {rows}, or pick a baseline such as karras-2m-20"
    )


def _turn_knobs(recipe: Any, knobs: dict[str, Any]) -> Any:
    flags = ", ".join(f"--{name}" for name in knobs)
    if recipe is None:
        raise ValueError(
            f"{flags} change a discretization's knobs, but this plan's sigmas were given as a list; "
            "add --discretization KIND to place them anew"
        )
    valid = knob_names(recipe.kind)
    unknown = [name for name in knobs if name not in valid]
    if unknown:
        raise ValueError(
            f"--{unknown[0]} is not a knob of the {recipe.kind} discretization (it has "
            f"{', '.join(valid) or 'none'}); pick another with --discretization"
        )
    if recipe.kind == "paper" and "stop" in knobs:
        knobs = {"grid": None, "index": None, **knobs}
    try:
        return dataclasses.replace(recipe, **knobs)
    except ValueError as err:
        raise ValueError(f"{flags}: {err}") from None


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or type(err).__name__
