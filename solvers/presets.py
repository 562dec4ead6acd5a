"""Named Plans: the paper's tuned samplers and the baselines it compares against.

- `paper-5`, `paper-6`, `paper-8` (SD 1.5, 512 px) and `paper-xl-8`, `paper-xl-6` (SDXL, 1024 px):
  the recipe table of reference/paper-recipe.md, as the authors' code runs it.
- `paper-N` for other N: the paper's rule (see `paper_rule`).
- Baselines `{schedule}-{solver}-{N}` ending at sigma = 0 like k-diffusion and diffusers:
  schedule karras (rho 7) | exponential | linspace | ays; solver euler | heun | 1s | 2s | 2m | 3m.
  `karras-2m-20` is the paper's "Original DPM++2M(20)".
"""

from __future__ import annotations

import re

import torch

from schedule import DiscreteSchedule, append_zero, ays, exponential, karras, paper_sigmas, uniform
from solvers.plan import Plan

# FreeU as the paper runs it on SD 1.5 (official channel placement, v1), and the authors' SDXL v2 setting.
PAPER_FREEU = {"b1": 1.1, "b2": 1.1, "s1": 0.9, "s2": 0.2, "version": 1, "placement": "channels"}
XL_FREEU_V2 = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2, "version": 2, "placement": "channels"}

# name: (steps, n_grid, rho_stop, j_stop, solver per step, FreeU per step)
PAPER_ROWS = {
    "paper-5": (5, 8, 5, 6, "dpmpp_1s", PAPER_FREEU),
    "paper-6": (6, 8, 5, 6, "dpmpp_1s", PAPER_FREEU),
    "paper-8": (8, 12, 7, 9, "dpmpp_2m", None),
    "paper-xl-8": (8, 12, 12, 10, "dpmpp_2m", None),
    # Authors' XL code: 4 x DPM++1S then 2 x Euler; FreeU from the 2nd step, off at the 5th,
    # v2 (1.3, 1.4, 0.9, 0.2) at the last.
    "paper-xl-6": (
        6, 8, 5, 6,
        ["dpmpp_1s"] * 4 + ["euler"] * 2,
        [None, PAPER_FREEU, PAPER_FREEU, PAPER_FREEU, None, XL_FREEU_V2],
    ),
}  # fmt: skip

SOLVER_SHORT = {
    "euler": "euler",
    "heun": "heun",
    "1s": "dpmpp_1s",
    "2s": "dpmpp_2s",
    "2m": "dpmpp_2m",
    "3m": "dpmpp_3m",
}
BASELINE_SCHEDULES = ("karras", "exponential", "linspace", "ays")
DEFAULT_GUIDANCE = 7.5


def paper_rule(steps: int) -> tuple[int, int, float, int, str, dict | None]:
    """The paper's rule for a step count it did not tune.

    stop = 2, rho_stop = 5 with DPM++1S and FreeU on every step up to 6 steps; stop = 3,
    rho_stop = 7 with DPM++2M and no FreeU from 7 steps on; n_grid = N + stop + 1, j_stop = N + 1.
    (For N = 5 and 8 this is the tuned row; the tuned 6-step row uses n_grid 8, j_stop 6 instead.)
    """
    stop, rho_stop, solver, freeu = (
        (2, 5, "dpmpp_1s", PAPER_FREEU) if steps <= 6 else (3, 7, "dpmpp_2m", None)
    )
    return steps, steps + stop + 1, rho_stop, steps + 1, solver, freeu


def schedule_sigmas(kind: str, steps: int, schedule: DiscreteSchedule | None = None) -> torch.Tensor:
    """The sigmas of a named step placement for `steps` steps, as the presets use it.

    "paper": the paper's tuned row or rule (ends at sigma_stop > 0); the baselines end at 0 like
    k-diffusion and diffusers: karras (rho 7), exponential, linspace (uniform DDPM time), ays
    (the table's last value replaced by 0, as diffusers and ComfyUI do).
    """
    schedule = DiscreteSchedule.sd() if schedule is None else schedule
    if kind == "paper":
        return torch.tensor(preset("paper", steps=steps, schedule=schedule).sigmas, dtype=torch.float64)
    if kind not in BASELINE_SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose from paper, {', '.join(BASELINE_SCHEDULES)}")
    lo, hi = schedule.sigma_min, schedule.sigma_max
    if kind == "ays":
        return torch.cat([ays(steps)[:-1], torch.zeros(1, dtype=torch.float64)])
    if steps == 1:
        return torch.tensor([hi, 0.0], dtype=torch.float64)
    if kind == "karras":
        return append_zero(karras(steps - 1, lo, hi, rho=7.0))
    if kind == "exponential":
        return append_zero(exponential(steps - 1, lo, hi))
    return append_zero(uniform(steps - 1, schedule, "linspace"))


def preset_names() -> list[str]:
    """The valid names, with the baselines as one pattern."""
    pattern = f"{{{'|'.join(BASELINE_SCHEDULES)}}}-{{{'|'.join(SOLVER_SHORT)}}}-N (e.g. karras-2m-20)"
    return [*PAPER_ROWS, "paper-N", pattern]


def preset(
    name: str,
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    schedule: DiscreteSchedule | None = None,
) -> Plan:
    """The named Plan. `preset("paper", steps=N)` is `preset(f"paper-{N}")`.

    `schedule` is the model's noise table (default: SD's); guidance is the same on every step.
    """
    schedule = DiscreteSchedule.sd() if schedule is None else schedule
    if name == "paper" and steps is not None:
        name = f"paper-{steps}"
    elif steps is not None:
        raise ValueError(f"steps= only goes with preset 'paper'; {name!r} already names its step count")
    if name in PAPER_ROWS:
        row = PAPER_ROWS[name]
    elif m := re.fullmatch(r"paper-(\d+)", name):
        row = paper_rule(_steps(m.group(1), name))
    elif m := re.fullmatch(rf"({'|'.join(BASELINE_SCHEDULES)})-({'|'.join(SOLVER_SHORT)})-(\d+)", name):
        kind, solver, n = m.group(1), SOLVER_SHORT[m.group(2)], _steps(m.group(3), name)
        return Plan(schedule_sigmas(kind, n, schedule), solver, guidance, None, "keep", name)
    else:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(preset_names())}")
    n, n_grid, rho_stop, j_stop, solver, freeu = row
    sigmas = paper_sigmas(schedule, n, n_grid, rho_stop, j_stop, rho_t=1.2)
    return Plan(sigmas, solver, guidance, freeu, "keep", name)


def _steps(text: str, name: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(f"preset {name!r} asks for {n} steps; use 1 or more")
    return n
