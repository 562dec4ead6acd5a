"""A plan's sigmas as other tools take a custom list, so its steps (the paper's, a searched plan's) can
be run there. Only the sigmas carry over: the solver, guidance and FreeU are chosen in each tool.

Each tool below steps down the list as given, to its last value, in float32. To get this plan's
final="keep" (decode x_N at sigma_N > 0, the paper's policy) give the list as is; final="denoise" is
one more call, D(x_N; sigma_N), which these tools make as a last step into 0, so the list they get
ends in 0 then (the step into 0 of their Euler and DPM++ samplers returns D).
"""

from __future__ import annotations

import numpy as np

from solvers.plan import Plan

TOOLS = {
    "ComfyUI ManualSigmas": (
        lambda values: ", ".join(values),
        "reads every number as given; SamplerCustom steps to the last one and returns that latent, so a "
        "last sigma > 0 keeps x_N (KSampler's own schedulers end at 0)",
    ),
    "stable-diffusion.cpp --sigmas": (
        lambda values: '"' + ",".join(values) + '"',
        "takes the list as given, N = its length - 1 steps, no 0 appended: a last sigma > 0 keeps x_N",
    ),
    "diffusers sigmas=": (
        lambda values: "[" + ", ".join(values) + "]",
        "for schedulers whose set_timesteps takes sigmas (EulerDiscreteScheduler): the list as given, last "
        "sigma kept; DPMSolverMultistep, UniPC and DEIS take only timesteps= and append their own 0",
    ),
}


def tool_sigmas(plan: Plan) -> list[float]:
    """The sigma list a tool needs for this plan: its sigmas, then 0 for final="denoise"."""
    return [*plan.sigmas, 0.0] if plan.final == "denoise" else list(plan.sigmas)


def listing(plan: Plan) -> str:
    """The plan as JSON (as a PNG stores it, readable by --plan), then its sigma list for each tool
    with a note on how that tool treats the final sigma."""
    # The shortest decimals that read back as the same float64, never in exponent notation.
    values = [np.format_float_positional(s, trim="-") for s in tool_sigmas(plan)]
    lines = [plan.to_json(), ""]
    for tool, (render, note) in TOOLS.items():
        lines += [f"{tool}:", f"  {render(values)}", f"  note: {note}"]
    return "\n".join([*lines, f"final={plan.final}: {_final_note(plan)}"])


def _final_note(plan: Plan) -> str:
    if plan.final == "denoise":
        return "the lists end in 0: their last step into 0 is this plan's final D(x_N; sigma_N)"
    if plan.sigmas[-1] > 0:
        return (
            f"the lists end at sigma_N = {plan.sigmas[-1]:.6g} > 0; the tools return x_N, as this plan does"
        )
    return "the lists end at 0, where every tool returns the denoised estimate"
