"""FreeU (model/freeu.py) as the per-step option `freeu`: a plan stores a step's setting as FreeU's dict
of fields (None: off), the prepared loop reads it once per run as a `model.FreeU` with its factors on
the device, and the command line sets it with --freeu, --no-freeu, --freeu-version and --freeu-steps.

FreeU's fields and checks are model.FreeU's own (the one schema); the U-Net applies it, the solvers
only carry it from step to step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

import safeio
from model.freeu import FreeU
from solvers.options import Flag, Option, declare, number
from solvers.plan import Plan
from solvers.presets import PAPER_FREEU, window


def freeu_option(
    values: Sequence[float] | None = None, version: int = 1, placement: str = "channels"
) -> dict:
    """A FreeU setting as a plan stores it, checked by FreeU; `values` (b1, b2, s1, s2) default to the
    paper's."""
    if values is None:
        values = [PAPER_FREEU[k] for k in ("b1", "b2", "s1", "s2")]
    b1, b2, s1, s2 = values
    return FreeU(b1, b2, s1, s2, version=version, placement=placement).to_dict()


def _check(value: Any) -> Any:
    """A step's setting, refused unless FreeU reads it; stored as given."""
    FreeU.option(value)
    return value


def _read(value: Any, device: torch.device) -> FreeU | None:
    setting = FreeU.option(value)
    return None if setting is None else setting.to(device)


def _render(value: Any) -> str:
    setting = FreeU.option(value)
    return "off" if setting is None else setting.text()


def _values(flag_text: str) -> tuple[float, ...]:
    """--freeu B1,B2,S1,S2: four numbers >= 0."""
    parts = flag_text.split(",")
    if len(parts) != 4:
        raise ValueError(f"give four numbers B1,B2,S1,S2 such as 1.1,1.2,0.9,0.2, got {flag_text!r}")
    return tuple(safeio.number(number(part), 0) for part in parts)


def _version(flag_text: str) -> int:
    if flag_text not in ("1", "2"):
        raise ValueError(f"FreeU's version is 1 or 2, got {safeio.short(flag_text)}")
    return int(flag_text)


def _override(plan: Plan, given: Mapping[str, Any]) -> tuple[tuple | None, str]:
    """The per-step settings the flags ask for (None: the plan's own) and how the name records them:
    --no-freeu is off everywhere; --freeu alone the paper's values, with B1,B2,S1,S2 those; the
    version and the window (e.g. "2-4,6") apply to those or, without --freeu, to the plan's own."""
    freeu, version, steps, n = given["freeu"], given["freeu_version"], given["freeu_steps"], plan.steps
    if freeu is False:
        if version is not None or steps is not None:
            raise safeio.InputError("{no_freeu} goes with neither {freeu_version} nor {freeu_steps}")
        return (None,) * n, "no-freeu"
    if freeu is None and version is None and steps is None:
        return None, ""
    if freeu is None:
        own = [f for f in plan.freeu if f is not None]
        if not own:
            raise safeio.InputError(
                "this plan has no FreeU setting to change; give its values with {freeu} B1,B2,S1,S2"
            )
        if steps is not None and any(f != own[0] for f in own):
            raise safeio.InputError(
                "this plan has several FreeU settings; give the one to window with {freeu}"
            )
        changed = {} if version is None else {"version": version}
        per_step = tuple(None if f is None else {**f, **changed} for f in plan.freeu)
        if steps is not None:
            per_step = window(steps, {**own[0], **changed}, n)
        label = "freeu" if version is None else f"freeu-v{version}"
    else:
        setting = freeu_option(None if freeu is True else freeu, 1 if version is None else version)
        per_step = (setting,) * n if steps is None else window(steps, setting, n)
        label = "freeu" if freeu is True and version is None else f"freeu={_render(setting)}"
    return per_step, label + ("" if steps is None else f"@{steps}")


declare(
    Option(
        "freeu",
        None,
        _check,
        read=_read,
        render=_render,
        label="FreeU",
        stored=True,
        flags=(
            Flag(
                "--freeu",
                "FreeU with these factors (alone: the paper's 1.1,1.1,0.9,0.2) on every step or on "
                "--freeu-steps (default: the plan's)",
                {"nargs": "?", "const": True, "type": _values, "metavar": "B1,B2,S1,S2"},
            ),
            Flag(
                "--no-freeu",
                "FreeU off on every step",
                {"dest": "freeu", "action": "store_const", "const": False},
            ),
            Flag(
                "--freeu-version",
                "FreeU's backbone formula: 1 (the paper's) or 2 (default: the plan's, 1 in every preset)",
                {"type": _version, "metavar": "1|2"},
            ),
            Flag(
                "--freeu-steps",
                "FreeU only on these steps, 1-based, e.g. 2-4,6 (default: every step, or the plan's window)",
                {"metavar": "WINDOW"},
            ),
        ),
        override=_override,
    )
)
