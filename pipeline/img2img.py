"""Image to image (SDEdit, Meng et al. 2022): start the plan part-way, from the init image's latent
noised to that step's sigma with the image's own seed.

    k = the step the strength s selects;  x_k = E(image) * scaling_factor + sigma_k * noise(seed)

then the plan's steps k..N-1 run as usual (a multistep solver starts afresh at step k, as in
diffusers). How s selects k (`STRENGTH_CUTS`), both as diffusers' img2img pipelines do:

- "steps" (diffusers' `strength`): keep the last floor(N s) of the plan's N steps, k = N - floor(N s);
- "time" (diffusers' `denoising_start = 1 - s`): keep the steps that start below DDPM time
  round(T s), T = 1000 training steps; so s is a fraction of the noise schedule's time, not of the plan.

E is the VAE encoder's posterior mean (deterministic: the image's latent does not depend on the seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import weights
from pipeline.pixels import unquantize
from schedule import DiscreteSchedule
from solvers import Plan

STRENGTH_CUTS = ("steps", "time")


def check_strength(value: float) -> float:
    """The img2img strength s: a number in (0, 1] (1 starts from pure noise, as text to image)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class InitImage:
    """An image to start from: uint8 pixels [3, H, W], the strength and how it cuts the plan, and the
    file it was read from as given (its sha256 goes into each image's settings)."""

    pixels: torch.Tensor
    strength: float
    cut: str = "steps"
    source: str | None = None

    def __post_init__(self) -> None:
        check_strength(self.strength)
        if self.cut not in STRENGTH_CUTS:
            raise ValueError(f"strength cut must be one of {', '.join(STRENGTH_CUTS)}, got {self.cut!r}")
        if self.pixels.dtype != torch.uint8 or self.pixels.ndim != 3 or self.pixels.shape[0] != 3:
            raise ValueError(
                f"init pixels must be uint8 [3, H, W], got {self.pixels.dtype} {tuple(self.pixels.shape)}"
            )

    def check_size(self, height: int, width: int) -> None:
        _, h, w = self.pixels.shape
        if (h, w) != (height, width):
            raise ValueError(f"the init image is {w}x{h} px but the images are {width}x{height}; resize it")


def cut(plan: Plan, init: InitImage | None, schedule: DiscreteSchedule) -> Plan:
    """The part of the plan a run makes: from the step the init image's strength selects, or all of it."""
    return plan if init is None else tail(plan, start_step(plan, init.strength, init.cut, schedule))


def start_step(plan: Plan, strength: float, cut: str, schedule: DiscreteSchedule) -> int:
    """The step k the plan starts at for this strength (module docstring); refused if none is left."""
    n = plan.steps
    if cut == "steps":
        kept = min(int(n * strength), n)
    else:
        cutoff = round(len(schedule.alphas_cumprod) * strength)
        times = schedule.t(torch.tensor(plan.sigmas[:-1], dtype=torch.float64))
        kept = int((times < cutoff).sum())
    if kept == 0:
        least = f"at least {1 / n:.3g}" if cut == "steps" else "a larger one"
        raise ValueError(
            f"strength {strength:g} keeps none of the plan's {n} steps (cut by {cut}); use {least}, "
            "or a plan with more steps"
        )
    return n - kept


def tail(plan: Plan, start: int) -> Plan:
    """The plan's steps from `start` on, each with its own solver and options."""
    options = {key: column[start:] for key, column in plan.options.items()}
    return plan.replace(sigmas=plan.sigmas[start:], solver=plan.solver[start:], **options)


def start_latent(
    sd: weights.StableDiffusion, init: InitImage, sigma: float, noise: torch.Tensor
) -> torch.Tensor:
    """x = E(image) * scaling_factor + sigma * noise for a batch of noise [B, 4, h, w], in float32."""
    latent = sd.vae.encode(unquantize(init.pixels)[None].to(noise.device)).float() * sd.vae.scaling_factor
    return latent + sigma * noise
