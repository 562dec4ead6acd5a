"""Discretizations: where the N steps of a run go, as named recipes with their knobs.

EDM's split: the noise schedule sigma(t) belongs to the model (`DiscreteSchedule`, `VPSDE`); a
discretization says which N + 1 noise levels a sampler visits. Each one here is a small frozen record
of its knobs, named after its paper's symbols, that computes its sigmas on a noise schedule. A Plan
keeps the record beside the sigmas it made, so a run's PNG says how its steps were placed and a
command line can sweep any knob (`--p2 5`, `--rho 9`) the way EDM's `generate.py` sweeps `--rho`.

`DISCRETIZATIONS` is the one table of them: a new kind is a dataclass with `kind`, `display` (the
PNG's "Schedule type", A1111's name where A1111 has one), `N` and `sigmas(schedule)`, added there.
`RECORDS` adds the kinds a plan's JSON may name that place nothing themselves: `Searched`, the
settings of an automated search whose sigmas stay the plan's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from schedule.gits_tables import GITS_STEPS
from schedule.noise import DiscreteSchedule, NoiseSchedule
from schedule.spacing import (
    append_zero,
    ays,
    beta_sigmas,
    exponential,
    gits,
    karras,
    kl_optimal,
    multistep_timesteps,
    paper_sigmas,
    polyexponential,
    sgm_uniform,
    simple,
    uniform,
)

SPACINGS = ("linspace", "leading", "trailing")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _table(schedule: NoiseSchedule, kind: str) -> DiscreteSchedule:
    """The schedule as a DDPM table; the discretizations that pick table entries need one."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"the {kind} discretization needs a DiscreteSchedule (a DDPM table)")
    return schedule


def _check_positive(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Paper:
    """The paper's two-stage discretization, eq. (18)-(19) as the authors' code runs them
    (docs/recipe.md section 2).

    1. sigma_stop = point `index` of a `grid`-point Karras ramp with exponent p2 over the schedule's
       whole range (eq. 19; by the paper's rule grid = N + stop + 1 and index = N + 1).
    2. t_i, i = 0..N, uniform in t^(1/p1) from t_max down to t(sigma_stop) (eq. 18), mapped to sigma.

    No zero is appended: the last sigma is sigma_stop > 0 and the paper decodes x_N itself. The tuned
    6-step and XL 8-step rows depart from the rule; `grid` and `index` say so explicitly.
    """

    kind: ClassVar[str] = "paper"
    display: ClassVar[str] = "paper"
    N: int
    stop: int = 2
    p1: float = 1.2  # eq. (18): the exponent in time
    p2: float = 7.0  # eq. (19): the Karras exponent of sigma_stop
    grid: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        _check_int("stop", self.stop, 0)
        _check_positive("p1", self.p1)
        _check_positive("p2", self.p2)
        for name in ("grid", "index"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0)
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
class Karras:
    """Karras et al. (2022) eq. (5) with exponent rho over the schedule's range, then a last step to 0:
    k-diffusion's and diffusers' N-step Karras schedule."""

    kind: ClassVar[str] = "karras"
    display: ClassVar[str] = "Karras"
    N: int
    rho: float = 7.0

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        _check_positive("rho", self.rho)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(self.N, schedule, lambda n: karras(n, lo, hi, self.rho))

    def describe(self) -> str:
        return f"karras N={self.N} rho={self.rho:g}, then 0"


@dataclass(frozen=True)
class Exponential:
    """Uniform in log sigma (uniform log-SNR, DPM-Solver's own choice), then a last step to 0."""

    kind: ClassVar[str] = "exponential"
    display: ClassVar[str] = "Exponential"
    N: int

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(self.N, schedule, lambda n: exponential(n, lo, hi))

    def describe(self) -> str:
        return f"exponential N={self.N}, then 0"


@dataclass(frozen=True)
class Linspace:
    """Uniform in the DDPM index from t_max to 0, then a last step to 0 (k-diffusion's `get_sigmas`,
    diffusers' "linspace" Euler schedule)."""

    kind: ClassVar[str] = "linspace"
    display: ClassVar[str] = "Uniform"
    N: int

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _then_zero(self.N, table, lambda n: uniform(n, table, "linspace"))

    def describe(self) -> str:
        return f"linspace N={self.N}, then 0"


@dataclass(frozen=True)
class AYS:
    """Align Your Steps (Sabour et al. 2024): the published 10-step table of `model`, log-linearly
    interpolated to N steps, its last value replaced by 0 (as diffusers and ComfyUI run it)."""

    kind: ClassVar[str] = "ays"
    display: ClassVar[str] = "Align Your Steps"
    N: int
    model: str = "sd1"

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a model kind such as 'sd1', got {self.model!r}")

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        return _last_zero(ays(self.N, self.model))

    def describe(self) -> str:
        return f"ays N={self.N} ({self.model} table), last value 0"


@dataclass(frozen=True)
class GITS:
    """GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): the
    published SD row for N steps searched with DP coefficient `coeff` (schedule.gits_tables; 2 to 20
    steps, stretched log-linearly beyond), its last value replaced by 0, as ComfyUI's GITSScheduler
    and stable-diffusion.cpp run it."""

    kind: ClassVar[str] = "gits"
    display: ClassVar[str] = "GITS"
    N: int
    coeff: float = 1.2

    def __post_init__(self) -> None:
        _check_int("N", self.N, 2)
        _check_choice("coeff", self.coeff, tuple(GITS_STEPS))

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        return _last_zero(gits(self.N, _table(schedule, self.kind), self.coeff))

    def describe(self) -> str:
        return f"gits N={self.N} coeff={self.coeff:g}, last value 0"


@dataclass(frozen=True)
class Beta:
    """Beta sampling (Lee et al. 2024, arXiv 2407.12173), ComfyUI's and A1111's "beta": N table entries at
    the Beta(alpha, beta) quantiles of DDPM time, then 0. (diffusers' use_beta_sigmas spreads the same
    quantiles linearly in sigma instead: another schedule.)"""

    kind: ClassVar[str] = "beta"
    display: ClassVar[str] = "Beta"
    N: int
    alpha: float = 0.6
    beta: float = 0.6

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        _check_positive("alpha", self.alpha)
        _check_positive("beta", self.beta)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _then_zero(self.N, table, lambda n: beta_sigmas(n, table, self.alpha, self.beta))

    def describe(self) -> str:
        return f"beta N={self.N} alpha={self.alpha:g} beta={self.beta:g}, then 0"


@dataclass(frozen=True)
class Simple:
    """ComfyUI's "simple" (sd.cpp's too): N evenly strided entries of the DDPM table from the top, then 0."""

    kind: ClassVar[str] = "simple"
    display: ClassVar[str] = "Simple"
    N: int

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _then_zero(self.N, table, lambda n: simple(n, table))

    def describe(self) -> str:
        return f"simple N={self.N}, then 0"


@dataclass(frozen=True)
class SGMUniform:
    """ComfyUI's and sd.cpp's "sgm_uniform": N times uniform from t_max towards 0 (N + 1 spaced, the last
    dropped), then 0."""

    kind: ClassVar[str] = "sgm_uniform"
    display: ClassVar[str] = "SGM Uniform"
    N: int

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        return _then_zero(self.N, table, lambda n: sgm_uniform(n, table))

    def describe(self) -> str:
        return f"sgm_uniform N={self.N}, then 0"


@dataclass(frozen=True)
class KLOptimal:
    """ "kl_optimal" (A1111, ComfyUI, sd.cpp): uniform in arctan(sigma) over the schedule's range, the
    Align-Your-Steps paper's optimum for unit-variance Gaussian data (Sabour et al. 2024), then 0."""

    kind: ClassVar[str] = "kl_optimal"
    display: ClassVar[str] = "KL Optimal"
    N: int

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(self.N, schedule, lambda n: kl_optimal(n, lo, hi))

    def describe(self) -> str:
        return f"kl_optimal N={self.N}, then 0"


@dataclass(frozen=True)
class Polyexponential:
    """k-diffusion's `get_sigmas_polyexponential` (ComfyUI's PolyexponentialScheduler): log sigma moves
    as the ramp to the power rho over the schedule's range (rho = 1: exponential), then 0."""

    kind: ClassVar[str] = "polyexponential"
    display: ClassVar[str] = "Polyexponential"
    N: int
    rho: float = 1.0

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        _check_positive("rho", self.rho)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        return _then_zero(self.N, schedule, lambda n: polyexponential(n, lo, hi, self.rho))

    def describe(self) -> str:
        return f"polyexponential N={self.N} rho={self.rho:g}, then 0"


@dataclass(frozen=True)
class LinearQuadratic:
    """ComfyUI's "linear_quadratic" (from genmo's Mochi): sigma / sigma_max = 1 - s_i, s_i linear from 0 to
    `threshold` over the first `linear` steps (default N // 2), then the quadratic that reaches 1 at
    step N with matching slope; it ends at 0. Made for flow models; it spends the linear steps near
    sigma_max."""

    kind: ClassVar[str] = "linear_quadratic"
    display: ClassVar[str] = "Linear Quadratic"
    N: int
    threshold: float = 0.025  # ComfyUI's threshold_noise
    linear: int | None = None  # ComfyUI's linear_steps

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        _check_positive("threshold", self.threshold)
        if not self.threshold < 1:
            raise ValueError(f"threshold must be below 1 (a fraction of sigma_max), got {self.threshold!r}")
        if self.linear is not None and self.N > 1:
            _check_int("linear", self.linear, 1)
            if self.linear >= self.N:
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

    def describe(self) -> str:
        linear = self.N // 2 if self.linear is None else self.linear
        return f"linear_quadratic N={self.N} threshold={self.threshold:g} linear={linear}, ends at 0"


@dataclass(frozen=True)
class Diffusers:
    """The timesteps of diffusers' multistep schedulers (DPMSolverMultistep, UniPC, DEIS) with
    timestep_spacing `spacing` and steps_offset `offset` (SD's configs: 1), then 0 (their
    final_sigmas_type "zero"). Euler's spacings are `linspace` here and `schedule.uniform`."""

    kind: ClassVar[str] = "diffusers"
    display: ClassVar[str] = "diffusers"
    N: int
    spacing: str = "linspace"
    offset: int = 1

    def __post_init__(self) -> None:
        _check_int("N", self.N, 1)
        _check_choice("spacing", self.spacing, SPACINGS)
        _check_int("offset", self.offset, 0)

    def sigmas(self, schedule: NoiseSchedule) -> torch.Tensor:
        table = _table(schedule, self.kind)
        t = multistep_timesteps(self.N, int(table.t_max), self.spacing, self.offset)
        return append_zero(table.sigma(t))

    def describe(self) -> str:
        return f"diffusers N={self.N} spacing={self.spacing} offset={self.offset}, then 0"


def _last_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """A published row's last value replaced by 0 (diffusers', ComfyUI's and sd.cpp's AYS and GITS)."""
    return torch.cat([sigmas[:-1], sigmas.new_zeros(1)])


@dataclass(frozen=True)
class Searched:
    """The settings of an automated schedule search (`python -m solvers.search`, solvers/search/).

    A record, not a placement: the sigmas are the plan's own (rerunning the search is what would place
    them anew), so this kind is in `RECORDS`, which plans read back, and not in `DISCRETIZATIONS`,
    which a command line picks from.
    """

    kind: ClassVar[str] = "searched"
    display: ClassVar[str] = "Searched"
    COSTS: ClassVar[tuple[str, ...]] = ("local", "global")  # GITS's one-step cost, OSS's propagated one
    STAGES: ClassVar[tuple[str, ...]] = ("dp", "grid", "polish", "shift")  # in the order they run; dp first
    N: int
    solver: str
    nfe: int
    cost: str
    grid: int  # candidate noise levels, log-uniform from sigma_max to sigma_min, then 0
    samples: int
    seed: int
    stages: tuple[str, ...]
    teacher: str  # "exact" (the model's own solution) or the solver of the fine teacher solve
    substeps: int  # teacher steps per candidate interval (0 with an exact teacher)
    option: str | None = None  # the denoiser option switched on or off per step (freeu), if any
    decoded: bool = False  # whether the final cost was measured after the VAE decode
    model: str = ""  # what was searched: the denoiser's MODULE:CALLABLE or the weights' name
    rules: tuple[str, ...] = ()  # the rules each step chose from (`solver` auto or a list); () for one

    def __post_init__(self) -> None:
        for name in ("stages", "rules"):
            if isinstance(getattr(self, name), list):  # as JSON reads it back
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_int("N", self.N, 1)
        _check_int("nfe", self.nfe, 1)
        _check_int("grid", self.grid, 2)
        _check_int("samples", self.samples, 1)
        _check_int("seed", self.seed, 0)
        _check_int("substeps", self.substeps, 0)
        for name in ("solver", "teacher"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.cost not in self.COSTS:
            raise ValueError(f"cost must be one of {', '.join(self.COSTS)}, got {self.cost!r}")
        self.check_stages(self.stages)
        if self.option is not None and (not isinstance(self.option, str) or not self.option):
            raise ValueError(f"option must be null or an option's name, got {self.option!r}")
        if not isinstance(self.decoded, bool):
            raise ValueError(f"decoded must be true or false, got {self.decoded!r}")
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a string, got {self.model!r}")
        if not isinstance(self.rules, tuple) or not all(isinstance(r, str) and r for r in self.rules):
            raise ValueError(f"rules must be a list of solver names, got {self.rules!r}")

    @classmethod
    def check_stages(cls, stages: Any) -> tuple[str, ...]:
        """A search's stages: dp, then any of the refinements, in the order they run."""
        if (
            not isinstance(stages, tuple)
            or not stages
            or stages[0] != "dp"
            or any(stage not in cls.STAGES for stage in stages)
            or list(stages) != sorted(set(stages), key=cls.STAGES.index)
        ):
            raise ValueError(
                f"stages must be dp, then any of grid, polish, shift in that order, got {stages!r}"
            )
        return stages

    def describe(self) -> str:
        option = f", {self.option} on/off per step" if self.option else ""
        teacher = "exact teacher" if self.teacher == "exact" else f"teacher {self.teacher} x{self.substeps}"
        rules = f" ({len(self.rules)} rules per step)" if self.rules else ""
        return (
            f"searched {self.solver}{rules} {self.nfe} NFE{option}: {self.cost} cost on {self.grid} "
            f"levels + 0, "
            f"{self.samples} samples (seed {self.seed}), {teacher}, stages {'+'.join(self.stages)}"
            f"{', decoded cost' if self.decoded else ''}{f', {self.model}' if self.model else ''}"
        )


def _then_zero(n: int, schedule: NoiseSchedule, place: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """N steps as k-diffusion and diffusers make them: N - 1 placed steps, then one to sigma = 0 (a
    single step goes straight from sigma_max to 0)."""
    if n == 1:
        return torch.tensor([schedule.sigma_max, 0.0], dtype=torch.float64)
    return append_zero(place(n - 1))


Discretization = (
    Paper
    | Karras
    | Exponential
    | Linspace
    | AYS
    | GITS
    | Beta
    | Simple
    | SGMUniform
    | KLOptimal
    | Polyexponential
    | LinearQuadratic
    | Diffusers
    | Searched
)
DISCRETIZATIONS: dict[str, type] = {
    cls.kind: cls
    for cls in (Paper, Karras, Exponential, Linspace, AYS, GITS, Beta, Simple, SGMUniform, KLOptimal,
                Polyexponential, LinearQuadratic, Diffusers)
}  # fmt: skip
RECORDS: dict[str, type] = {**DISCRETIZATIONS, Searched.kind: Searched}  # every kind a plan may name


def discretization(kind: str, N: int, **knobs: Any) -> Discretization:
    """The discretization `kind` for N steps with the given knobs (the others at their defaults)."""
    if kind not in DISCRETIZATIONS:
        raise ValueError(f"unknown discretization {kind!r}; choose from {', '.join(DISCRETIZATIONS)}")
    return DISCRETIZATIONS[kind](N=N, **knobs)


def knobs(cls_or_kind: type | str) -> tuple[str, ...]:
    """The knob names of a discretization kind, N excluded."""
    cls = RECORDS[cls_or_kind] if isinstance(cls_or_kind, str) else cls_or_kind
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "N")


def to_dict(value: Discretization) -> dict[str, Any]:
    return {"kind": value.kind, **dataclasses.asdict(value)}


def from_dict(data: Mapping[str, Any]) -> Discretization:
    """Inverse of `to_dict`; raises ValueError naming the field that is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a discretization must be an object with a kind, got {data!r}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in RECORDS:
        raise ValueError(f"unknown discretization kind {kind!r}; choose from {', '.join(RECORDS)}")
    fields = {f.name for f in dataclasses.fields(RECORDS[kind])}
    unknown = sorted(set(data) - fields - {"kind"})
    if unknown or "N" not in data:
        problem = f"unknown fields {unknown}" if unknown else "no N"
        raise ValueError(f"the {kind} discretization has {problem}; it takes N, {', '.join(knobs(kind))}")
    return RECORDS[kind](**{k: v for k, v in data.items() if k != "kind"})
