"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any batched denoiser, its
per-step options and the variants made for few steps (facts: distilled-and-guidance.md, section 6):

- `guidance`: the scale w, constant or a weight schedule (--guidance-schedule, Wang et al. 2024);
- `guidance_interval`: [lo, hi]: a call at sigma outside (lo, hi] runs the conditional model alone
  (Kynkaanniemi et al. 2024), one batch-B pass instead of 2B;
- `cfg_rescale`: phi, the guided noise prediction's std pulled back to the conditional one's (Lin et
  al. 2023, diffusers' `rescale_noise_cfg`);
- `apg`: adaptive projected guidance (Sadat et al. 2024, diffusers' `AdaptiveProjectedGuidance`);
- `cfg_zero_star`: the unconditional prediction scaled by s* (Fan et al. 2025, diffusers'
  `ClassifierFreeZeroStarGuidance`, without its zero-init steps).

Spaces: the model gives x0 predictions D(x; sigma); eps = (x - D) / sigma and D = x - sigma eps at
the call's sigma. CFG is the same in both; APG works on D (as its paper); CFG-Zero* and the rescale
on eps (as diffusers applies them to SD's noise prediction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

import safeio
from solvers.options import Flag, Option, declare, number

if TYPE_CHECKING:
    from solvers.plan import Plan

Cond = Tensor | Mapping[str, Tensor]
DEFAULT_GUIDANCE = 7.5  # the paper's tables use 7.5 and 5.5
SCHEDULES = ("linear", "cosine")
ZERO_STAR_EPS = 1e-8  # diffusers' guard in s* = <c, u> / (||u||^2 + eps)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_guidance(value: Any) -> float:
    """The guidance scale w of a step: a finite number >= 0 (w = 1 is the conditional model alone)."""
    if not _finite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return float(value)


def weight_schedule(kind: str, w0: float, w1: float, steps: int) -> tuple[float, ...]:
    """Per-step scales from w0 at the first step to w1 at the last, t_i = i / (N - 1):
    linear w0 + (w1 - w0) t_i, cosine w1 + (w0 - w1) (1 + cos(pi t_i)) / 2 (the linear and cosine
    schedulers of Wang et al. 2024, "Analysis of Classifier-Free Guidance Weight Schedulers", over the
    steps; increasing ones, w0 < w1, are the ones they recommend)."""
    if kind not in SCHEDULES:
        raise ValueError(
            f"unknown guidance schedule {safeio.short(kind)}; choose from {', '.join(SCHEDULES)}"
        )
    t = [i / (steps - 1) if steps > 1 else 0.0 for i in range(steps)]
    if kind == "linear":
        return tuple(w0 + (w1 - w0) * ti for ti in t)
    return tuple(w1 + (w0 - w1) * (1 + math.cos(math.pi * ti)) / 2 for ti in t)


def _numbers(flag_text: str, count: range, what: str) -> list[float]:
    parts = flag_text.split(",")
    if len(parts) not in count:
        raise ValueError(f"give {what}, got {safeio.short(flag_text)}")
    return [safeio.number(number(part)) for part in parts]


def _schedule_flag(flag_text: str) -> tuple[str, float, float]:
    """--guidance-schedule KIND:W0,W1."""
    kind, _, values = flag_text.partition(":")
    if kind not in SCHEDULES:
        raise ValueError(f"give linear:W0,W1 or cosine:W0,W1, got {safeio.short(flag_text)}")
    w0, w1 = (check_guidance(w) for w in _numbers(values, range(2, 3), "KIND:W0,W1 such as linear:1,7.5"))
    return kind, w0, w1


def _guidance_override(plan: Plan, given: Mapping[str, Any]) -> tuple[Any, str]:
    """--guidance W on every step, or --guidance-schedule's per-step scales. A plan's name records
    neither: the paper's tables compare scales of one plan."""
    if given["guidance"] is not None and given["guidance_schedule"] is not None:
        raise safeio.InputError("give {guidance} or {guidance_schedule}, not both")
    if given["guidance_schedule"] is not None:
        return weight_schedule(*given["guidance_schedule"], plan.steps), ""
    return given["guidance"], ""


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
            Flag(
                "--guidance-schedule",
                "per-step scales from W0 at the first step to W1 at the last, linear or cosine "
                "(Wang et al. 2024), e.g. linear:1,7.5",
                {"type": _schedule_flag, "metavar": "KIND:W0,W1"},
            ),
        ),
        override=_guidance_override,
    )
)


def check_interval(value: Any) -> list[float] | None:
    """[lo, hi]: guide a call at sigma only where lo < sigma <= hi; 0 <= lo < hi finite. None: always."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_finite(v) for v in value):
        raise ValueError(f"must be [sigma_lo, sigma_hi], two finite numbers, or none; got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not 0 <= lo < hi:
        raise ValueError(f"needs 0 <= sigma_lo < sigma_hi, got [{lo:g}, {hi:g}]")
    return [lo, hi]


def _interval_text(value: Any) -> str:
    return "off" if value is None else f"{value[0]:g}..{value[1]:g}"


def _interval_flag(flag_text: str) -> list[float] | None:
    """--guidance-interval LO,HI (sigmas)."""
    return check_interval(_numbers(flag_text, range(2, 3), "LO,HI (sigmas) such as 0.28,5.42"))


def _steps_flag(flag_text: str) -> tuple[float, float]:
    """--guidance-steps START,STOP: fractions of the steps, 0 <= START < STOP <= 1."""
    start, stop = _numbers(flag_text, range(2, 3), "START,STOP (fractions of the steps) such as 0,0.6")
    if not 0 <= start < stop <= 1:
        raise ValueError(f"needs 0 <= START < STOP <= 1, got {safeio.short(flag_text)}")
    return start, stop


def steps_interval(plan: Plan, start: float, stop: float) -> list[float]:
    """diffusers' step window int(start N) <= i < int(stop N) as the sigma interval (sigma_b, sigma_a]
    that holds exactly those steps' sigmas (the plan's sigmas strictly decrease)."""
    a, b = int(start * plan.steps), int(stop * plan.steps)
    if a >= b:
        raise safeio.InputError(
            "{guidance_steps} {start:g},{stop:g} guides no step of this {steps_}-step plan",
            start=start,
            stop=stop,
            steps_=plan.steps,
        )
    return [plan.sigmas[b], plan.sigmas[a]]


def _interval_override(plan: Plan, given: Mapping[str, Any]) -> tuple[Any, str]:
    interval, window = given["guidance_interval"], given["guidance_steps"]
    if interval is not None and window is not None:
        raise safeio.InputError("give {guidance_interval} or {guidance_steps}, not both")
    # One [lo, hi] per step: a plan reads a bare list as one value per step.
    if window is not None:
        return (steps_interval(plan, *window),) * plan.steps, f"guidance-steps={window[0]:g},{window[1]:g}"
    return (interval,) * plan.steps, f"guidance-interval={_interval_text(interval)}"


declare(
    Option(
        "guidance_interval",
        None,
        check_interval,
        render=_interval_text,
        label="Guidance interval",
        after="Schedule type",  # after CFG scale: declared after it
        flags=(
            Flag(
                "--guidance-interval",
                "guide only calls at sigma in (LO, HI] (Kynkaanniemi et al. 2024; e.g. 0.28,5.42); "
                "elsewhere the conditional model alone, one pass instead of two",
                {"type": _interval_flag, "metavar": "LO,HI"},
            ),
            Flag(
                "--guidance-steps",
                "guide only steps int(START N) <= i < int(STOP N), as diffusers' guiders' start and stop",
                {"type": _steps_flag, "metavar": "START,STOP"},
            ),
        ),
        override=_interval_override,
    )
)


def check_rescale(value: Any) -> float:
    """phi in [0, 1] (0: off)."""
    if not _finite(value) or not 0 <= value <= 1:
        raise ValueError(f"must be a number in [0, 1], got {value!r}")
    return float(value)


declare(
    Option(
        "cfg_rescale",
        0.0,
        check_rescale,
        label="CFG rescale",
        after="Schedule type",  # after CFG scale: declared after it
        flags=(
            Flag(
                "--cfg-rescale",
                "pull the guided noise prediction's std back to the conditional one's by PHI in [0, 1] "
                "(Lin et al. 2023; 0.7 in their paper)",
                {"type": lambda text: check_rescale(safeio.number(number(text))), "metavar": "PHI"},
            ),
        ),
        override=lambda plan, given: (given["cfg_rescale"], f"cfg-rescale={given['cfg_rescale']:g}"),
    )
)


@dataclass(frozen=True)
class APG:
    """Adaptive projected guidance's settings: the parallel part's weight eta >= 0, the norm clip of
    the difference (0: none) and the momentum of its running average (diffusers' defaults 15, none)."""

    eta: float
    norm_threshold: float = 15.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if not _finite(self.eta) or self.eta < 0:
            raise ValueError(f"apg eta must be a finite number >= 0, got {self.eta!r}")
        if not _finite(self.norm_threshold) or self.norm_threshold < 0:
            raise ValueError(f"apg norm_threshold must be a finite number >= 0, got {self.norm_threshold!r}")
        if not _finite(self.momentum) or not -1 < self.momentum < 1:
            raise ValueError(f"apg momentum must be a number in (-1, 1), got {self.momentum!r}")

    @classmethod
    def option(cls, value: Any) -> APG | None:
        """A plan's stored value as settings (None: off); ValueError naming a bad field."""
        if value is None:
            return None
        fields = ("eta", "norm_threshold", "momentum")
        if not isinstance(value, Mapping) or "eta" not in value or set(value) - set(fields):
            raise ValueError(
                f"must be none or an object with eta and optionally norm_threshold, momentum; got {value!r}"
            )
        return cls(**value)

    def to_dict(self) -> dict[str, float]:
        return {
            "eta": float(self.eta),
            "norm_threshold": float(self.norm_threshold),
            "momentum": float(self.momentum),
        }


def _apg_flag(flag_text: str) -> dict[str, float]:
    values = _numbers(flag_text, range(1, 4), "ETA[,NORM_THRESHOLD[,MOMENTUM]] such as 0,15,-0.5")
    return APG(*values).to_dict()


def _apg_text(value: Any) -> str:
    setting = APG.option(value)
    if setting is None:
        return "off"
    return f"eta {setting.eta:g} norm {setting.norm_threshold:g} momentum {setting.momentum:g}"


declare(
    Option(
        "apg",
        None,
        lambda value: None if value is None else APG.option(value).to_dict(),
        read=lambda value, device: APG.option(value),
        render=_apg_text,
        label="APG",
        after="Schedule type",  # after CFG scale: declared after it
        flags=(
            Flag(
                "--apg",
                "adaptive projected guidance (Sadat et al. 2024) on the x0 prediction: the parallel "
                "part weighted by ETA, the difference clipped to norm NORM_THRESHOLD (default 15, 0: "
                "none) and averaged with MOMENTUM (default 0)",
                {"type": _apg_flag, "metavar": "ETA[,NORM_THRESHOLD[,MOMENTUM]]"},
            ),
        ),
        override=lambda plan, given: (given["apg"], f"apg={_apg_text(given['apg'])}"),
    )
)


def check_zero_star(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


declare(
    Option(
        "cfg_zero_star",
        False,
        check_zero_star,
        render=lambda value: "on" if value else "off",
        label="CFG-Zero*",
        after="Schedule type",  # after CFG scale: declared after it
        flags=(
            Flag(
                "--cfg-zero-star",
                "scale the unconditional noise prediction by s* = <c, u> / ||u||^2 per image "
                "(Fan et al. 2025; without its zero-init steps)",
                {"action": "store_const", "const": True},
            ),
        ),
        override=lambda plan, given: (True, "cfg-zero-star"),
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


def is_guided(sigma: float | Tensor, guidance: float, interval: list[float] | None) -> bool:
    """Whether a call at `sigma` runs both halves: w != 1 and sigma in (lo, hi]. Decided on the
    plan's sigma, a Python float, so a captured run takes the same branch every time."""
    if guidance == 1.0:
        return False
    if interval is None:
        return True
    if isinstance(sigma, Tensor):
        raise TypeError("guidance_interval needs the call's sigma as a number, got a tensor")
    return interval[0] < sigma <= interval[1]


def _per_sample(sigma: float | Tensor, x: Tensor) -> float | Tensor:
    """sigma as a number or a column broadcasting against x per sample."""
    if isinstance(sigma, Tensor) and sigma.ndim:
        return sigma.view(-1, *(1,) * (x.ndim - 1))
    return sigma


def _dims(x: Tensor) -> list[int]:
    return list(range(1, x.ndim))


def combine(
    x: Tensor,
    sigma: float | Tensor,
    d_cond: Tensor,
    d_uncond: Tensor,
    guidance: float,
    cfg_rescale: float = 0.0,
    apg: APG | None = None,
    cfg_zero_star: bool = False,
    running: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The guided x0 prediction from both halves at (x, sigma), and APG's running average after it.

    In order: CFG-Zero* replaces u by s* u in eps space; then CFG, D_u + w (D_c - D_u), or APG on D;
    then the rescale in eps space against the conditional eps.
    """
    s = _per_sample(sigma, x)
    if cfg_zero_star:
        eps_c, eps_u = (x - d_cond) / s, (x - d_uncond) / s
        dims = _dims(x)
        scale = (eps_c * eps_u).sum(dims, keepdim=True) / ((eps_u**2).sum(dims, keepdim=True) + ZERO_STAR_EPS)
        d_uncond = x - s * (scale * eps_u)
    diff = d_cond - d_uncond
    if apg is None:
        guided_d = d_uncond + guidance * diff
    else:
        diff = running = diff if running is None else diff + apg.momentum * running
        dims = _dims(x)
        if apg.norm_threshold > 0:
            diff = diff * (apg.norm_threshold / diff.norm(p=2, dim=dims, keepdim=True)).clamp(max=1)
        unit = torch.nn.functional.normalize(d_cond.double(), dim=dims)  # the projection in float64
        parallel = (diff.double() * unit).sum(dims, keepdim=True) * unit
        update = (diff.double() - parallel) + apg.eta * parallel
        guided_d = d_uncond + guidance * update.to(diff.dtype)
    if cfg_rescale > 0:
        eps_g, eps_c = (x - guided_d) / s, (x - d_cond) / s
        dims = _dims(x)
        rescaled = eps_g * (eps_c.std(dims, keepdim=True) / eps_g.std(dims, keepdim=True))
        guided_d = x - s * (cfg_rescale * rescaled + (1 - cfg_rescale) * eps_g)
    return guided_d, running


def guided(model: Callable[..., Tensor], cond: Cond, uncond: Cond) -> Callable[..., Tensor]:
    """D = D_u + w (D_c - D_u) (or a variant), with both halves run as ONE batch of 2B through `model`.

    `model(x, sigma, cond, **options) -> x0` is e.g. `model.Denoiser`; cond and uncond are tensors
    (or dicts of tensors) of batch B or 1. The returned `denoise(x, sigma, guidance=1.0,
    guidance_interval=None, cfg_rescale=0.0, apg=None, cfg_zero_star=False, **options)` is what
    `solvers.sample` calls; the other options go on to `model`. A call with w = 1 or at a sigma
    outside the interval runs the conditional half alone (batch B). APG's momentum buffer lives in
    this denoiser, on x's device, updated at each guided APG call: make one denoiser per run.
    """
    running: Tensor | None = None

    def denoise(
        x: Tensor,
        sigma: float | Tensor,
        guidance: float = 1.0,
        guidance_interval: list[float] | None = None,
        cfg_rescale: float = 0.0,
        apg: APG | None = None,
        cfg_zero_star: bool = False,
        **options: Any,
    ) -> Tensor:
        nonlocal running
        n = x.shape[0]
        if not is_guided(sigma, guidance, guidance_interval):
            return model(x, sigma, _expand(cond, n), **options)
        sigma_in = torch.cat([sigma, sigma]) if isinstance(sigma, Tensor) and sigma.ndim else sigma
        both = _cat(_expand(uncond, n), _expand(cond, n))
        d_uncond, d_cond = model(torch.cat([x, x]), sigma_in, both, **options).chunk(2)
        if apg is None and not cfg_zero_star and cfg_rescale == 0:
            return d_uncond + guidance * (d_cond - d_uncond)
        apg = APG.option(apg) if isinstance(apg, Mapping) else apg
        out, running = combine(x, sigma, d_cond, d_uncond, guidance, cfg_rescale, apg, cfg_zero_star, running)
        return out

    return denoise


def passes(plan: Plan) -> tuple[int, int]:
    """U-Net passes per image of a run of `plan` through `guided`: (guided calls, which run 2 images
    each, conditional-only calls, 1 each), counted by a dry run of the plan's own step rules."""
    from solvers.loop import prepare  # the loop imports the plan, which describes itself with this

    counts = [0, 0]

    def record(
        x: Tensor, sigma: float, guidance: float = 1.0, guidance_interval: Any = None, **_: Any
    ) -> Tensor:
        counts[0 if is_guided(sigma, guidance, guidance_interval) else 1] += 1
        return x

    like = torch.zeros(1, 1, dtype=torch.float64)
    prepare(plan, like, torch.zeros_like).run(record, like)
    return counts[0], counts[1]
