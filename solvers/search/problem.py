"""What every stage of the search shares: the counted denoiser, the teacher, the rules a step may
take (one solver, a list, or `auto`: solvers/search/menu.py) and the NFE budget, the per-step options
with the optional on/off bit, and the final cost.

A candidate is a `Path`: grid indices from 0 (sigma_max) on, and per step whether the bit is on and
its rule. It becomes a `Plan` (sigmas, the rule of every step, options per step, after the "shift"
stage each step's eval_shift, final="keep"), and its final cost is the RMSE of what `solvers.sample`
returns for it against the teacher's x(0) over all search samples, after `decode` when one is given
(for real models: the VAE decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from schedule import Discretization
from solvers.analytic import rmse
from solvers.eval_shift import EVAL_SHIFT
from solvers.loop import sample
from solvers.options import denoiser_options, read_steps
from solvers.plan import Plan
from solvers.search.menu import rules
from solvers.search.teacher import Teacher
from solvers.table import SOLVERS


class Counted:
    """`denoise(x, sigma, **options)`, counting its calls; `progress(n)` hears of the n samples of each."""

    def __init__(self, denoise: Callable[..., Tensor], progress: Callable[[int], Any] | None = None):
        self.denoise, self.progress, self.calls = denoise, progress, 0

    def __call__(self, x: Tensor, sigma: float, **options: Any) -> Tensor:
        self.calls += 1
        if self.progress is not None:
            self.progress(len(x))
        return self.denoise(x, sigma, **options)


@dataclass(frozen=True)
class Cost:
    """A candidate's final cost: the RMSE over all search samples, and over each half of them."""

    total: float
    halves: tuple[float, ...]

    def beats(self, other: Cost) -> bool:
        """Lower on each half of the samples: a change that helps only some samples fits them, not the
        schedule, and the refinements do not take it."""
        return all(a < b for a, b in zip(self.halves, other.halves, strict=True))


@dataclass(frozen=True)
class Path:
    """Grid indices visited, 0 first, and per step whether the option bit is on and its rule."""

    nodes: tuple[int, ...]
    bits: tuple[bool, ...]
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    denoise: Counted
    teacher: Teacher
    solver: str  # a solver's name, a list `a,b,...` or `auto`: the rules of `menu`
    nfe: int
    options: Mapping[str, Any]  # every step's denoiser options
    bit: tuple[str, Any] | None = None  # (option, its value when on), switched per step; None when off
    decode: Callable[[Tensor], Tensor] | None = None
    target: Tensor = field(init=False, repr=False)  # the teacher's x(0), decoded when `decode` is given
    menu: tuple[str, ...] = field(init=False, repr=False)  # the rules a step may take
    # bit -> every step's options as the denoiser takes them (solvers/options.py), read once
    read: dict[bool, dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", self._decoded(self.teacher.x0))
        object.__setattr__(self, "menu", rules(self.solver))
        read = read_steps([self.step_options(on) for on in self.bits], self.teacher.x0.device)
        object.__setattr__(
            self, "read", {on: denoiser_options(r) for on, r in zip(self.bits, read, strict=True)}
        )

    @property
    def grid(self) -> tuple[float, ...]:
        return self.teacher.grid

    @property
    def steps(self) -> int:
        """The plan's step count N as lower-order-final rules read it while the DP builds a path: exact
        when every step takes one call (the rules that read it take one), NFE / calls for the others."""
        return max(1, self.nfe // min(SOLVERS[rule].calls for rule in self.menu))

    @property
    def bits(self) -> tuple[bool, ...]:
        """The values the bit can take: off only, unless an option is searched."""
        return (False,) if self.bit is None else (False, True)

    def step_options(self, on: bool) -> dict[str, Any]:
        if self.bit is None:
            return dict(self.options)
        name, value = self.bit
        return {**self.options, name: value if on else None}

    def final_cost(self, x: Tensor) -> float:
        """RMSE of a final state against the teacher's x(0), both decoded when `decode` is given."""
        return rmse(self._decoded(x), self.target)

    def final_costs(self, x: Tensor) -> Cost:
        """The final cost over all samples and over each half (one half when there is one sample)."""
        x, half = self._decoded(x), (len(x) + 1) // 2
        parts = (slice(0, half), slice(half, None)) if len(x) > 1 else (slice(None),)
        return Cost(rmse(x, self.target), tuple(rmse(x[part], self.target[part]) for part in parts))

    def _decoded(self, x: Tensor) -> Tensor:
        return x if self.decode is None else self.decode(x)

    def sigmas(self, path: Path) -> list[float]:
        return [self.grid[j] for j in path.nodes]

    def plan(
        self,
        sigmas: Sequence[float],
        bits: Sequence[bool],
        rules: Sequence[str],
        shifts: Sequence[float] | None = None,
        name: str = "candidate",
        discretization: Discretization | None = None,
    ) -> Plan:
        """The candidate's plan; `shifts`, when given, each step's eval_shift (solvers/eval_shift.py)."""
        per_step = [self.step_options(b) for b in bits]
        columns = {key: [options[key] for options in per_step] for key in per_step[0]}
        if shifts is not None:
            columns[EVAL_SHIFT] = list(shifts)
        return Plan(sigmas, list(rules), final="keep", name=name, discretization=discretization, **columns)

    def score(self, plan: Plan) -> float:
        """The final cost of `plan` sampled by `solvers.sample` from the teacher's start."""
        return self.final_cost(sample(self.denoise, self.teacher.states[0], plan))

    def run(
        self,
        sigmas: Sequence[float],
        bits: Sequence[bool],
        rules: Sequence[str],
        shifts: Sequence[float] | None = None,
    ) -> Cost:
        """The final costs of a candidate, sampled from the teacher's start by `solvers.sample`."""
        plan = self.plan(sigmas, bits, rules, shifts)
        return self.final_costs(sample(self.denoise, self.teacher.states[0], plan))


@dataclass(frozen=True)
class Stage:
    """One stage's plan, its final cost on the search samples, and the denoiser calls it made."""

    name: str
    plan: Plan
    cost: float
    calls: int


@dataclass(frozen=True)
class Result:
    plan: Plan  # the last stage's, named and with its Searched record
    stages: tuple[Stage, ...]
