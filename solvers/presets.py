"""Named Plans: the paper's tuned samplers and the baselines it compares against.

- `paper-5`, `paper-6`, `paper-8` (SD 1.5, 512 px) and `paper-xl-8`, `paper-xl-6` (SDXL, 1024 px):
  the recipe table of docs/recipe.md section 3, as the authors' code runs it.
- `paper-N` for other N: the paper's rule (see `paper_rule`).
- Baselines `{discretization}-{solver}-{N}` ending at sigma = 0 like k-diffusion and diffusers:
  every discretization of schedule.DISCRETIZATIONS but the paper's, with its default knobs (karras:
  rho 7); solver by its short name in the solver table (euler | heun | 1s | 2s | 2m | 3m | ...).
  `karras-2m-20` is the paper's "Original DPM++2M(20)"; `*-3m-N` is the published DPM-Solver++(3M).

Discretizations that depend on the model (AYS's table) take its kind: "sd1" (default) or "sdxl".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schedule import DISCRETIZATIONS, DiscreteSchedule, Discretization, NoiseSchedule, Paper, discretization
from schedule.discretizations import knobs as knob_names
from solvers.guidance import DEFAULT_GUIDANCE
from solvers.plan import Plan
from solvers.table import SOLVERS, by_short

# FreeU as the paper runs it on SD 1.5 (b1, b2, s1, s2 of its section 4; official channel placement,
# v1), and on the authors' last SDXL step: the v1 formula too, as their free_lunch_utils.py has no v2
# (docs/recipe.md section 8.1; the same four numbers are ComfyUI's FreeU_V2 defaults, hence the
# confusion). Written as the per-step option model.FreeU reads.
PAPER_FREEU = {"b1": 1.1, "b2": 1.1, "s1": 0.9, "s2": 0.2, "version": 1, "placement": "channels"}
XL_FREEU_LAST = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2, "version": 1, "placement": "channels"}

BASELINE_DISCRETIZATIONS = tuple(kind for kind in DISCRETIZATIONS if kind != "paper")
DEFAULT_MODEL = "sd1"


def window(steps: str, setting: Any, n: int) -> tuple[Any, ...]:
    """`setting` on the steps that `steps` names (1-based, e.g. "2-4,6"), None on the others."""
    chosen = set()
    for part in steps.split(","):
        first, dash, last = part.strip().partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise ValueError(f"step window {steps!r} is not a list of steps and ranges such as 2-4,6")
        low, high = int(first), int(last) if dash else int(first)
        if not 1 <= low <= high <= n:
            raise ValueError(
                f"step window {steps!r} names steps outside 1-{n} (or a range that runs backwards)"
            )
        chosen.update(range(low, high + 1))
    return tuple(setting if i + 1 in chosen else None for i in range(n))


@dataclass(frozen=True)
class Recipe:
    """A row of the paper's recipe table: the discretization of eq. (18)-(19), then what runs on each
    step: the solver and the FreeU setting (one value for every step, or one per step)."""

    discretization: Paper
    solver: str | tuple[str, ...]
    freeu: Mapping | tuple[Mapping | None, ...] | None

    def plan(self, name: str, guidance: float, schedule: NoiseSchedule) -> Plan:
        d = self.discretization
        return Plan(d.sigmas(schedule), self.solver, "keep", name, d, guidance=guidance, freeu=self.freeu)


PAPER_RECIPES = {
    "paper-5": Recipe(Paper(N=5, stop=2, p2=5), "dpmpp_1s", PAPER_FREEU),
    # The tuned 6-step row reads sigma_stop off the 5-step row's grid: point 6 of 8, not the rule's 7.
    "paper-6": Recipe(Paper(N=6, stop=1, p2=5, index=6), "dpmpp_1s", PAPER_FREEU),
    "paper-8": Recipe(Paper(N=8, stop=3, p2=7), "dpmpp_2m", None),
    "paper-xl-8": Recipe(Paper(N=8, stop=3, p2=12, index=10), "dpmpp_2m", None),
    # Authors' XL code: 4 x DPM++1S then 2 x Euler; FreeU from the 2nd step, off at the 5th,
    # (1.3, 1.4, 0.9, 0.2) at the last.
    "paper-xl-6": Recipe(
        Paper(N=6, stop=1, p2=5, index=6),
        ("dpmpp_1s",) * 4 + ("euler",) * 2,
        tuple(
            a or b for a, b in zip(window("2-4", PAPER_FREEU, 6), window("6", XL_FREEU_LAST, 6), strict=True)
        ),
    ),
}


def paper_rule(steps: int) -> Recipe:
    """The paper's rule for a step count it did not tune.

    stop = 2, p2 = 5 with DPM++1S and FreeU on every step up to 6 steps; stop = 3, p2 = 7 with
    DPM++2M and no FreeU from 7 steps on; the Karras grid and stop index as eq. (19) reads in the
    authors' code (grid N + stop + 1, index N + 1). For N = 5 and 8 this is the tuned row.
    """
    if steps <= 6:
        return Recipe(Paper(N=steps, stop=2, p2=5), "dpmpp_1s", PAPER_FREEU)
    return Recipe(Paper(N=steps, stop=3, p2=7), "dpmpp_2m", None)


def paper_recipe(steps: int) -> Recipe:
    """The tuned SD 1.5 row for `steps` steps where there is one, else the rule's."""
    return PAPER_RECIPES.get(f"paper-{steps}") or paper_rule(steps)


def discretization_for(kind: str, steps: int, model: str = DEFAULT_MODEL) -> Discretization:
    """A named discretization for `steps` steps as the presets use it: "paper" is the paper's tuned
    row or rule; the baselines have their default knobs, and those with a `model` knob (AYS) the
    table of `model`, the model kind ("sd1", "sdxl")."""
    if kind == "paper":
        return paper_recipe(steps).discretization
    if kind in DISCRETIZATIONS and "model" in knob_names(kind):
        return discretization(kind, steps, model=model)
    return discretization(kind, steps)


def preset_names() -> list[str]:
    """The valid names, with the baselines as one pattern."""
    shorts = "|".join(s.short for s in SOLVERS.values())
    pattern = f"{{{'|'.join(BASELINE_DISCRETIZATIONS)}}}-{{{shorts}}}-N (e.g. karras-2m-20)"
    return [*PAPER_RECIPES, "paper-N", pattern]


def preset(
    name: str,
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    schedule: NoiseSchedule | None = None,
    model: str = DEFAULT_MODEL,
) -> Plan:
    """The named Plan. `preset("paper", steps=N)` is `preset(f"paper-{N}")`.

    `schedule` is the model's noise schedule sigma(t) (default: SD's) and `model` its kind (for AYS's
    table); guidance is the same on every step.
    """
    schedule = DiscreteSchedule.sd() if schedule is None else schedule
    if name == "paper" and steps is not None:
        name = f"paper-{steps}"
    elif steps is not None:
        raise ValueError(f"steps= only goes with preset 'paper'; {name!r} already names its step count")
    if name in PAPER_RECIPES:
        return PAPER_RECIPES[name].plan(name, guidance, schedule)
    if m := re.fullmatch(r"paper-(\d+)", name):
        return paper_rule(_steps(m.group(1), name)).plan(name, guidance, schedule)
    m = re.fullmatch(rf"({'|'.join(BASELINE_DISCRETIZATIONS)})-(\w+)-(\d+)", name)
    if m and any(s.short == m.group(2) for s in SOLVERS.values()):
        d = discretization_for(m.group(1), _steps(m.group(3), name), model)
        return Plan(d.sigmas(schedule), by_short(m.group(2)).name, "keep", name, d, guidance=guidance)
    raise ValueError(f"unknown preset {name!r}; valid: {', '.join(preset_names())}")


def _steps(text: str, name: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(f"preset {name!r} asks for {n} steps; use 1 or more")
    return n
