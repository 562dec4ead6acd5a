"""Noise-level math and step placement. No networks here: only sigmas and times."""

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
    "AYS_TABLES",
    "VPSDE",
    "DiscreteSchedule",
    "NoiseSchedule",
    "append_zero",
    "ays",
    "exponential",
    "karras",
    "paper_sigmas",
    "time_uniform",
    "uniform",
]
