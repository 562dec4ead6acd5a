"""Step placement as plain functions: the formulas that other code (the discretizations of
schedule.discretizations, the solvers' analysis and search) calls with its own range.

Every placement returns N + 1 descending float64 sigmas for N steps, from the first noise level to
the last, and never appends a zero itself. A final step to sigma = 0 is asked for explicitly with
`append_zero`. So k-diffusion's / diffusers' N-step schedules, which end at 0, are
`append_zero(f(N - 1, ...))`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from schedule.noise import DiscreteSchedule, NoiseSchedule


def _check_steps(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps must be an integer >= 1, got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def ramp(n: int) -> torch.Tensor:
    """i / n for i = 0..n, in float64."""
    return torch.arange(n + 1, dtype=torch.float64) / n


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Add a final step to sigma = 0 (that step returns the denoised estimate)."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. (5), the paper's eq. (15): uniform in sigma^(1/rho)."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + ramp(n) * (lo - hi)) ** rho


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log sigma, i.e. uniform in log-SNR lambda = -log sigma (DPM-Solver's own choice)."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    log_hi, log_lo = torch.tensor([sigma_max, sigma_min], dtype=torch.float64).log()
    return torch.exp(torch.lerp(log_hi, log_lo, ramp(n)))


def time_uniform(
    n: int,
    schedule: NoiseSchedule,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 1.0,
) -> torch.Tensor:
    """The paper's eq. (16): steps uniform in t^(1/rho), placed in the schedule's own time.

    With a `VPSDE` that is continuous VP time; with a `DiscreteSchedule` the DDPM index. rho = 1
    is plain uniform time; the paper uses rho = 1.2. The range defaults to the schedule's.
    """
    _check_steps(n)
    sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
    sigma_max = schedule.sigma_max if sigma_max is None else sigma_max
    _check_range(sigma_min, sigma_max)
    t_hi, t_lo = schedule.t(sigma_max) ** (1 / rho), schedule.t(sigma_min) ** (1 / rho)
    return schedule.sigma((t_hi + ramp(n) * (t_lo - t_hi)) ** rho)


def uniform(
    n: int,
    schedule: DiscreteSchedule,
    spacing: Literal["linspace", "leading", "trailing"] = "linspace",
    steps_offset: int = 1,
) -> torch.Tensor:
    """The n + 1 timesteps diffusers' `EulerDiscreteScheduler` uses for an (n + 1)-step run, as sigmas.

    `append_zero(uniform(N - 1, sd, spacing))` is its N-step schedule with `timestep_spacing=spacing`
    ("leading" adds `steps_offset`, 1 in SD's configs). diffusers' multistep schedulers (DPM-Solver,
    UniPC, DEIS) space their timesteps differently: see the `diffusers` discretization.
    """
    _check_steps(n)
    k, last = n + 1, schedule.t_max
    if spacing == "linspace":
        t = torch.linspace(last, 0, k, dtype=torch.float64)
    elif spacing == "leading":
        t = (torch.arange(k, dtype=torch.float64) * ((last + 1) // k)).flip(0) + steps_offset
    elif spacing == "trailing":
        t = torch.round(torch.arange(last + 1, 0, -(last + 1) / k, dtype=torch.float64)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; use 'linspace', 'leading' or 'trailing'")
    return schedule.sigma(t)


def loglinear(table: Sequence[float], n: int) -> torch.Tensor:
    """n + 1 points log-linearly interpolated along a descending table of sigmas, ends kept (how AYS
    and GITS stretch their published rows to other step counts)."""
    log_table = torch.tensor(list(table), dtype=torch.float64).log()
    position = ramp(n) * (len(log_table) - 1)  # where each new step falls in the table
    low = position.floor().long().clamp(max=len(log_table) - 2)
    return torch.exp(torch.lerp(log_table[low], log_table[low + 1], position - low))


def paper_sigmas(
    schedule: NoiseSchedule,
    n_steps: int,
    n_grid: int,
    rho_stop: float,
    j_stop: int,
    rho_t: float = 1.2,
) -> torch.Tensor:
    """The paper's two-stage schedule (eq. 18-19 as the authors' code runs them).

    1. Stop level: point j_stop of an n_grid-point Karras ramp (exponent rho_stop) over the
       schedule's whole range. The paper writes n_grid = N + stop + 1 and j_stop = N + 1.
    2. N + 1 times uniform in t^(1/rho_t) from t_max down to t(sigma_stop), in the schedule's time
       (the DDPM index for SD), mapped back to sigma.

    The last sigma is sigma_stop > 0 and no zero is appended: the paper decodes x_N itself.
    """
    _check_steps(n_steps)
    if not 0 <= j_stop < n_grid:
        raise ValueError(f"j_stop must index the {n_grid}-point Karras grid, got {j_stop}")
    grid = karras(n_grid - 1, schedule.sigma_min, schedule.sigma_max, rho_stop)
    return time_uniform(n_steps, schedule, sigma_min=float(grid[j_stop]), rho=rho_t)
