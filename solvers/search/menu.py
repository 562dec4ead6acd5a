"""Which step rules a search may put on a step: one solver, a list of them, or `auto`, every
deterministic one-call rule of the solver table (chosen per step, the history carried as the plan
runs it). `auto` leaves out the two-call rules (Heun, DPM++2S): each would add its second call on
every edge of the DP, 30 times its calls at 5 NFE on 40 levels; a list may name them."""

from __future__ import annotations

import safeio
from solvers.table import SOLVERS

AUTO = "auto"


def deterministic() -> tuple[str, ...]:
    """Every rule of the table that adds no noise, in table order."""
    return tuple(name for name, entry in SOLVERS.items() if not entry.stochastic)


def rules(spec: str) -> tuple[str, ...]:
    """The rules of `spec`: a solver's name, `a,b,...`, or `auto`; ValueError naming what is wrong."""
    if spec == AUTO:
        return tuple(name for name in deterministic() if SOLVERS[name].calls == 1)
    names = tuple(part.strip() for part in spec.split(","))
    for name in names:
        if name not in SOLVERS:
            raise ValueError(safeio.unknown("solver", name, [AUTO, *SOLVERS] if len(names) == 1 else SOLVERS))
        if SOLVERS[name].stochastic:
            raise ValueError(f"{name} adds noise at every step; the search compares deterministic paths only")
    if len(set(names)) != len(names):
        raise ValueError(f"solver list {spec!r} names a rule twice")
    return names


def label(spec: str) -> str:
    """A search's part of a plan name: the solver's short name, `auto`, or `mixed` for a list."""
    if spec in SOLVERS:
        return SOLVERS[spec].short
    return AUTO if spec == AUTO else "mixed"
