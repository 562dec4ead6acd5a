"""A Plan: everything that decides a sampling run, and nothing else.

The sigmas, one solver per step, the per-step options the denoiser gets (guidance, FreeU, ...), the
final policy, and the discretization that made the sigmas (None when they were given as a list). It
round-trips through JSON exactly (floats are written with repr), so the JSON stored in an image
replays the run.

Options are data: `sample` passes step i's options to `denoise(x, sigma, **options)` without naming
them. Only "guidance" (consumed by `solvers.guidance.guided`) is checked here; the network side
checks its own (`model.Denoiser` takes "freeu"), so solvers know nothing of FreeU's fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import safeio
from schedule import discretizations
from schedule.discretizations import Discretization
from solvers.eval_shift import EVAL_SHIFT, check_eval_shift
from solvers.guidance import check_guidance
from solvers.table import SOLVERS

FINAL_POLICIES = ("keep", "denoise")
# Format 3: "dpmpp_3m" is the published DPM-Solver++(3M). Formats 1 (guidance and freeu as top-level
# lists, no discretization) and 2 are still read; their "dpmpp_3m" was the exact-quadratic rule.
PLAN_FORMAT = 3
RENAMED_SOLVERS = {1: {"dpmpp_3m": "dpmpp_3m_exact"}, 2: {"dpmpp_3m": "dpmpp_3m_exact"}}
OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {"guidance": check_guidance, EVAL_SHIFT: check_eval_shift}


class PlanError(ValueError):
    """A plan that cannot be run; the message says which part and why."""


def _per_step(value: Any, n: int, what: str) -> tuple:
    """One value for every step, or a list or tuple with exactly one per step."""
    if not isinstance(value, (list, tuple)):
        return (value,) * n
    if len(value) != n:
        raise PlanError(f"{what} has {len(value)} entries for {n} steps; give one value or one per step")
    return tuple(value)


def _json_value(value: Any, where: str) -> Any:
    """`value` as it reads back from JSON (tuples as lists), refused if JSON cannot hold it exactly."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanError(f"{where} is {value}; options must be finite")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise PlanError(
        f"{where} is {value!r}, which a plan's JSON cannot hold; use numbers, text, lists, objects"
    )


@dataclass(frozen=True, eq=True, init=False)
class Plan:
    """Plan(sigmas, solver="dpmpp_2m", guidance=7.5, freeu=None, final="keep", name="custom",
    *, discretization=None, **options).

    `solver`, `guidance`, `freeu` and every other option take one value for every step or a list with
    one per step (N = len(sigmas) - 1 steps). `final="keep"` returns x at the last sigma (the paper
    decodes it directly); `final="denoise"` returns D(x_N; sigma_N) at the cost of one more call.
    """

    sigmas: tuple[float, ...]
    solver: tuple[str, ...]
    options: dict[str, tuple]  # per-step options, column by column: {"guidance": (g_0, ...), ...}
    final: str
    name: str
    discretization: Discretization | None

    def __init__(
        self,
        sigmas: Sequence[float] | torch.Tensor,
        solver: str | Sequence[str] = "dpmpp_2m",
        guidance: float | Sequence[float] = 7.5,
        freeu: Mapping | Sequence[Mapping | None] | None = None,
        final: str = "keep",
        name: str = "custom",
        *,
        discretization: Discretization | None = None,
        **options: Any,
    ) -> None:
        values = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
        sigmas = tuple(float(s) for s in values)
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
        solvers = _per_step(solver, n, "solver")
        for i, entry in enumerate(solvers):
            if not isinstance(entry, str) or entry not in SOLVERS:
                raise PlanError(
                    f"unknown solver {safeio.short(entry)} at step {i}; choose from {', '.join(SOLVERS)}"
                )
        columns = {}
        for key, value in {"guidance": guidance, "freeu": freeu, **options}.items():
            check, column = OPTION_CHECKS.get(key), []
            for i, entry in enumerate(_per_step(value, n, key)):
                if check is not None:
                    try:
                        entry = check(entry)
                    except ValueError as err:
                        raise PlanError(f"{key} of step {i} {err}") from None
                column.append(_json_value(entry, f"{key} of step {i}"))
            columns[key] = tuple(column)
        if final not in FINAL_POLICIES:
            raise PlanError(f"final must be one of {FINAL_POLICIES}, got {final!r}")
        if final == "denoise" and sigmas[-1] == 0:
            raise PlanError("final='denoise' needs a last sigma > 0; this plan already ends at sigma = 0")
        if not isinstance(name, str) or not name:
            raise PlanError(f"name must be a non-empty string, got {name!r}")
        if discretization is not None and n != discretization.N:
            raise PlanError(f"the discretization has {discretization.N} steps but the plan {n}")
        parts = {"sigmas": sigmas, "solver": tuple(solvers), "options": columns, "final": final, "name": name}
        for key, value in {**parts, "discretization": discretization}.items():
            object.__setattr__(self, key, value)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def guidance(self) -> tuple[float, ...]:
        return self.options["guidance"]

    @property
    def freeu(self) -> tuple[dict | None, ...]:
        return self.options["freeu"]

    def step_options(self, i: int) -> dict[str, Any]:
        """The options of step i, as `denoise(x, sigma, **options)` gets them."""
        return {key: column[i] for key, column in self.options.items()}

    @property
    def nfe(self) -> int:
        """Denoiser calls (each one U-Net batch, conditional and unconditional together)."""
        calls = sum(SOLVERS[s].calls if self.sigmas[i + 1] > 0 else 1 for i, s in enumerate(self.solver))
        return calls + (self.final == "denoise")

    def replace(self, **changes: Any) -> Plan:
        """A copy with some parts changed: sigmas, solver, final, name, discretization, or any option
        (guidance=..., freeu=..., ...). New sigmas without a new discretization drop the old one."""
        parts = {"sigmas": self.sigmas, "solver": self.solver, "final": self.final, "name": self.name}
        parts["discretization"] = None if "sigmas" in changes else self.discretization
        options = dict(self.options)
        for key, value in changes.items():
            (parts if key in parts else options)[key] = value
        return Plan(**parts, **options)

    def with_guidance(self, guidance: float | Sequence[float]) -> Plan:
        return self.replace(guidance=guidance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "name": self.name,
            "sigmas": list(self.sigmas),
            "solver": list(self.solver),
            "options": {key: list(column) for key, column in self.options.items()},
            "final": self.final,
            "discretization": None
            if self.discretization is None
            else discretizations.to_dict(self.discretization),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        plan_format = data.get("format")
        layout = _LAYOUTS.get(plan_format) if type(plan_format) is int else None  # not `true`
        if layout is None:
            raise PlanError(
                f"unsupported plan format {data.get('format')!r}; this version reads formats "
                f"{', '.join(map(str, _LAYOUTS))}"
            )
        if set(data) != layout:
            raise PlanError(f"plan keys must be {sorted(layout)}, got {sorted(data)}")
        if data["format"] == 1:
            options = {"guidance": data["guidance"], "freeu": data["freeu"]}
            recipe = None
        else:
            options = data["options"]
            if not isinstance(options, Mapping) or "guidance" not in options or "freeu" not in options:
                raise PlanError("plan options must be an object with at least guidance and freeu")
            recipe = data["discretization"]
            try:
                recipe = None if recipe is None else discretizations.from_dict(recipe)
            except (ValueError, TypeError) as err:
                raise PlanError(f"plan discretization: {err}") from None
        sigmas = data["sigmas"]
        if not isinstance(sigmas, list) or not all(_is_number(s) for s in sigmas):
            raise PlanError(f"plan sigmas must be a list of numbers, got {_short(sigmas)}")
        for i, s in enumerate(sigmas):
            try:
                safeio.number(s)  # an integer beyond float64 overflows the tensor
            except ValueError as err:
                raise PlanError(f"plan sigma {i} {err}") from None
        solver = _renamed(data["solver"], data["format"])
        return cls(sigmas, solver, final=data["final"], name=data["name"], discretization=recipe, **options)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(safeio.parse_json(text, "the plan", "write it with Plan.to_json()", PlanError))

    def describe(self, render: Mapping[str, Callable[[Any], str]] | None = None) -> str:
        """One line per step: sigma interval, solver, then each option; `render` maps an option's name
        to how to show a value (the network side knows how FreeU reads; the default is generic)."""
        render = render or {}
        recipe = "" if self.discretization is None else f", {self.discretization.describe()}"
        lines = [f"{self.name}: {self.steps} steps, NFE {self.nfe}, final={self.final}{recipe}"]
        for i in range(self.steps):
            shown = " ".join(
                f"{key}={render.get(key, _text)(value)}" for key, value in self.step_options(i).items()
            )
            interval = f"{self.sigmas[i]:9.4f} -> {self.sigmas[i + 1]:<9.4f}"
            lines.append(f"  {i + 1:>3}  {interval} {self.solver[i]:<9} {shown}")
        return "\n".join(lines)


_LAYOUTS = {
    1: {"format", "name", "sigmas", "solver", "guidance", "freeu", "final"},
    2: {"format", "name", "sigmas", "solver", "options", "final", "discretization"},
    3: {"format", "name", "sigmas", "solver", "options", "final", "discretization"},
}


def _renamed(solver: Any, plan_format: int) -> Any:
    """A stored solver entry (a name or a list of them) under the name it has now."""
    if isinstance(solver, list):
        return [_renamed(s, plan_format) for s in solver]
    names = RENAMED_SOLVERS.get(plan_format, {})
    return names.get(solver, solver) if isinstance(solver, str) else solver


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value: Any) -> str:
    """An option value compactly: numbers with %g, None as off, objects as key=value lists."""
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)
