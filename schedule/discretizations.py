"""Discretizations: where the N steps of a run go, one frozen dataclass per kind.

EDM's split: the noise schedule sigma(t) belongs to the model (`DiscreteSchedule`, `VPSDE`); a
discretization says which N + 1 noise levels a sampler visits. Each kind here is one class: its knobs
are its fields, named after its paper's symbols (made with `knob`: default, allowed values, flag
help), and `sigmas(schedule)` holds its formula. A Plan keeps the record beside the sigmas it made, so a
run's PNG says how its steps were placed and a command line can sweep any knob (`--p2 5`, `--rho 9`)
the way EDM's `generate.py` sweeps `--rho`.

Everything else is read off the class: the step-count and knob checks, `describe`, `to_dict` /
`from_dict`, the flags of cli/generation.py. Defining a subclass registers its kind, so a new
discretization is one class: `class Mine(Discretization, kind="mine", display="Mine")`, with
`@dataclass(frozen=True)`. `DISCRETIZATIONS` holds the kinds a command line picks; `RECORDS` every
kind a plan's JSON may name, including records that place nothing themselves (`places=False`: the
settings of the schedule search, solvers/search/record.py, whose sigmas stay the plan's).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch

import safeio
from schedule.gits_tables import GITS_GRID, GITS_STEPS
from schedule.noise import DiscreteSchedule, NoiseSchedule
from schedule.spacing import append_zero, exponential, karras, loglinear, paper_sigmas, ramp, uniform

SPACINGS = ("linspace", "leading", "trailing")
# Align Your Steps (Sabour et al. 2024), the published 10-step tables (11 sigmas, ending at sigma_min).
AYS_TABLES = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


@dataclass(frozen=True)
class Number:
    """A numeric knob's values: integers >= low when `integer`, else finite numbers > low."""

    low: float = 0
    integer: bool = False

    @property
    def wanted(self) -> str:
        return f"an integer >= {self.low}" if self.integer else f"a finite number > {self.low:g}"

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            ok = False
        else:
            ok = value >= self.low if self.integer else math.isfinite(value) and value > self.low
        if not ok:
            raise ValueError(f"{name} must be {self.wanted}, got {value!r}")

    def parse(self, name: str, text: str) -> int | float:
        """A flag's text as the knob's value, checked as a value read from a file is."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'an integer' if self.integer else 'a number'}") from None
        self(name, value)
        return value


@dataclass(frozen=True)
class OneOf:
    """A knob that takes one of a few values (names, or the published coefficients of a table)."""

    choices: tuple

    @property
    def wanted(self) -> str:
        return f"one of {', '.join(map(str, self.choices))}"

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or value not in self.choices:
            raise ValueError(f"{name} must be {self.wanted}, got {value!r}")

    def parse(self, name: str, text: str) -> Any:
        """A flag's text as the knob's value: one of the choices."""
        try:
            value = text if isinstance(self.choices[0], str) else float(text)
        except ValueError:
            value = None
        if value not in self.choices:
            raise ValueError(f"unknown {name} {text!r}; choose from {', '.join(map(str, self.choices))}")
        return value


def timestep_list(text: str) -> list[int]:
    """DDPM timesteps written as the --timesteps flag takes them, "999,749,499,249": strictly
    descending integers >= 0; ValueError says what is wrong."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"{text!r} is not a comma-separated list of integers such as 999,749,499,249"
        ) from None
    if values[-1] < 0 or any(b >= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{text!r} must be strictly descending integers >= 0, such as 999,749,499,249")
    return values


@dataclass(frozen=True)
class TimestepList:
    """A knob holding DDPM timesteps as text, "999,749,499,249" (`timestep_list`), so that a plan file
    and the flag hold the same value."""

    wanted: ClassVar[str] = "strictly descending integers >= 0, such as 999,749,499,249"

    def __call__(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a text of {self.wanted}, got {value!r}")
        timestep_list(value)

    def parse(self, name: str, text: str) -> str:
        self(name, text)
        return text


POSITIVE = Number()
Check = Number | OneOf | TimestepList


def knob(default: Any, check: Check, help: str | None = None) -> Any:
    """A discretization's knob: its default (None: a rule's value, said in `help`), the values it takes
    and, for a knob a command line sets, the flag's help."""
    return dataclasses.field(default=default, metadata={"check": check, "help": help})


DISCRETIZATIONS: dict[str, type[Discretization]] = {}  # the kinds a command line picks, in definition order
RECORDS: dict[str, type[Discretization]] = {}  # every kind a plan may name


@dataclass(frozen=True)
class Discretization:
    """N steps placed on a noise schedule; subclasses add their knobs and `sigmas`."""

    kind: ClassVar[str]
    display: ClassVar[str]  # the PNG's "Schedule type": A1111's name where A1111 has one
    min_steps: ClassVar[int] = 1
    ending: ClassVar[str] = ""  # how the sigmas end, as `describe` says it
    N: int

    def __init_subclass__(cls, kind: str, display: str, places: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind in RECORDS:
            raise ValueError(f"there already is a discretization named {kind!r}")
        cls.kind, cls.display = kind, display
        RECORDS[kind] = cls
        if places:
            DISCRETIZATIONS[kind] = cls

    def __post_init__(self) -> None:
        Number(self.min_steps, integer=True)("N", self.N)
        for f in dataclasses.fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            if check is not None and not (value is None and f.default is None):
                check(f.name, value)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        """The N + 1 descending float64 sigmas on `schedule`."""
        raise NotImplementedError(f"the {self.kind} discretization places no steps")

    def describe(self) -> str:
        """The kind, N and every knob that is set, then how the sigmas end: "karras N=8 rho=7, then 0"."""
        values = [(name, getattr(self, name)) for name in knobs(self)]
        shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values if v is not None]
        return " ".join([self.kind, f"N={self.N}", *shown]) + self.ending


def _table(schedule: NoiseSchedule, kind: str) -> DiscreteSchedule:
    """The schedule as a DDPM table; the discretizations that pick table entries need one."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"the {kind} discretization needs a DiscreteSchedule (a DDPM table)")
    return schedule


def _then_zero(n: int, schedule: NoiseSchedule, place: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """N steps as k-diffusion and diffusers make them: N - 1 placed steps, then one to sigma = 0 (a
    single step goes straight from sigma_max to 0)."""
    if n == 1:
        return torch.tensor([schedule.sigma_max, 0.0], dtype=torch.float64)
    return append_zero(place(n - 1))


def _last_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """A published row's last value replaced by 0 (diffusers', ComfyUI's and sd.cpp's AYS and GITS)."""
    return torch.cat([sigmas[:-1], sigmas.new_zeros(1)])


@dataclass(frozen=True)
class Paper(Discretization, kind="paper", display="paper"):
    """The paper's two-stage discretization, eq. (18)-(19) as the authors' code runs them
    (docs/recipe.md section 2).

    1. sigma_stop = point `index` of a `grid`-point Karras ramp with exponent p2 over the schedule's
       whole range (eq. 19; by the paper's rule grid = N + stop + 1 and index = N + 1).
    2. t_i, i = 0..N, uniform in t^(1/p1) from t_max down to t(sigma_stop) (eq. 18), mapped to sigma.

    No zero is appended: the last sigma is sigma_stop > 0 and the paper decodes x_N itself. The tuned
    6-step and XL 8-step rows depart from the rule; `grid` and `index` say so explicitly.
    """

    stop: int = knob(
        2,
        Number(0, integer=True),
        "the stop of eq. (19): sigma_stop is point N + 1 of an (N + stop + 1)-point Karras grid",
    )
    p1: float = knob(1.2, POSITIVE, "the time exponent of eq. (18)")
    p2: float = knob(
        7.0, POSITIVE, "the Karras exponent of sigma_stop, eq. (19) (the recipe's: 5 for 5-6 steps, 7 for 8)"
    )
    grid: int | None = knob(None, Number(0, integer=True))
    index: int | None = knob(None, Number(0, integer=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.stop_index < self.grid_size:
            raise ValueError(
                f"the stop index {self.stop_index} must be a point of the {self.grid_size}-point Karras grid"
            )

    @property
    def grid_size(self) -> int:
        """Points of the Karras ramp sigma_stop is read from."""
        return self.N + self.stop + 1 if self.grid is None else self.grid

    @property
    def stop_index(self) -> int:
        """Which point of that ramp is sigma_stop."""
        return self.N + 1 if self.index is None else self.index

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        return paper_sigmas(schedule, self.N, self.grid_size, self.p2, self.stop_index, rho_t=self.p1)

    def describe(self) -> str:
        return (
            f"paper N={self.N} stop={self.stop} p1={self.p1:g} p2={self.p2:g} "
            f"(sigma_stop = point {self.stop_index} of the {self.grid_size}-point Karras grid)"
        )


@dataclass(frozen=True)
class Karras(Discretization, kind="karras", display="Karras"):
    """Karras et al. (2022) eq. (5) with exponent rho over the schedule's range, then a last step to 0:
    k-diffusion's and diffusers' N-step Karras schedule."""

    ending: ClassVar[str] = ", then 0"
    rho: float = knob(7.0, POSITIVE, "the exponent of eq. (5)")

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(self.N, schedule, lambda n: karras(n, lo, hi, self.rho))


@dataclass(frozen=True)
class Exponential(Discretization, kind="exponential", display="Exponential"):
    """Uniform in log sigma (uniform log-SNR, DPM-Solver's own choice), then a last step to 0."""

    ending: ClassVar[str] = ", then 0"

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(self.N, schedule, lambda n: exponential(n, lo, hi))


@dataclass(frozen=True)
class Linspace(Discretization, kind="linspace", display="Uniform"):
    """Uniform in the DDPM index from t_max to 0, then a last step to 0 (k-diffusion's `get_sigmas`,
    diffusers' "linspace" Euler schedule)."""

    ending: ClassVar[str] = ", then 0"

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _then_zero(self.N, table, lambda n: uniform(n, table, "linspace"))


@dataclass(frozen=True)
class AYS(Discretization, kind="ays", display="Align Your Steps"):
    """Align Your Steps (Sabour et al. 2024): the published 10-step table of `model`, log-linearly
    interpolated to N steps, its last value 0.029 replaced by 0 (as diffusers and ComfyUI run it; A1111
    appends a 0 after it instead)."""

    ending: ClassVar[str] = ", last value 0"
    model: str = knob("sd1", OneOf(tuple(AYS_TABLES)))  # the model kind; a run takes its weights'

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        return _last_zero(loglinear(AYS_TABLES[self.model], self.N))


@dataclass(frozen=True)
class GITS(Discretization, kind="gits", display="GITS"):
    """GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): the
    published SD row for N steps searched with DP coefficient `coeff` (schedule.gits_tables; 2 to 20
    steps, the 20-step row stretched log-linearly beyond, as ComfyUI and stable-diffusion.cpp do) on
    the schedule's own table, its last value sigma(t = 0) replaced by 0, as ComfyUI's GITSScheduler and
    stable-diffusion.cpp run it."""

    min_steps: ClassVar[int] = 2
    ending: ClassVar[str] = ", last value 0"
    coeff: float = knob(1.2, OneOf(tuple(GITS_STEPS)), "the GITS row's DP coefficient, 0.8 to 1.5 by 0.05")

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table, rows, n = _table(schedule, self.kind), GITS_STEPS[self.coeff], self.N
        k = torch.tensor(rows[min(n, len(rows) + 1) - 2], dtype=torch.float64)
        row = table.sigma(table.t_max * (1 - k / GITS_GRID))
        return _last_zero(row if n <= len(rows) + 1 else loglinear(row.tolist(), n))


@dataclass(frozen=True)
class Beta(Discretization, kind="beta", display="Beta"):
    """Beta sampling (Lee et al. 2024, arXiv 2407.12173) as ComfyUI's beta_scheduler computes it: table
    entries t_k = rint(t_max ppf(1 - k / N)), k = 0..N-1, ppf the Beta(alpha, beta) quantile, then 0.
    (diffusers' use_beta_sigmas spreads the same quantiles linearly in sigma instead: another schedule.)
    """

    ending: ClassVar[str] = ", then 0"
    alpha: float = knob(0.6, POSITIVE, "alpha of Beta(alpha, beta)")
    beta: float = knob(0.6, POSITIVE, "beta of Beta(alpha, beta)")

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        # scipy's quantile, in float64 as ComfyUI's numpy takes it: where t_max ppf is a half-integer
        # (a symmetric Beta's median, Beta(1, 1) at k / N) its last bit decides rint's neighbour, and
        # scipy's last bit is its own algorithm's. Imported here: scipy.stats takes a second to load.
        from scipy.stats import beta as beta_distribution

        table = _table(schedule, self.kind)
        q = 1 - np.linspace(0, 1, self.N, endpoint=False)
        t = np.rint(beta_distribution.ppf(q, self.alpha, self.beta) * table.t_max).astype(np.int64)
        if len(set(t.tolist())) < len(t):
            raise ValueError(
                f"beta with alpha={self.alpha:g}, beta={self.beta:g} puts two of {self.N} steps on one "
                "timestep; use fewer steps"
            )
        return append_zero(table.sigmas[torch.from_numpy(t)])


@dataclass(frozen=True)
class Simple(Discretization, kind="simple", display="Simple"):
    """ComfyUI's "simple" (sd.cpp's too): N evenly strided entries of the DDPM table from the top, then 0:
    entry K - 1 - int(k (K / N)) of the K-entry table, in float64 as ComfyUI computes it."""

    ending: ClassVar[str] = ", then 0"

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        count = len(table.sigmas)
        stride = count / self.N
        return append_zero(table.sigmas[[count - 1 - int(k * stride) for k in range(self.N)]])


@dataclass(frozen=True)
class SGMUniform(Discretization, kind="sgm_uniform", display="SGM Uniform"):
    """ComfyUI's and sd.cpp's "sgm_uniform": N times uniform from t_max towards 0 (N + 1 spaced, the last
    dropped), then 0."""

    ending: ClassVar[str] = ", then 0"

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _then_zero(
            self.N,
            table,
            lambda n: table.sigma(torch.linspace(table.t_max, 0, n + 2, dtype=torch.float64)[:-1]),
        )


@dataclass(frozen=True)
class KLOptimal(Discretization, kind="kl_optimal", display="KL Optimal"):
    """ "kl_optimal" (A1111 PR #15608, ComfyUI, sd.cpp): uniform in arctan(sigma) over the schedule's
    range, the Align-Your-Steps paper's optimum for unit-variance Gaussian data (Sabour et al. 2024),
    then 0."""

    ending: ClassVar[str] = ", then 0"

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        ends = torch.tensor([schedule.sigma_max, schedule.sigma_min], dtype=torch.float64).atan()
        return _then_zero(self.N, schedule, lambda n: torch.tan(torch.lerp(*ends, ramp(n))))


@dataclass(frozen=True)
class Polyexponential(Discretization, kind="polyexponential", display="Polyexponential"):
    """k-diffusion's `get_sigmas_polyexponential` (ComfyUI's PolyexponentialScheduler): log sigma moves
    as the ramp to the power rho over the schedule's range (rho = 1: exponential), then 0."""

    ending: ClassVar[str] = ", then 0"
    rho: float = knob(1.0, POSITIVE, "the power of the ramp in log sigma")

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(
            self.N,
            schedule,
            lambda n: torch.exp((1 - ramp(n)) ** self.rho * math.log(hi / lo) + math.log(lo)),
        )


@dataclass(frozen=True)
class LinearQuadratic(Discretization, kind="linear_quadratic", display="Linear Quadratic"):
    """ComfyUI's "linear_quadratic" (from genmo's Mochi): sigma / sigma_max = 1 - s_i, s_i linear from 0 to
    `threshold` over the first `linear` steps (default N // 2), then the quadratic that reaches 1 at
    step N with matching slope; it ends at 0. Made for flow models; it spends the linear steps near
    sigma_max."""

    ending: ClassVar[str] = ", ends at 0"
    threshold: float = knob(
        0.025, POSITIVE, "1 - sigma/sigma_max where its linear part ends (ComfyUI's threshold_noise)"
    )
    linear: int | None = knob(
        None, Number(1, integer=True), "steps in its linear part (ComfyUI's linear_steps; default N // 2)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.threshold < 1:
            raise ValueError(f"threshold must be below 1 (a fraction of sigma_max), got {self.threshold!r}")
        if self.linear is not None and self.N > 1 and self.linear >= self.N:
            raise ValueError(f"linear must leave a quadratic step: 1 <= linear < N = {self.N}")

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        n = self.N
        if n == 1:
            return torch.tensor([schedule.sigma_max, 0.0], dtype=torch.float64)
        linear, threshold = n // 2 if self.linear is None else self.linear, self.threshold
        quadratic = n - linear
        gap = linear - threshold * n
        a = gap / (linear * quadratic**2)
        b = threshold / linear - 2 * gap / quadratic**2
        i = torch.arange(n + 1, dtype=torch.float64)
        s = torch.where(i < linear, i * threshold / linear, a * i**2 + b * i + a * linear**2)
        s[n] = 1.0
        return schedule.sigma_max * (1 - s)


@dataclass(frozen=True)
class Diffusers(Discretization, kind="diffusers", display="diffusers"):
    """The timesteps of diffusers' multistep schedulers (DPMSolverMultistep, UniPC, DEIS) with
    timestep_spacing `spacing` and steps_offset `offset` (SD's configs: 1), then 0 (their
    final_sigmas_type "zero"). Euler's spacings are `linspace` here and `schedule.uniform`."""

    ending: ClassVar[str] = ", then 0"
    spacing: str = knob("linspace", OneOf(SPACINGS), f"timestep_spacing: {', '.join(SPACINGS)}")
    offset: int = knob(1, Number(0, integer=True), "steps_offset (SD's configs: 1)")

    def timesteps(self, t_max: int) -> torch.Tensor:
        """The N integer DDPM timesteps of an N-step run of those schedulers' `set_timesteps`: "linspace"
        and "leading" space N + 1 points and drop the last (0), "trailing" spaces N from the end;
        "leading" adds the offset."""
        n, count = self.N, t_max + 1  # num_train_timesteps
        if self.spacing == "linspace":
            return torch.linspace(0, t_max, n + 1, dtype=torch.float64).round().flip(0)[:-1]
        if self.spacing == "leading":
            return (torch.arange(n + 1, dtype=torch.float64) * (count // (n + 1))).flip(0)[:-1] + self.offset
        return torch.arange(count, 0, -count / n, dtype=torch.float64).round() - 1

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return append_zero(table.sigma(self.timesteps(int(table.t_max))))


# Where the last step lands (diffusers' final_sigmas_type): 0, or the table's t = 0, where TCD's output
# and DDIM's with SD's set_alpha_to_one false sit.
ENDS = ("zero", "sigma_min")


def _ended(table: DiscreteSchedule, timesteps: torch.Tensor, end: str) -> torch.Tensor:
    """The sigmas of these timesteps, then the level of `end`."""
    if int(timesteps[0]) > table.t_max:
        raise ValueError(f"timestep {int(timesteps[0])} is beyond the model's table (0 to {table.t_max:g})")
    if end == "sigma_min" and int(timesteps[-1]) == 0:
        raise ValueError("the last timestep is 0 already; end=sigma_min needs steps above it")
    last = torch.tensor([0.0 if end == "zero" else table.sigma_min], dtype=torch.float64)
    return torch.cat([table.sigma(timesteps.to(torch.float64)), last])


@dataclass(frozen=True)
class LCM(Discretization, kind="lcm", display="LCM"):
    """LCM's timesteps (diffusers' LCMScheduler and TCDScheduler `set_timesteps`): the distillation
    grid t = j k - 1, j = 1..M, k = K // M for M = `original_inference_steps` and the table's K; the
    N steps start at the entries floor(linspace(0, M, N, endpoint=False)) of it from the top (4 steps:
    999, 759, 499, 259), then `end`."""

    original_inference_steps: int = knob(
        50,
        Number(1, integer=True),
        "the points M of LCM's distillation grid, as diffusers' original_inference_steps",
    )
    end: str = knob("zero", OneOf(ENDS), "where the last step lands: zero, or sigma_min (the table's t = 0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.original_inference_steps < self.N:
            raise ValueError(
                f"LCM's timesteps take N = {self.N} of its {self.original_inference_steps}-point grid; "
                "use fewer steps or a larger original_inference_steps"
            )

    def timesteps(self, count: int) -> torch.Tensor:
        """The N integer timesteps on a table of `count` entries."""
        m = self.original_inference_steps
        if m > count:
            raise ValueError(f"original_inference_steps {m} exceeds the model's {count} timesteps")
        grid = torch.arange(m, 0, -1, dtype=torch.int64) * (count // m) - 1
        # i * (M / N) in float64, floored: numpy's linspace(0, M, N, endpoint=False) as diffusers takes it
        return grid[(torch.arange(self.N, dtype=torch.float64) * (m / self.N)).floor().long()]

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _ended(table, self.timesteps(len(table.sigmas)), self.end)


@dataclass(frozen=True)
class Timesteps(Discretization, kind="timesteps", display="Timesteps"):
    """Steps that start at the given DDPM timesteps, on the model's table, then `end`: the custom
    `timesteps=` of diffusers' pipelines (DMD2's 999, 749, 499, 249). Without a list: the N trailing
    timesteps (the `diffusers` kind's spacing=trailing)."""

    timesteps: str | None = knob(
        None,
        TimestepList(),
        "the N DDPM timesteps the steps start at, e.g. 999,749,499,249 (default: trailing)",
    )
    end: str = knob("zero", OneOf(ENDS), "where the last step lands: zero, or sigma_min (the table's t = 0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timesteps is not None and len(timestep_list(self.timesteps)) != self.N:
            raise ValueError(
                f"timesteps {self.timesteps} are {len(timestep_list(self.timesteps))} for a plan of "
                f"N = {self.N} steps; give one per step"
            )

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        if self.timesteps is None:
            t = Diffusers(self.N, spacing="trailing").timesteps(int(table.t_max)).long()
        else:
            t = torch.tensor(timestep_list(self.timesteps))
        return _ended(table, t, self.end)


def discretization(kind: str, N: int, **knobs: Any) -> Discretization:
    """The discretization `kind` for N steps with the given knobs (the others at their defaults)."""
    if kind not in DISCRETIZATIONS:
        raise ValueError(safeio.unknown("discretization", kind, DISCRETIZATIONS))
    return DISCRETIZATIONS[kind](N=N, **knobs)


def knobs(cls_or_kind: type | str | Discretization) -> tuple[str, ...]:
    """The knob names of a discretization kind, N excluded."""
    cls = RECORDS[cls_or_kind] if isinstance(cls_or_kind, str) else cls_or_kind
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "N")


def knob_flags() -> dict[str, tuple[Callable[[str], Any], str]]:
    """The knobs a command line sets (those with help), by name: how a flag's text is read and checked
    (by the first kind that has the knob; a plan of another kind checks it again) and the flag's help,
    kind by kind with the default."""
    owners: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for cls in DISCRETIZATIONS.values():
        for f in dataclasses.fields(cls):
            if f.metadata.get("help"):
                owners.setdefault(f.name, []).append((cls.kind, f))
    return {
        name: (
            partial(fields[0][1].metadata["check"].parse, name),
            "; ".join(f"{kind}: {f.metadata['help']}{_default(f.default)}" for kind, f in fields),
        )
        for name, fields in owners.items()
    }


def _default(value: Any) -> str:
    if value is None:
        return ""
    return f" (default {value:g})" if isinstance(value, float) else f" (default {value})"


def to_dict(value: Discretization) -> dict[str, Any]:
    return {"kind": value.kind, **dataclasses.asdict(value)}


def from_dict(data: Mapping[str, Any]) -> Discretization:
    """Inverse of `to_dict`; raises ValueError naming the field that is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a discretization must be an object with a kind, got {data!r}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in RECORDS:
        raise ValueError(safeio.unknown("discretization kind", kind, RECORDS))
    fields = {f.name for f in dataclasses.fields(RECORDS[kind])}
    unknown = sorted(set(data) - fields - {"kind"})
    if unknown or "N" not in data:
        problem = f"unknown fields {unknown}" if unknown else "no N"
        mean = safeio.did_you_mean(unknown[0], fields) if unknown else ""
        raise ValueError(
            f"the {kind} discretization has {problem}; {mean}it takes N, {', '.join(knobs(kind))}"
        )
    return RECORDS[kind](**{k: v for k, v in data.items() if k != "kind"})
