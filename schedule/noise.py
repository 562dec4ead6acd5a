"""Noise levels and time.

Everything here lives in the k-diffusion / EDM parametrisation x = x0 + sigma * eps, where a
VP process with scale s(t) and noise level s(t) * sigma(t) has been divided by s(t). Two ways to
map a time t to sigma:

- `DiscreteSchedule`: a DDPM table of alphas_cumprod (SD's own), t = fractional table index.
- `VPSDE`: the continuous VP-SDE of the paper's eq. (7)-(8), t in [eps_s, 1].

Both take and return Python floats or tensors (computed in float64), element-wise.
"""

from __future__ import annotations

import math
from typing import Protocol, TypeVar

import torch

T = TypeVar("T", float, torch.Tensor)

# Relative distance outside a range that is clamped onto it rather than refused. Times: round-off
# only. Sigmas: checkpoints store alphas_cumprod in float32, which moves SD's sigma_min up by
# 1.3e-5 relative against a plan made on the float64 table (clamping moves t by < 1e-3 index).
_T_TOLERANCE = 1e-9
_SIGMA_TOLERANCE = 1e-4


class NoiseSchedule(Protocol):
    """What step placement needs: the sigma range and exact inverse maps t <-> sigma."""

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    def sigma(self, t: T) -> T: ...

    def t(self, sigma: T) -> T: ...


def _to_f64(x: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _like(value: torch.Tensor, template: float | torch.Tensor):
    return float(value) if not isinstance(template, torch.Tensor) else value


def _check_range(x: torch.Tensor, lo: float, hi: float, what: str, tolerance: float) -> torch.Tensor:
    """Clamp values within `tolerance` (relative to each end) of [lo, hi]; refuse anything further out."""
    low, high = lo - tolerance * abs(lo), hi + tolerance * abs(hi)
    if torch.isnan(x).any() or (x < low).any() or (x > high).any():
        bad = x[torch.isnan(x) | (x < low) | (x > high)].flatten()[0].item()
        raise ValueError(f"{what} {bad!r} is outside [{lo:.6g}, {hi:.6g}]")
    return x.clamp(lo, hi)


class DiscreteSchedule:
    """A DDPM table alphas_cumprod[k], k = 0..K-1, read as sigma_k = sqrt((1 - a_k) / a_k).

    Time is the fractional index t in [0, K-1]. Between neighbouring indices log sigma is linear
    in t (as k-diffusion's `DiscreteSchedule`), so `sigma(t)` and `t(sigma)` are exact inverses
    and a fractional t can be passed straight to the U-Net.
    """

    def __init__(self, alphas_cumprod: torch.Tensor | list[float]):
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if acp.numel() < 2:
            raise ValueError("alphas_cumprod needs at least 2 entries")
        if not ((acp > 0) & (acp < 1)).all():
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        if not (acp[1:] < acp[:-1]).all():
            raise ValueError("alphas_cumprod must be strictly decreasing (noise grows with t)")
        self.alphas_cumprod = acp
        self.sigmas = ((1 - acp) / acp).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def sd(
        cls, linear_start: float = 0.00085, linear_end: float = 0.012, steps: int = 1000
    ) -> DiscreteSchedule:
        """SD 1.x / SDXL training table: betas linear in sqrt space ("scaled_linear")."""
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1 - betas, dim=0))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def t_max(self) -> float:
        return float(len(self.sigmas) - 1)

    def sigma(self, t: T) -> T:
        tt = _check_range(_to_f64(t), 0.0, self.t_max, "t", _T_TOLERANCE)
        low = tt.floor().clamp(max=self.t_max - 1).long()
        w = tt - low
        log_sigma = torch.lerp(self.log_sigmas[low], self.log_sigmas[low + 1], w)
        return _like(log_sigma.exp(), t)

    def t(self, sigma: T) -> T:
        sigma_ = _check_range(_to_f64(sigma), self.sigma_min, self.sigma_max, "sigma", _SIGMA_TOLERANCE)
        log_sigma = sigma_.log()
        low = (torch.searchsorted(self.log_sigmas, log_sigma, right=True) - 1).clamp(0, len(self.sigmas) - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        return _like(low + (log_sigma - lo) / (hi - lo), sigma)

    def __repr__(self) -> str:
        return (
            f"DiscreteSchedule(K={len(self.sigmas)}, sigma_min={self.sigma_min:.6g}, "
            f"sigma_max={self.sigma_max:.6g})"
        )


class VPSDE:
    """The VP-SDE with linear beta(t) = beta_min + beta_d * t, t in [eps_s, 1].

    Paper eq. (7): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
    Paper eq. (8): s(t) = 1 / sqrt(exp(beta_d t^2 / 2 + beta_min t))
    """

    def __init__(self, beta_min: float = 0.1, beta_d: float = 19.9, eps_s: float = 1e-3):
        if not (beta_d > 0 and beta_min >= 0 and 0 < eps_s < 1):
            raise ValueError(
                f"need beta_d > 0, beta_min >= 0, 0 < eps_s < 1; got {beta_d}, {beta_min}, {eps_s}"
            )
        self.beta_min, self.beta_d, self.eps_s = float(beta_min), float(beta_d), float(eps_s)

    @classmethod
    def fit(cls, sigma_min: float, sigma_max: float, eps_s: float = 1e-3) -> VPSDE:
        """EDM's fit: choose beta_d, beta_min so that sigma(eps_s) = sigma_min and sigma(1) = sigma_max."""
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
        log_min, log_max = math.log1p(sigma_min**2), math.log1p(sigma_max**2)
        beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
        return cls(beta_min=log_max - beta_d / 2, beta_d=beta_d, eps_s=eps_s)

    def _exponent(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.beta_d * t**2 + self.beta_min * t

    @property
    def sigma_min(self) -> float:
        return self.sigma(self.eps_s)

    @property
    def sigma_max(self) -> float:
        return self.sigma(1.0)

    def sigma(self, t: T) -> T:
        return _like(torch.expm1(self._exponent(_to_f64(t))).sqrt(), t)  # eq. (7)

    def s(self, t: T) -> T:
        return _like(torch.exp(-0.5 * self._exponent(_to_f64(t))), t)  # eq. (8)

    def t(self, sigma: T) -> T:
        # Root of beta_d t^2 / 2 + beta_min t = log(1 + sigma^2), the inverse of eq. (7).
        rhs = torch.log1p(_to_f64(sigma) ** 2)
        return _like(((self.beta_min**2 + 2 * self.beta_d * rhs).sqrt() - self.beta_min) / self.beta_d, sigma)

    def lambda_(self, t: T) -> T:
        """Log-SNR log(s / (s sigma)) = -log sigma(t), the variable DPM-Solver steps in."""
        return _like(-_to_f64(self.sigma(t)).log(), t)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min:.6g}, beta_d={self.beta_d:.6g}, eps_s={self.eps_s:g})"
