"""Noise-level math and step placement. No networks here: only sigmas and times."""

from schedule.noise import VPSDE, DiscreteSchedule, NoiseSchedule

__all__ = ["VPSDE", "DiscreteSchedule", "NoiseSchedule"]
