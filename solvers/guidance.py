"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any batched denoiser, and its
per-step option `guidance` (the scale w)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

import safeio
from solvers.options import Flag, Option, declare, number

Cond = Tensor | Mapping[str, Tensor]
DEFAULT_GUIDANCE = 7.5  # the paper's tables use 7.5 and 5.5


def check_guidance(value: Any) -> float:
    """The guidance scale w of a step: a finite number >= 0 (w = 1 is the conditional model alone)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return float(value)


declare(
    Option(
        "guidance",
        DEFAULT_GUIDANCE,
        check_guidance,
        label="CFG scale",
        after="Schedule type",
        always=True,
        stored=True,
        flags=(
            Flag(
                "--guidance",
                "classifier-free guidance scale w on every step; the paper's tables use 5.5 and 7.5 "
                "(default: the plan's, 7.5 for presets)",
                {"type": lambda text: safeio.number(number(text), 0), "metavar": "W"},
            ),
        ),
        # A plan's name records no guidance: the paper's tables compare scales of one plan.
        override=lambda plan, given: (given["guidance"], ""),
    )
)


def _expand(c: Cond, n: int) -> Cond:
    """A conditioning of batch 1 (or n) as batch n; dicts (SDXL: context and y) entry by entry."""
    if isinstance(c, Mapping):
        return {k: _expand(v, n) for k, v in c.items()}
    return c.expand(n, *c.shape[1:])


def _cat(a: Cond, b: Cond) -> Cond:
    if isinstance(a, Mapping):
        return {k: _cat(a[k], b[k]) for k in a}
    return torch.cat([a, b])


def guided(model: Callable[..., Tensor], cond: Cond, uncond: Cond) -> Callable[..., Tensor]:
    """D = D_u + w (D_c - D_u), with both halves run as ONE batch of 2B through `model`.

    `model(x, sigma, cond, **options) -> x0` is e.g. `model.Denoiser`; cond and uncond are tensors
    (or dicts of tensors) of batch B or 1. The returned `denoise(x, sigma, guidance=1.0, **options)`
    is what `solvers.sample` calls; the other options of the step go on to `model`. At w = 1 the
    formula is D_c, so only the conditional half runs.
    """

    def denoise(x: Tensor, sigma: float | Tensor, guidance: float = 1.0, **options: Any) -> Tensor:
        n = x.shape[0]
        if guidance == 1.0:
            return model(x, sigma, _expand(cond, n), **options)
        sigma_in = torch.cat([sigma, sigma]) if isinstance(sigma, Tensor) and sigma.ndim else sigma
        both = _cat(_expand(uncond, n), _expand(cond, n))
        d_uncond, d_cond = model(torch.cat([x, x]), sigma_in, both, **options).chunk(2)
        return d_uncond + guidance * (d_cond - d_uncond)

    return denoise
