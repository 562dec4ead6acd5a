"""Few-step error of each guidance variant on an exact guided model (`python -m solvers.analyze
--guidance`).

On analytic.ConditionalMixture every variant's guided D is exact, so its probability-flow ODE
dx/dsigma = (x - D_guided(x; sigma)) / sigma is a definite ODE; a plan's error is the RMSE of its
output against a 200-step Heun solution of the same guided ODE, uniform in log sigma from the plan's
first sigma to its last (through its last positive sigma into 0 where it ends at 0), from the same x_T.
Weight schedules and APG's momentum are left out: they depend on the steps, not on sigma, so there is
no plan-independent ODE to compare with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from schedule import append_zero, exponential
from solvers.analytic import ConditionalMixture
from solvers.guidance import DEFAULT_GUIDANCE
from solvers.loop import sample
from solvers.plan import Plan
from solvers.presets import preset

REFERENCE_STEPS = 200
NFE_COUNTS = (4, 5, 6, 8, 10)
PRESETS = ("paper-5", "paper-6", "paper-8")
BASELINES = ("karras-2m", "karras-euler")
# Each variant's options on every step; the interval (0.28, 5.42] is the community nodes' default.
VARIANTS: dict[str, dict[str, Any]] = {
    "cfg": {},
    "interval 0.28-5.42": {"guidance_interval": [0.28, 5.42]},
    "below 5": {"guidance_interval": [0.0, 5.0]},
    "rescale 0.7": {"cfg_rescale": 0.7},
    "apg eta 0": {"apg": {"eta": 0.0, "norm_threshold": 0.0, "momentum": 0.0}},
    "cfg-zero*": {"cfg_zero_star": True},
}


def with_options(plan: Plan, options: Mapping[str, Any]) -> Plan:
    """`plan` with each option on every step (a list-valued one repeated, not read as per-step)."""
    return plan.replace(**{k: [v] * plan.steps if isinstance(v, list) else v for k, v in options.items()})


def reference_plan(plan: Plan) -> Plan:
    """REFERENCE_STEPS Heun steps uniform in log sigma over the plan's range, with its guidance."""
    ends_at_zero = plan.sigmas[-1] == 0
    sigmas = exponential(REFERENCE_STEPS, plan.sigmas[-2 if ends_at_zero else -1], plan.sigmas[0])
    sigmas = append_zero(sigmas) if ends_at_zero else sigmas
    return Plan(sigmas, "heun", guidance=plan.guidance[0], name=f"reference-{REFERENCE_STEPS}")


def guided_error(model: ConditionalMixture, x: Tensor, plan: Plan, options: Mapping[str, Any]) -> float:
    """RMSE of `plan` with `options` against the reference solution of the same guided ODE."""
    few = sample(model.guided(), x.clone(), with_options(plan, options))
    exact = sample(model.guided(), x.clone(), with_options(reference_plan(plan), options))
    return float(((few - exact) ** 2).mean().sqrt())


def plans(guidance: float = DEFAULT_GUIDANCE) -> list[Plan]:
    """The paper's SD 1.5 presets, then each baseline at every NFE count, at scale `guidance`."""
    names = [*PRESETS, *(f"{base}-{n}" for base in BASELINES for n in NFE_COUNTS)]
    return [preset(name).replace(guidance=guidance) for name in names]


def guidance_table(
    model: ConditionalMixture, x: Tensor, rows: Sequence[Plan], variants: Mapping[str, Mapping] = VARIANTS
) -> dict[str, dict[str, float]]:
    """Plan name -> variant -> RMSE against its own guided ODE's reference solution."""
    return {plan.name: {v: guided_error(model, x, plan, o) for v, o in variants.items()} for plan in rows}


def format_guidance_table(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    variants = list(next(iter(table.values())))
    width = max(len(v) for v in variants) + 2
    lines = [f"{'plan':<18}" + "".join(f"{v:>{width}}" for v in variants)]
    for name, row in table.items():
        lines.append(f"{name:<18}" + "".join(f"{row[v]:>{width}.4f}" for v in variants))
    return lines
