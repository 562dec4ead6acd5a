"""The one solver table, and the one interface every step rule has.

    @solver(calls=1, order=2, short="2m", display="DPM++ 2M")
    def dpmpp_2m(x, denoised, step): ...

A rule is a plain function `rule(x, denoised, step) -> x_next`: x and D(x; sigma) at this step, already
evaluated by the loop, and `step`, the frozen record below, which holds everything else a rule may read.
Variants of one rule (UniPC's bh1 / bh2 and orders, an SDE's eta) are registered with `register` as
`functools.partial`s of it, each under its own name.

Plan validation, NFE counting, preset names (`karras-2m-20`), command-line choices and the PNG's
sampler text all read `SOLVERS`, so a rule registered anywhere (a test, a notebook) is usable by all
of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor


class Past(NamedTuple):
    """An earlier step as the loop saw it: its sigma, the x it started from, and D(x; sigma)."""

    sigma: float
    x: Tensor
    denoised: Tensor


@dataclass(frozen=True)
class Step:
    """What a rule knows of the step it takes from `sigma` to `sigma_next` (> 0; the loop itself
    returns D on a step into 0).

    - index, steps: i of the plan's N steps, for rules that lower their order on the last steps;
    - history: the earlier steps, most recent last (multistep predictor-correctors read x_j, D_j);
    - denoise(x, sigma) -> D with this step's options bound, for rules that evaluate again (Heun, 2S);
    - noise() -> a standard-normal tensor like x, for stochastic rules (drawn per image by the caller);
    - options: the step's per-step options as the prepared loop read them (solvers/options.py), for
      rules with a setting of their own (TCD's gamma).
    """

    index: int
    steps: int
    sigma: float
    sigma_next: float
    history: tuple[Past, ...]
    denoise: Callable[[Tensor, float], Tensor]
    noise: Callable[[], Tensor]
    options: Mapping[str, Any] = field(default_factory=dict)


def no_noise(why: str) -> Callable[[], Tensor]:
    """A `Step.noise` for callers that run deterministic rules only: drawing raises ValueError(why)."""

    def draw() -> Tensor:
        raise ValueError(why)

    return draw


Rule = Callable[[Tensor, Tensor, Step], Tensor]


@dataclass(frozen=True)
class Solver:
    name: str  # the rule's name, as plans store it: "dpmpp_2m"
    rule: Rule
    calls: int  # denoiser calls of a step into sigma_next > 0, the loop's own call included
    order: int  # order of the global error once the rule has its full history (weak order if stochastic)
    short: str  # its part of a preset name: "2m" in karras-2m-20
    display: str  # A1111's sampler name where A1111 has one: "DPM++ 2M"
    stochastic: bool = False  # draws step.noise(): sample() then needs a noise source
    to_zero: bool = False  # takes the step into sigma = 0 itself (LCM); else the loop returns D there


SOLVERS: dict[str, Solver] = {}


def register(entry: Solver) -> Solver:
    """Add `entry` to the table; names and short names must be new."""
    for taken in SOLVERS.values():
        if entry.name in (taken.name, taken.short) or entry.short in (taken.name, taken.short):
            raise ValueError(f"solver {entry.name!r} ({entry.short!r}) clashes with {taken.name!r}")
    if entry.calls < 1 or entry.order < 1:
        raise ValueError(f"solver {entry.name!r} needs calls >= 1 and order >= 1")
    SOLVERS[entry.name] = entry
    return entry


def solver(
    *, calls: int, order: int, short: str, display: str, stochastic: bool = False, to_zero: bool = False
) -> Callable[[Rule], Rule]:
    """Decorator: register the decorated step rule under its function name."""

    def declare(rule: Rule) -> Rule:
        register(Solver(rule.__name__, rule, calls, order, short, display, stochastic, to_zero))
        return rule

    return declare


def display_names() -> dict[str, str]:
    """A1111's name of each solver, as the PNG shows it ("DPM++ 2M"), -> its name ("dpmpp_2m")."""
    return {entry.display: entry.name for entry in SOLVERS.values()}


def by_short(short: str) -> Solver:
    for entry in SOLVERS.values():
        if entry.short == short:
            return entry
    raise KeyError(short)
