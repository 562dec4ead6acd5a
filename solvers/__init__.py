"""Step rules, the sampling loop, plans and presets, guidance. Solvers only see a callable
`denoise(x, sigma, **options) -> x0`; they know nothing of networks."""

from solvers.guidance import guided
from solvers.loop import StepInfo, sample
from solvers.plan import Plan, PlanError
from solvers.presets import preset, preset_names
from solvers.steps import RULES

__all__ = ["RULES", "Plan", "PlanError", "StepInfo", "guided", "preset", "preset_names", "sample"]
