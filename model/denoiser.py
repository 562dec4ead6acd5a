"""D(x; sigma): an eps-prediction U-Net seen as a denoiser, in the EDM / k-diffusion form.

With x = x0 + sigma * n, the U-Net was trained on the variance-preserving input x / sqrt(sigma^2 + 1)
at time t(sigma) to predict n. So (EDM table 1, "VP" column, eps-prediction):

    c_skip = 1,  c_out = -sigma,  c_in = 1 / sqrt(sigma^2 + 1),  c_noise = t(sigma)
    D(x; sigma) = c_skip x + c_out eps(c_in x, c_noise) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma))

t(sigma) is the schedule's fractional time (log-sigma interpolation), not rounded, unless
`round_timesteps=True` asks for diffusers' DPMSolverMultistep convention (integer t for the network,
exact sigma everywhere else).

Prepared coefficients: for a float sigma, sigma, c_in and t(sigma) are computed once per (sigma, batch,
device, dtype) and kept on the device (`prepare` fills them for a plan's sigmas before the first step),
so a step does no CPU float64 work and no host-to-device copy: what CUDA graph capture needs. They are
computed by the same float64 code as for a per-sample tensor sigma, so both paths agree bitwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from model.freeu import FreeU

if TYPE_CHECKING:
    from schedule.noise import NoiseSchedule


class Denoiser:
    """Wraps `unet(x, t, context, freeu=..., **kwargs) -> eps` as `denoiser(x, sigma, cond) -> x0`.

    The per-step options of a plan reach it as the prepared loop reads them (solvers/options.py):
    `freeu` as a FreeU with its factors on the device, or None.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, round_timesteps: bool = False):
        self.unet = unet
        self.schedule = schedule
        self.round_timesteps = round_timesteps
        # Bounded: a long-lived denoiser (a teacher run of thousands of steps) keeps only recent sigmas.
        self._prepared = lru_cache(maxsize=1024)(self._coefficients)

    def prepare(self, sigmas: Iterable[float], batch: int, device: torch.device, dtype: torch.dtype) -> None:
        """Compute the coefficients of these sigmas for x of this batch, device and dtype ahead of the
        first step (other sigmas, e.g. a 2S midpoint, are added on their first call)."""
        for sigma in sigmas:
            self._prepared(float(sigma), batch, torch.device(device), dtype)

    def __call__(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        cond: torch.Tensor | Mapping[str, torch.Tensor],
        freeu: FreeU | None = None,
        **unet_kwargs: Any,
    ) -> torch.Tensor:
        """x0 estimate for x [B, C, H, W] at noise level sigma (a float, or a tensor [B] or 0-d).

        cond: the U-Net's context [B, L, D], or a dict {"context": ..., "y": ...} (SDXL); freeu: FreeU
        or None; unet_kwargs: passed on to the U-Net too. The U-Net
        runs in its own dtype; x0 comes back in x's dtype.
        """
        if freeu is not None and not isinstance(freeu, FreeU):
            raise TypeError(
                f"freeu must be a FreeU or None, got {type(freeu).__name__}; a plan's setting is read "
                "into one by solvers.prepare"
            )
        if isinstance(cond, Mapping):
            if "context" not in cond:
                raise ValueError(
                    f"a dict cond needs a 'context' entry (and 'y' for SDXL); got {sorted(cond)}"
                )
            unet_kwargs = {**{k: v for k, v in cond.items() if k != "context"}, **unet_kwargs}
            cond = cond["context"]
        if isinstance(sigma, torch.Tensor):
            prepared = self._coefficients(sigma, x.shape[0], x.device, x.dtype)
        else:
            prepared = self._prepared(float(sigma), x.shape[0], x.device, x.dtype)
        if prepared is None:
            return x.clone()  # D(x; 0) = x: nothing to remove, no network call
        sigma, c_in, t = prepared
        dtype = next(self.unet.parameters()).dtype
        eps = self.unet(
            (x * c_in).to(dtype),
            t,
            cond.to(dtype),
            freeu=freeu,
            **{k: _to_float_dtype(v, dtype) for k, v in unet_kwargs.items()},
        )
        return x - sigma * eps.to(x.dtype)

    def _coefficients(
        self, sigma: float | torch.Tensor, batch: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(sigma, c_in) as [B, 1, 1, 1] in x's dtype and t(sigma) as float32 [B], on x's device; None
        when every sigma is 0."""
        sigma = self._per_sample(sigma, batch)  # float64 [B], on the CPU
        if (sigma == 0).all():
            return None
        # sigma = 0 entries get c_out = 0, so the time they are evaluated at does not matter.
        t = self.schedule.t(torch.where(sigma > 0, sigma, self.schedule.sigma_min))
        if self.round_timesteps:
            t = t.round()
        c_in = (sigma**2 + 1).rsqrt()
        return _per_pixel(sigma, device, dtype), _per_pixel(c_in, device, dtype), t.to(device, torch.float32)

    @staticmethod
    def _per_sample(sigma: float | torch.Tensor, batch: int) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
        if sigma.dim() == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(
                f"sigma must be a float, a 0-d tensor or a tensor [{batch}], got shape {tuple(sigma.shape)}"
            )
        if (sigma < 0).any() or sigma.isnan().any():
            raise ValueError(f"sigma must be >= 0, got {sigma.tolist()}")
        return sigma


def _per_pixel(values: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[B] float64 -> [B, 1, 1, 1] in x's dtype and device, to scale each sample of x."""
    return values.to(device, dtype)[:, None, None, None]


def _to_float_dtype(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (SDXL's y) in the U-Net's dtype; anything else as it is."""
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
