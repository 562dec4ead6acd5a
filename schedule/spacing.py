"""Step placement: where the N steps of a sampler go.

Every function returns N + 1 descending float64 sigmas for N steps, from the first noise level to
the last, and never appends a zero itself. A final step to sigma = 0 is asked for explicitly with
`append_zero`. So k-diffusion's / diffusers' N-step schedules, which end at 0, are
`append_zero(f(N - 1, ...))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from schedule.gits_tables import GITS_GRID, GITS_STEPS
from schedule.noise import DiscreteSchedule, NoiseSchedule

# Align Your Steps (Sabour et al. 2024), the published 10-step tables (11 sigmas, ending at sigma_min).
AYS_TABLES = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


def _check_steps(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps must be an integer >= 1, got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _ramp(n: int) -> torch.Tensor:
    """i / n for i = 0..n."""
    return torch.arange(n + 1, dtype=torch.float64) / n


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Add a final step to sigma = 0 (that step returns the denoised estimate)."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. (5), the paper's eq. (15): uniform in sigma^(1/rho)."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + _ramp(n) * (lo - hi)) ** rho


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log sigma, i.e. uniform in log-SNR lambda = -log sigma (DPM-Solver's own choice)."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    log_hi, log_lo = torch.tensor([sigma_max, sigma_min], dtype=torch.float64).log()
    return torch.exp(torch.lerp(log_hi, log_lo, _ramp(n)))


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
    return schedule.sigma((t_hi + _ramp(n) * (t_lo - t_hi)) ** rho)


def uniform(
    n: int,
    schedule: DiscreteSchedule,
    spacing: Literal["linspace", "leading", "trailing"] = "linspace",
    steps_offset: int = 1,
) -> torch.Tensor:
    """The n + 1 timesteps diffusers' `EulerDiscreteScheduler` uses for an (n + 1)-step run, as sigmas.

    `append_zero(uniform(N - 1, sd, spacing))` is its N-step schedule with `timestep_spacing=spacing`
    ("leading" adds `steps_offset`, 1 in SD's configs). diffusers' multistep schedulers (DPM-Solver,
    UniPC, DEIS) space their timesteps differently: see `multistep_timesteps`.
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


def multistep_timesteps(
    n: int, t_max: int, spacing: Literal["linspace", "leading", "trailing"] = "linspace", offset: int = 1
) -> torch.Tensor:
    """The n integer DDPM timesteps of an n-step run of diffusers' multistep schedulers
    (`DPMSolverMultistepScheduler`, `UniPCMultistepScheduler`, `DEISMultistepScheduler`.set_timesteps):
    "linspace" and "leading" space n + 1 points and drop the last (0), "trailing" spaces n from the
    end; "leading" adds `offset` (their steps_offset, 1 in SD's configs). They then append sigma = 0.
    """
    _check_steps(n)
    count = t_max + 1  # num_train_timesteps
    if spacing == "linspace":
        t = torch.linspace(0, t_max, n + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "leading":
        t = (torch.arange(n + 1, dtype=torch.float64) * (count // (n + 1))).flip(0)[:-1] + offset
    elif spacing == "trailing":
        t = torch.arange(count, 0, -count / n, dtype=torch.float64).round() - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; use 'linspace', 'leading' or 'trailing'")
    return t


def loglinear(table: Sequence[float], n: int) -> torch.Tensor:
    """n + 1 points log-linearly interpolated along a descending table of sigmas, ends kept (how AYS
    and GITS stretch their published rows to other step counts)."""
    log_table = torch.tensor(list(table), dtype=torch.float64).log()
    position = _ramp(n) * (len(log_table) - 1)  # where each new step falls in the table
    low = position.floor().long().clamp(max=len(log_table) - 2)
    return torch.exp(torch.lerp(log_table[low], log_table[low + 1], position - low))


def ays(n: int, model: Literal["sd1", "sdxl"] = "sd1") -> torch.Tensor:
    """Align Your Steps: the published 10-step table, log-linearly interpolated to n steps.

    Ends at the table's last value 0.029. Tools differ on the tail: diffusers and ComfyUI replace
    that value by 0 (n steps in all), A1111 appends a 0 after it (`append_zero`, n + 1 steps).
    """
    _check_steps(n)
    if model not in AYS_TABLES:
        raise ValueError(f"no Align-Your-Steps table for {model!r}; use one of {sorted(AYS_TABLES)}")
    return loglinear(AYS_TABLES[model], n)


def gits(n: int, schedule: DiscreteSchedule, coeff: float = 1.2) -> torch.Tensor:
    """GITS (Chen et al. 2024): the published row for n = 2..20 steps (schedule.gits_tables), on the
    schedule's own table; longer runs interpolate the 20-step row log-linearly (as ComfyUI and
    stable-diffusion.cpp do). Ends at sigma(t = 0), which the tools replace by 0."""
    _check_steps(n)
    if coeff not in GITS_STEPS:
        raise ValueError(f"GITS was published for coeff {', '.join(map(str, GITS_STEPS))}; got {coeff!r}")
    if n < 2:
        raise ValueError("GITS was published for 2 to 20 steps (and interpolated beyond); got 1")
    rows = GITS_STEPS[coeff]
    k = torch.tensor(rows[min(n, len(rows) + 1) - 2], dtype=torch.float64)
    sigmas = schedule.sigma(schedule.t_max * (1 - k / GITS_GRID))
    return sigmas if n <= len(rows) + 1 else loglinear(sigmas.tolist(), n)


def simple(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """ComfyUI's "simple": every ((K / (n + 1))-th entry of the K-entry table from the top, truncated,
    as ComfyUI computes it (k * (K / (n + 1)) in float64, then int)."""
    _check_steps(n)
    stride = len(schedule.sigmas) / (n + 1)
    return schedule.sigmas[[len(schedule.sigmas) - 1 - int(k * stride) for k in range(n + 1)]]


def sgm_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """ComfyUI's "sgm_uniform" (sgm's discretization): n + 2 times uniform from t_max to 0, the last
    dropped, then `sigma(t)`."""
    _check_steps(n)
    return schedule.sigma(torch.linspace(schedule.t_max, 0, n + 2, dtype=torch.float64)[:-1])


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in arctan(sigma): the schedule that minimises the KL bound of Align Your Steps for unit-
    variance Gaussian data (Sabour et al. 2024; A1111 PR #15608, ComfyUI "kl_optimal")."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    return torch.tan(torch.lerp(*torch.tensor([sigma_max, sigma_min], dtype=torch.float64).atan(), _ramp(n)))


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's `get_sigmas_polyexponential`: log sigma a power rho of the ramp (1: exponential)."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    return torch.exp((1 - _ramp(n)) ** rho * math.log(sigma_max / sigma_min) + math.log(sigma_min))


def beta_ppf(q: float, alpha: float, beta: float) -> float:
    """The quantile of the Beta(alpha, beta) distribution: the x with I_x(alpha, beta) = q, by bisection
    on the regularized incomplete beta function (its continued fraction, evaluated bottom-up)."""
    if q <= 0 or q >= 1:
        return float(q >= 1)
    low, high = 0.0, 1.0
    for _ in range(64):  # 2^-64 is below the float64 spacing of [0, 1]
        mid = (low + high) / 2
        low, high = (mid, high) if _incomplete_beta(mid, alpha, beta) < q else (low, mid)
    return (low + high) / 2


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) / (1 + d_1 / (1 + d_2 / (1 + ...))), on the side where
    the fraction converges fast (I_x(a, b) = 1 - I_{1-x}(b, a) on the other); the fraction by its
    convergents A_k / B_k (A_k = A_{k-1} + d_k A_{k-2}, likewise B_k) until they stop changing."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1 - _incomplete_beta(1 - x, b, a)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    a_2, a_1, b_2, b_1, fraction = 1.0, 1.0, 0.0, 1.0, 1.0  # A_{k-2}, A_{k-1}, B_{k-2}, B_{k-1}
    for k in range(1, 500):
        m = k // 2
        if k % 2:
            d = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            d = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        a_2, a_1, b_2, b_1 = a_1, a_1 + d * a_2, b_1, b_1 + d * b_2
        a_2, a_1, b_2, b_1 = a_2 / b_1, a_1 / b_1, b_2 / b_1, 1.0  # rescaled: no overflow
        converged, fraction = abs(a_1 - fraction) <= 1e-15 * abs(a_1), a_1
        if converged:
            break
    return front / a / fraction


def beta_sigmas(n: int, schedule: DiscreteSchedule, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Beta sampling (Lee et al. 2024, arXiv 2407.12173) as ComfyUI and A1111 run it: table entries at
    t_k = rint(t_max * ppf(1 - k / (n + 1))), ppf the Beta(alpha, beta) quantile, k = 0..n.

    (diffusers' `use_beta_sigmas` is another rule: the quantiles spread linearly in sigma.)
    """
    _check_steps(n)
    # round(., 9) first: where t_max ppf is exactly k + 1/2 (a symmetric Beta's median) the tie goes to
    # the even neighbour, as numpy's rint does on scipy's quantile when that is exact.
    t = [round(round(schedule.t_max * beta_ppf(1 - k / (n + 1), alpha, beta), 9)) for k in range(n + 1)]
    if len(set(t)) < len(t):
        raise ValueError(
            f"beta with alpha={alpha:g}, beta={beta:g} puts two of {n + 1} steps on one timestep; "
            "use fewer steps"
        )
    return schedule.sigmas[t]


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
