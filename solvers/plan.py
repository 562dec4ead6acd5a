"""A Plan: everything that decides a sampling run, and nothing else.

The sigmas, one solver per step, one guidance scale per step, one FreeU setting (or none) per
step, and the final policy. It round-trips through JSON exactly (floats are written with repr), so
the JSON stored in an image replays the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from solvers.steps import CALLS_PER_STEP, RULES

FINAL_POLICIES = ("keep", "denoise")
PLAN_FORMAT = 1

# A FreeU setting is stored as plain data; the network side (model.FreeU) gives it meaning.
FREEU_NUMBERS = ("b1", "b2", "s1", "s2")
FREEU_CHOICES = {"version": (1, 2), "placement": ("channels", "blocks")}


class PlanError(ValueError):
    """A plan that cannot be run; the message says which part and why."""


def _per_step(value: Any, n: int, what: str) -> tuple:
    """One value for every step, or a sequence with exactly one per step."""
    if isinstance(value, (str, Mapping)) or value is None or not isinstance(value, Sequence):
        return (value,) * n
    if len(value) != n:
        raise PlanError(f"{what} has {len(value)} entries for {n} steps; give one value or one per step")
    return tuple(value)


def _check_freeu(setting: Any, step: int) -> dict | None:
    if setting is None:
        return None
    if not isinstance(setting, Mapping):
        raise PlanError(
            f"freeu of step {step} must be null or an object with b1, b2, s1, s2, got {setting!r}"
        )
    unknown = sorted(set(setting) - set(FREEU_NUMBERS) - set(FREEU_CHOICES))
    missing = [k for k in FREEU_NUMBERS if k not in setting]
    if unknown or missing:
        raise PlanError(f"freeu of step {step}: unknown keys {unknown}, missing keys {missing}")
    checked: dict[str, Any] = {}
    for key in FREEU_NUMBERS:
        number = setting[key]
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or not math.isfinite(number)
            or number < 0
        ):
            raise PlanError(f"freeu of step {step}: {key} must be a finite number >= 0, got {number!r}")
        checked[key] = float(number)
    for key, allowed in FREEU_CHOICES.items():
        if key in setting:
            if setting[key] not in allowed:
                raise PlanError(f"freeu of step {step}: {key} must be one of {allowed}, got {setting[key]!r}")
            checked[key] = setting[key]
    return checked


@dataclass(frozen=True, eq=True)
class Plan:
    """Plan(sigmas, solver="dpmpp_2m", guidance=7.5, freeu=None, final="keep", name="custom").

    `solver`, `guidance` and `freeu` take one value for every step or a sequence with one per step
    (N = len(sigmas) - 1 steps). `final="keep"` returns x at the last sigma (the paper decodes it
    directly); `final="denoise"` returns D(x_N; sigma_N) at the cost of one more call.
    """

    sigmas: tuple[float, ...]
    solver: tuple[str, ...] | str = "dpmpp_2m"
    guidance: tuple[float, ...] | float = 7.5
    freeu: tuple[dict | None, ...] | dict | None = None
    final: str = "keep"
    name: str = "custom"

    def __post_init__(self) -> None:
        sigmas = tuple(float(s) for s in torch.as_tensor(self.sigmas, dtype=torch.float64).flatten().tolist())
        if len(sigmas) < 2:
            raise PlanError(f"a plan needs at least 2 sigmas (1 step), got {len(sigmas)}")
        for i, s in enumerate(sigmas):
            if not math.isfinite(s) or s < 0:
                raise PlanError(f"sigma {i} is {s}; sigmas must be finite and >= 0")
        for i in range(len(sigmas) - 1):
            if not sigmas[i + 1] < sigmas[i]:
                raise PlanError(
                    f"sigmas must strictly decrease, but sigma {i + 1} = {sigmas[i + 1]} >= {sigmas[i]}"
                )
        n = len(sigmas) - 1
        solvers = _per_step(self.solver, n, "solver")
        for i, name in enumerate(solvers):
            if name not in RULES:
                raise PlanError(f"unknown solver {name!r} at step {i}; choose from {', '.join(RULES)}")
        guidance = _per_step(self.guidance, n, "guidance")
        for i, g in enumerate(guidance):
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
                raise PlanError(f"guidance of step {i} must be a finite number >= 0, got {g!r}")
        freeu = tuple(_check_freeu(f, i) for i, f in enumerate(_per_step(self.freeu, n, "freeu")))
        if self.final not in FINAL_POLICIES:
            raise PlanError(f"final must be one of {FINAL_POLICIES}, got {self.final!r}")
        if self.final == "denoise" and sigmas[-1] == 0:
            raise PlanError("final='denoise' needs a last sigma > 0; this plan already ends at sigma = 0")
        if not isinstance(self.name, str) or not self.name:
            raise PlanError(f"name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "solver", solvers)
        object.__setattr__(self, "guidance", tuple(float(g) for g in guidance))
        object.__setattr__(self, "freeu", freeu)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def nfe(self) -> int:
        """Denoiser calls (each one U-Net batch, conditional and unconditional together)."""
        calls = sum(CALLS_PER_STEP[s] if self.sigmas[i + 1] > 0 else 1 for i, s in enumerate(self.solver))
        return calls + (self.final == "denoise")

    def with_guidance(self, guidance: float | Sequence[float]) -> Plan:
        return Plan(self.sigmas, self.solver, guidance, self.freeu, self.final, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "sigmas": list(self.sigmas),
            "solver": list(self.solver),
            "guidance": list(self.guidance),
            "freeu": [None if f is None else dict(f) for f in self.freeu],
            "final": self.final,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            raise PlanError(
                f"unsupported plan format {data.get('format')!r}; this version reads format {PLAN_FORMAT}"
            )
        expected = {"format", "name", "sigmas", "solver", "guidance", "freeu", "final"}
        if set(data) != expected:
            raise PlanError(f"plan keys must be {sorted(expected)}, got {sorted(data)}")
        return cls(
            data["sigmas"], data["solver"], data["guidance"], data["freeu"], data["final"], data["name"]
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """One line per step: sigma interval, solver, guidance, FreeU."""
        lines = [f"{self.name}: {self.steps} steps, NFE {self.nfe}, final={self.final}"]
        for i in range(self.steps):
            f = self.freeu[i]
            freeu = "off" if f is None else "/".join(f"{f[k]:g}" for k in FREEU_NUMBERS)
            lines.append(
                f"  {i + 1:>3}  {self.sigmas[i]:9.4f} -> {self.sigmas[i + 1]:<9.4f} {self.solver[i]:<9} "
                f"w={self.guidance[i]:g}  freeu={freeu}"
            )
        return "\n".join(lines)
