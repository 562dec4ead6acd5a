"""Step rules, the sampling loop, plans and presets, guidance. Solvers only see a callable
`denoise(x, sigma, **options) -> x0`; they know nothing of networks."""

from solvers import steps  # noqa: F401  (declares the built-in rules in the solver table)
from solvers.guidance import guided
from solvers.loop import StepInfo, sample
from solvers.plan import Plan, PlanError
from solvers.presets import Recipe, preset, preset_names
from solvers.table import SOLVERS, Solver, solver

__all__ = [
    "SOLVERS",
    "Plan",
    "PlanError",
    "Recipe",
    "Solver",
    "StepInfo",
    "guided",
    "preset",
    "preset_names",
    "sample",
    "solver",
]
