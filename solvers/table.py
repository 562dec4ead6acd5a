"""The one solver table: every solver declared once, where its step rule is defined.

    @solver(calls=1, order=2, short="2m", display="DPM++ 2M")
    def dpmpp_2m(x, denoised, sigma, sigma_next, history, denoise): ...

Plan validation, NFE counting, preset names (`karras-2m-20`), command-line choices and the PNG's
sampler text all read `SOLVERS`, so a rule registered anywhere (a test, a notebook) is usable by all
of them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

Rule = Callable[..., Tensor]


@dataclass(frozen=True)
class Solver:
    name: str  # the rule's name, as plans store it: "dpmpp_2m"
    rule: Rule
    calls: int  # denoiser calls of a step into sigma_next > 0, the loop's own call included
    order: int  # order of the global error once the rule has its full history
    short: str  # its part of a preset name: "2m" in karras-2m-20
    display: str  # A1111's sampler name where A1111 has one: "DPM++ 2M"


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


def solver(*, calls: int, order: int, short: str, display: str) -> Callable[[Rule], Rule]:
    """Decorator: register the decorated step rule under its function name."""

    def declare(rule: Rule) -> Rule:
        register(Solver(rule.__name__, rule, calls, order, short, display))
        return rule

    return declare


def by_short(short: str) -> Solver:
    for entry in SOLVERS.values():
        if entry.short == short:
            return entry
    raise KeyError(short)
