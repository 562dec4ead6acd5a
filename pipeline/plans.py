"""The Plan of a run: a preset, a plan file or a replayed image's plan, then overrides of its parts.

Every hyperparameter of the paper is a knob here (and a flag of the commands): the discretization
and its knobs (N, stop, p1, p2 of eq. 18-19; Karras' rho), the solver, the guidance scale, FreeU's
b1, b2, s1, s2, its version and its step window, and the final policy.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import safeio
from pipeline.models import owner
from schedule import DiscreteSchedule, NoiseSchedule
from schedule.discretizations import knobs as knob_names
from solvers import OPTIONS, Plan, PlanError, preset
from solvers.presets import PAPER_RECIPES, discretization_for
from solvers.search.record import Searched
from weights import FAMILIES, Family

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


def checked_record(plan: Plan, where: object, schedule: NoiseSchedule | None = None) -> Plan:
    """`plan` as read from `where`, without its discretization record (and with a one-line warning)
    when the record does not reproduce its sigmas on `schedule` (SD's by default), so no PNG names a
    schedule its sigmas do not follow. A search's record places nothing: its N and NFE must match."""
    record = plan.discretization
    if record is None:
        return plan
    problem = None
    if plan.steps != record.N:
        problem = f"it is for {record.N} steps, the plan has {plan.steps}"
    elif isinstance(record, Searched):
        problem = None if record.nfe == plan.nfe else f"it spends {record.nfe} NFE, the plan {plan.nfe}"
    else:
        try:
            placed = record.sigmas(schedule or DiscreteSchedule.sd()).tolist()
        except ValueError as err:
            placed, problem = None, f"it places no sigmas ({err})"
        # rel 1e-4: a file's own float32 noise table moves sigmas by ~1e-7; another schedule by far more
        if placed is not None and (
            len(placed) != len(plan.sigmas)
            or not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(placed, plan.sigmas, strict=True))
        ):
            problem = "the sigmas it places are not the plan's"
    if problem is None:
        return plan
    warnings.warn(
        f"{where}: dropping the plan's discretization record ({record.describe()}): {problem}; the "
        "plan's own sigmas are used",
        stacklevel=2,
    )
    return plan.replace(discretization=None)


def read_plan_file(path: str | os.PathLike) -> Plan:
    """A Plan saved as JSON (`plan.to_json()`), checked like a plan built from flags."""
    try:
        text = safeio.read_bytes(path)
    except OSError as err:
        raise PlanError(f"cannot read plan file {path}: {safeio.reason(err)}") from None
    try:
        plan = check_plan(Plan.from_json(text))
    except PlanError as err:
        raise PlanError(f"{path} is not a valid plan: {err}") from None
    return checked_record(plan, f"plan file {path}")


def searched_on_another_model(plan: Plan, model: str) -> str | None:
    """One line for a plan run on a model other than the one its sigmas were searched on (the
    `searched` record's `model`, `model_name` of the weights or an analytic MODULE:CALLABLE); None
    when it was not searched, or on this `model`."""
    record = plan.discretization
    if not isinstance(record, Searched) or not record.model or record.model == model:
        return None
    if ":" in record.model:
        return (
            f"the plan {plan.name} was searched on the analytic denoiser {record.model}, a toy model, not "
            f"on SD: its sigmas fit that model, whatever its guidance ({max(plan.guidance):g}) says"
        )
    return f"the plan {plan.name} was searched on {record.model}, not on {model}: its sigmas fit that model"


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
        raise safeio.InputError("give only one of {steps}, {preset} and {plan} (or {preset} paper {steps} N)")
    tuned = (family or FAMILIES["sd1"]).tuned_presets
    model = (family or FAMILIES["sd1"]).name  # discretizations with a model table (AYS) take its own
    if base is None:
        if preset_name in (None, "paper"):
            n = (family or FAMILIES["sd1"]).default_steps if steps is None else steps
            preset_name = tuned.get(n, f"paper-{n}")
        _refuse_other_family(preset_name, family)
        base = preset(preset_name, schedule=schedule, model=model)
    else:
        made_from = base.name.split("+")[0]
        _refuse_other_family(made_from, family, base.name)
    changes: list[str] = []
    recipe = base.discretization
    if discretization is not None:
        row = tuned.get(base.steps) if discretization == "paper" else None
        recipe = (
            PAPER_RECIPES[row].discretization
            if row
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


class FamilyError(safeio.Worded, PlanError):
    """A row of the paper tuned for one model family, asked of another family's weights."""


def _refuse_other_family(preset_name: str, family: Family | None, plan_name: str | None = None) -> None:
    """A tuned row of the paper is only run on the family it was tuned for (None: not known yet); the
    refusal names the preset, or the plan (`plan_name`) made from it."""
    tuned_for = owner(preset_name)
    if family is None or tuned_for is None or tuned_for is family:
        return
    rows = ", ".join(f"{name} ({n} steps)" for n, name in family.tuned_presets.items())
    raise FamilyError(
        ("{preset} {name}" if plan_name is None else "the plan {plan_name} (made from {name})")
        + " is the paper's row for {label} ({size} px) but the weights are {family}; its rows are "
        "{rows}, or pick a baseline such as karras-2m-20",
        name=preset_name,
        plan_name=plan_name,
        label=tuned_for.label,
        size=tuned_for.size,
        family=family.label,
        rows=rows,
    )


def _turn_knobs(recipe: Any, knobs: dict[str, Any]) -> Any:
    given = ", ".join(f"{{{name}}}" for name in knobs)  # the knobs' inputs, as fields
    if recipe is None:
        raise safeio.InputError(
            given + " change a discretization's knobs, but this plan's sigmas were given as a list; "
            "add {discretization} KIND to place them anew"
        )
    valid = knob_names(recipe.kind)
    unknown = [name for name in knobs if name not in valid]
    if unknown:
        raise safeio.InputError(
            f"{{{unknown[0]}}} is not a knob of the {{kind}} discretization (it has {{valid}}); pick "
            "another with {discretization}",
            kind=recipe.kind,
            valid=", ".join(valid) or "none",
        )
    if recipe.kind == "paper" and "stop" in knobs:
        knobs = {"grid": None, "index": None, **knobs}
    try:
        return dataclasses.replace(recipe, **knobs)
    except ValueError as err:
        raise safeio.InputError(given + ": {problem}", problem=safeio.reason(err)) from None
