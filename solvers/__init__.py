"""Step rules, the sampling loop, plans and presets, guidance. Solvers only see a callable
`denoise(x, sigma, **options) -> x0`; they know nothing of networks (FreeU's settings, a per-step
option the U-Net takes, they carry and read with model.FreeU's own schema)."""

# Importing the rule modules declares the built-in rules in the solver table, in this order.
from solvers import steps  # noqa: F401

# isort: split
from solvers import adams, stochastic, unipc  # noqa: F401

# isort: split
# Importing the option modules declares the built-in per-step options, in this order (a plan's JSON
# holds their columns in it): guidance and its variants, then FreeU.
from solvers import guidance  # noqa: F401

# isort: split
from solvers import freeu  # noqa: F401

# isort: split
# The samplers of distilled models (LCM, TCD) and TCD's option gamma.
from solvers import distilled  # noqa: F401

# isort: split
# LD3's decoupled evaluation level, the option the loop applies itself.
from solvers import eval_shift  # noqa: F401

# isort: split
from solvers.guidance import guided
from solvers.loop import NoiseSource, NonFinite, Prepared, StepInfo, generator_noise, prepare, sample
from solvers.options import OPTIONS, Flag, Option, declare
from solvers.plan import Plan, PlanError
from solvers.presets import Recipe, preset, preset_names
from solvers.table import SOLVERS, Past, Solver, Step, solver

# isort: split
# The search's record is a kind plans name: loaded with the solvers so that every plan file reads back.
from solvers.search.record import Searched

__all__ = [
    "OPTIONS",
    "SOLVERS",
    "Flag",
    "NoiseSource",
    "NonFinite",
    "Option",
    "Past",
    "Plan",
    "PlanError",
    "Prepared",
    "Recipe",
    "Searched",
    "Solver",
    "Step",
    "StepInfo",
    "declare",
    "generator_noise",
    "guided",
    "prepare",
    "preset",
    "preset_names",
    "sample",
    "solver",
]
