"""Noise-level math and step placement. No networks here: only sigmas and times.

The noise schedule sigma(t) (`DiscreteSchedule`, `VPSDE`) belongs to a model; a discretization
(`schedule.discretizations`, one class per kind) says which noise levels a sampler visits."""

from schedule.discretizations import (
    AYS,
    AYS_TABLES,
    DISCRETIZATIONS,
    GITS,
    RECORDS,
    Beta,
    Diffusers,
    Discretization,
    Exponential,
    Karras,
    KLOptimal,
    LinearQuadratic,
    Linspace,
    Paper,
    Polyexponential,
    SGMUniform,
    Simple,
    discretization,
    knob,
)
from schedule.noise import VPSDE, DiscreteSchedule, NoiseSchedule
from schedule.spacing import (
    append_zero,
    exponential,
    karras,
    loglinear,
    paper_sigmas,
    time_uniform,
    uniform,
)

__all__ = [
    "AYS",
    "AYS_TABLES",
    "DISCRETIZATIONS",
    "GITS",
    "RECORDS",
    "VPSDE",
    "Beta",
    "Diffusers",
    "DiscreteSchedule",
    "Discretization",
    "Exponential",
    "KLOptimal",
    "Karras",
    "LinearQuadratic",
    "Linspace",
    "NoiseSchedule",
    "Paper",
    "Polyexponential",
    "SGMUniform",
    "Simple",
    "append_zero",
    "discretization",
    "exponential",
    "karras",
    "knob",
    "loglinear",
    "paper_sigmas",
    "time_uniform",
    "uniform",
]
