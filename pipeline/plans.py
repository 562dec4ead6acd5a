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
from collections.abc import Mapping, Sequence
from typing import Any

import safeio
from model import Denoiser, FreeU
from pipeline.models import FAMILIES, Family, owner
from schedule import DiscreteSchedule, NoiseSchedule
from schedule.discretizations import Searched
from schedule.discretizations import knobs as knob_names
from solvers import Plan, PlanError, preset
from solvers.plan import OPTION_CHECKS
from solvers.presets import PAPER_FREEU, PAPER_RECIPES, discretization_for, window

DEFAULT_STEPS = FAMILIES["sd1"].default_steps  # the README's command: the paper's 5-step preset
# The per-step options the SD denoiser stack understands: guidance (solvers.guided), then the U-Net's.
OPTIONS = {**OPTION_CHECKS, **Denoiser.OPTIONS}


def check_plan(plan: Plan) -> Plan:
    """Refuse a plan whose options the SD denoiser cannot run: unknown names, or values FreeU (the one
    schema of its settings) refuses. Returns the plan."""
    for name, column in plan.options.items():
        if name not in OPTIONS:
            known = ", ".join(OPTIONS)
            raise PlanError(
                f"the plan has an option {name!r} that no part of the model takes; known: {known}"
            )
        for i, value in enumerate(column):
            try:
                OPTIONS[name](value)
            except (ValueError, TypeError) as err:
                raise PlanError(f"{name} of step {i}: {err}") from None
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
        raise PlanError(f"cannot read plan file {path}: {_reason(err)}") from None
    try:
        plan = check_plan(Plan.from_json(text))
    except PlanError as err:
        raise PlanError(f"{path} is not a valid plan: {err}") from None
    return checked_record(plan, f"plan file {path}")


def freeu_option(
    values: Sequence[float] | None = None, version: int = 1, placement: str = "channels"
) -> dict:
    """A FreeU setting as a plan stores it, checked by FreeU; `values` (b1, b2, s1, s2) default to the
    paper's."""
    if values is None:
        values = [PAPER_FREEU[k] for k in ("b1", "b2", "s1", "s2")]
    b1, b2, s1, s2 = values
    return FreeU(b1, b2, s1, s2, version=version, placement=placement).to_dict()


def build_plan(
    steps: int | None = None,
    preset_name: str | None = None,
    base: Plan | None = None,
    *,
    solver: str | None = None,
    discretization: str | None = None,
    knobs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    freeu: bool | Sequence[float] | None = None,
    freeu_version: int | None = None,
    freeu_steps: str | None = None,
    final: str | None = None,
    schedule: NoiseSchedule | None = None,
    family: Family | None = None,
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
    - `freeu`: False is off on every step; True is the paper's values, a sequence (b1, b2, s1, s2)
      those values; `freeu_version` and `freeu_steps` (a window such as "2-4,6") apply to those or,
      without `freeu`, to the plan's own setting.
    - `schedule` is the model's noise schedule sigma(t) the sigmas are placed on (default SD's).

    The plan's name records the overrides except guidance.
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
    if guidance is not None:
        parts["guidance"] = guidance
    setting, text = _freeu(base, freeu, freeu_version, freeu_steps)
    if setting is not None:
        parts["freeu"] = setting
        changes.append(text)
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


def _freeu(
    base: Plan, freeu: bool | Sequence[float] | None, version: int | None, steps: str | None
) -> tuple[tuple | None, str]:
    """The per-step FreeU settings the flags ask for (None: the plan's own) and how the name records them."""
    n = base.steps
    if freeu is False:
        if version is not None or steps is not None:
            raise ValueError("--no-freeu goes with neither --freeu-version nor --freeu-steps")
        return (None,) * n, "no-freeu"
    if freeu is None and version is None and steps is None:
        return None, ""
    if freeu is None:
        own = [f for f in base.freeu if f is not None]
        if not own:
            raise ValueError(
                "this plan has no FreeU setting to change; give its values with --freeu B1,B2,S1,S2"
            )
        if steps is not None and any(f != own[0] for f in own):
            raise ValueError("this plan has several FreeU settings; give the one to window with --freeu")
        changed = {} if version is None else {"version": version}
        per_step = tuple(None if f is None else {**f, **changed} for f in base.freeu)
        if steps is not None:
            per_step = window(steps, {**own[0], **changed}, n)
        label = "freeu" if version is None else f"freeu-v{version}"
    else:
        setting = freeu_option(None if freeu is True else freeu, 1 if version is None else version)
        per_step = (setting,) * n if steps is None else window(steps, setting, n)
        label = "freeu" if freeu is True and version is None else f"freeu={FreeU.from_dict(setting).text()}"
    return per_step, label + ("" if steps is None else f"@{steps}")


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or type(err).__name__
