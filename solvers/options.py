"""The per-step options of a plan, declared once each: one `Option` says everything about it.

    declare(Option("guidance", 7.5, check_guidance, label="CFG scale", flags=(Flag("--guidance", ...),)))

A plan holds each option's JSON value per step (`Plan(..., guidance=[7.5, 5.0])`; an option absent
from a plan is its default). Before the first step, the prepared loop turns each distinct value into
what the denoiser takes (`read`, on the device); the command line adds its flags
(cli/generation.py); the plan's name, `Plan.describe` and the PNG's parameters line show it with
`render`. Options nobody declared ride along in a plan as they are (an analytic denoiser's own),
unchecked.

The built-in ones are declared by the modules of their consumers: `guidance` (solvers/guidance.py),
`freeu` (solvers/freeu.py, read as model.FreeU for the U-Net), TCD's `gamma` (solvers/distilled.py)
and the loop's `eval_shift` (solvers/eval_shift.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

import safeio

if TYPE_CHECKING:
    from solvers.plan import Plan


def text(value: Any) -> str:
    """An option value compactly: numbers with %g, None as off, objects as key=value lists."""
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)


def render(key: str, value: Any) -> str:
    """One step's value of option `key` as its declaration shows it (generic text if undeclared)."""
    return OPTIONS[key].render(value) if key in OPTIONS else text(value)


def number(flag_text: str) -> float:
    """A flag's text as a float; ValueError says what it was."""
    try:
        return float(flag_text)
    except ValueError:
        raise ValueError(f"{safeio.short(flag_text)} is not a number") from None


def _as_is(value: Any, device: torch.device) -> Any:
    return value


@dataclass(frozen=True)
class Flag:
    """A command-line flag of an option: argparse's `add_argument(name, help=help, **kwargs)`; a `type`
    in kwargs raises ValueError saying what is wrong with the text, shown as the flag's error."""

    name: str
    help: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.name.removeprefix("--").replace("-", "_"))


@dataclass(frozen=True)
class Option:
    """One per-step option.

    - check(value) -> the value as the plan stores it (JSON), or ValueError saying why not;
    - read(value, device) -> what `denoise(x, sigma, **options)` gets, once per run and distinct value;
    - render(value) -> one step's value as text (plan names, `Plan.describe`, the PNG line);
    - label: its key in the PNG's parameters line, after the key `after`; shown unless every step
      holds the default, or always with `always`; None: not in that line;
    - stored: a column of every plan, the default filling it where not given (guidance and freeu,
      which every plan format holds); other options are in a plan only where given;
    - rule_only: read by the step rules or the loop alone (`Step.options`, e.g. TCD's gamma; the
      loop's eval_shift), never passed to the denoiser;
    - flags, and `override(plan, given) -> (per-step values or None, text for the plan's name)` from
      the flags' values by dest (None: not given). Without `override`, one flag's value goes on every
      step and the name records name=value.
    """

    name: str
    default: Any
    check: Callable[[Any], Any]
    read: Callable[[Any, torch.device], Any] = _as_is
    render: Callable[[Any], str] = text
    label: str | None = None
    after: str = "Model"
    always: bool = False
    stored: bool = False
    flags: tuple[Flag, ...] = ()
    override: Callable[[Plan, Mapping[str, Any]], tuple[Any, str]] | None = None
    rule_only: bool = False

    @property
    def dests(self) -> tuple[str, ...]:
        """Where its flags' values go (--freeu and --no-freeu share one)."""
        return tuple(dict.fromkeys(flag.dest for flag in self.flags))

    def overridden(self, plan: Plan, given: Mapping[str, Any]) -> tuple[Any, str]:
        """The per-step values its flags ask for (None: the plan's own) and how the name records them."""
        if self.override is not None:
            return self.override(plan, given)
        [value] = given.values()
        return (None, "") if value is None else (value, f"{self.name}={self.render(value)}")


OPTIONS: dict[str, Option] = {}


def declare(option: Option) -> Option:
    """Add `option` to the registry (a second declaration of a name replaces the first)."""
    OPTIONS[option.name] = option
    return option


def read_steps(steps: Sequence[Mapping[str, Any]], device: torch.device) -> tuple[dict[str, Any], ...]:
    """Steps' options as the denoiser takes them: every declared one (its default where a step has none)
    `read` for `device` once per distinct value (steps with equal settings share one object, and its
    tensors), undeclared ones as given."""
    done: dict[tuple[str, str], Any] = {}

    def value(key: str, entry: Any) -> Any:
        if key not in OPTIONS:
            return entry
        seen = (key, json.dumps(entry, sort_keys=True))
        if seen not in done:
            done[seen] = OPTIONS[key].read(entry, device)
        return done[seen]

    defaults = {key: option.default for key, option in OPTIONS.items()}
    return tuple({key: value(key, entry) for key, entry in {**defaults, **step}.items()} for step in steps)


def denoiser_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A step's options as `denoise(x, sigma, **options)` takes them: all but the `rule_only` ones."""
    return {key: value for key, value in options.items() if key not in OPTIONS or not OPTIONS[key].rule_only}
