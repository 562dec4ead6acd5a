"""Noise-level math and step placement. No networks here: only sigmas and times.

The noise schedule sigma(t) (`DiscreteSchedule`, `VPSDE`) belongs to a model; a discretization
(`schedule.discretizations`) says which noise levels a sampler visits."""

from schedule.discretizations import (
    AYS,
    DISCRETIZATIONS,
    RECORDS,
    Discretization,
    Exponential,
    Karras,
    Linspace,
    Paper,
    Searched,
    discretization,
)
from schedule.noise import VPSDE, DiscreteSchedule, NoiseSchedule
from schedule.spacing import (
    AYS_TABLES,
    append_zero,
    ays,
    exponential,
    karras,
    paper_sigmas,
    time_uniform,
    uniform,
)

__all__ = [
    "AYS",
    "AYS_TABLES",
    "DISCRETIZATIONS",
    "RECORDS",
    "VPSDE",
    "DiscreteSchedule",
    "Discretization",
    "Exponential",
    "Karras",
    "Linspace",
    "NoiseSchedule",
    "Paper",
    "Searched",
    "append_zero",
    "ays",
    "discretization",
    "exponential",
    "karras",
    "paper_sigmas",
    "time_uniform",
    "uniform",
]
