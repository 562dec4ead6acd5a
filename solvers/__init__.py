"""Step rules, the sampling loop, plans and presets, guidance. Solvers only see a callable
`denoise(x, sigma, **options) -> x0`; they know nothing of networks."""

# Importing the rule modules declares the built-in rules in the solver table, in this order.
from solvers import steps  # noqa: F401

# isort: split
from solvers import adams, stochastic, unipc  # noqa: F401
from solvers.guidance import guided
from solvers.loop import NoiseSource, StepInfo, generator_noise, sample
from solvers.plan import Plan, PlanError
from solvers.presets import Recipe, preset, preset_names
from solvers.table import SOLVERS, Past, Solver, Step, solver

# isort: split
# The search's record is a kind plans name: loaded with the solvers so that every plan file reads back.
from solvers.search.record import Searched

__all__ = [
    "SOLVERS",
    "NoiseSource",
    "Past",
    "Plan",
    "PlanError",
    "Recipe",
    "Searched",
    "Solver",
    "Step",
    "StepInfo",
    "generator_noise",
    "guided",
    "preset",
    "preset_names",
    "sample",
    "solver",
]
