"""Exact denoisers, for studying solvers without a network (or a GPU).

Data x0 from a known distribution, noised as x = x0 + sigma * eps. The ideal denoiser
D(x; sigma) = E[x0 | x] is then known in closed form, and so is (for the Gaussian) the
probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma it defines. Both classes can be passed
to `solvers.sample` directly: they ignore the guidance and FreeU options a network would use.
ConditionalMixture has a condition, for exact guided denoisers (`solvers.guided`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from solvers.guidance import guided


def rmse(a: Tensor, b: Tensor) -> float:
    """Root mean square difference over every sample and element: the error every analysis reports."""
    return float(((a - b) ** 2).mean().sqrt())


def _sigma_column(sigma: float | Tensor, x: Tensor) -> Tensor:
    """sigma as a float64 scalar or a [B, 1] column, to broadcast against x of shape [B, D]."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return s[:, None] if s.ndim == 1 else s


class Gaussian:
    """Data ~ N(mean, diag(var)).

    D(x; sigma) = mean + var / (var + sigma^2) (x - mean), and the ODE has the exact flow
    x(sigma') - mean = (x(sigma) - mean) sqrt((var + sigma'^2) / (var + sigma^2)).
    """

    def __init__(self, mean: Tensor, var: Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)
        if self.mean.shape != self.var.shape or self.mean.ndim != 1 or not (self.var > 0).all():
            raise ValueError("mean and var must be 1-D of the same length, var > 0")

    def __call__(self, x: Tensor, sigma: float | Tensor, **options) -> Tensor:
        s2 = _sigma_column(sigma, x) ** 2
        return self.mean + self.var / (self.var + s2) * (x - self.mean)

    def solve(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """The exact ODE solution at sigma_to, starting from x at sigma_from."""
        return self.mean + (x - self.mean) * ((self.var + sigma_to**2) / (self.var + sigma_from**2)).sqrt()

    def sample(self, n: int, sigma: float, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x0 + sigma * eps (the exact marginal at sigma)."""
        std = (self.var + sigma**2).sqrt()
        return self.mean + std * torch.randn(n, len(self.mean), dtype=torch.float64, generator=generator)


class GaussianMixture:
    """Data ~ sum_k w_k N(mean_k, var_k I).

    D(x; sigma) is the exact posterior mean: sum_k r_k(x) (mean_k + var_k / (var_k + sigma^2) (x - mean_k)),
    with responsibilities r_k proportional to w_k N(x; mean_k, (var_k + sigma^2) I). The ODE has no
    closed form; `solve` integrates it with classical RK4 in log sigma.
    """

    def __init__(self, weights: Tensor, means: Tensor, var: Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.var = torch.as_tensor(var, dtype=torch.float64)
        k = len(self.weights)
        if self.means.ndim != 2 or self.means.shape[0] != k or self.var.shape != (k,):
            raise ValueError("need weights [K], means [K, D], var [K]")
        if not (self.weights > 0).all() or not (self.var > 0).all():
            raise ValueError("weights and variances must be positive")
        self.weights = self.weights / self.weights.sum()

    @classmethod
    def default(cls, dim: int = 16, components: int = 8, seed: int = 0) -> GaussianMixture:
        """A fixed mixture of roughly unit scale per dimension, like SD's scaled latents."""
        g = torch.Generator().manual_seed(seed)
        weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * 0.8
        var = 0.02 + 0.3 * torch.rand(components, generator=g, dtype=torch.float64)
        return cls(weights, means, var)

    def __call__(self, x: Tensor, sigma: float | Tensor, **options) -> Tensor:
        total_var = self.var + _sigma_column(sigma, x) ** 2  # [K] or [B, K]
        offset = x[:, None, :] - self.means  # [B, K, D]
        dim = x.shape[-1]
        log_r = self.weights.log() - 0.5 * dim * total_var.log() - (offset**2).sum(-1) / (2 * total_var)
        r = torch.softmax(log_r, dim=-1)  # [B, K]
        per_component = self.means + (self.var / total_var)[..., None] * offset  # [B, K, D]
        return (r[..., None] * per_component).sum(1)

    def solve(self, x: Tensor, sigma_from: float, sigma_to: float, max_step: float = 0.01) -> Tensor:
        """The ODE solution at sigma_to, by RK4 on dx/d(log sigma) = x - D(x; sigma).

        Steps of at most `max_step` in log sigma (0.01: error ~1e-8 over SD's whole range).
        sigma_to = 0 is reached through sigma = 1e-6, where x and D(x) agree to ~1e-12.
        """
        end = max(sigma_to, 1e-6)
        u_from, u_to = math.log(sigma_from), math.log(end)
        steps = max(1, math.ceil(abs(u_to - u_from) / max_step))
        h = (u_to - u_from) / steps

        def f(x_: Tensor, u: float) -> Tensor:
            return x_ - self(x_, math.exp(u))

        for i in range(steps):
            u = u_from + i * h
            k1 = f(x, u)
            k2 = f(x + h / 2 * k1, u + h / 2)
            k3 = f(x + h / 2 * k2, u + h / 2)
            k4 = f(x + h * k3, u + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return self(x, end) if sigma_to == 0 else x

    def sample(self, n: int, sigma: float, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x0 + sigma * eps (the exact marginal at sigma)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        std = (self.var[k] + sigma**2).sqrt()[:, None]
        noise = torch.randn(n, self.means.shape[1], dtype=torch.float64, generator=generator)
        return self.means[k] + std * noise


class ConditionalMixture:
    """A Gaussian mixture whose condition reweights its components, for exact guided denoisers.

    p(x0 | c) = sum_k w_k a_k N(mean_k, var_k I) / sum_k w_k a_k and p(x0) the full mixture, both
    exact GaussianMixture denoisers. As the `model(x, sigma, c, **options)` of `solvers.guided`, c is
    one number per row, 1 for the condition and 0 for none (`guided()` builds that), so that every
    guidance variant's D is exact.
    """

    def __init__(self, mixture: GaussianMixture, reweight: Tensor):
        reweight = torch.as_tensor(reweight, dtype=torch.float64)
        if reweight.shape != mixture.weights.shape or not (reweight > 0).all():
            raise ValueError("reweight must be positive, one per component")
        self.unconditional = mixture
        self.conditional = GaussianMixture(mixture.weights * reweight, mixture.means, mixture.var)

    @classmethod
    def default(cls, dim: int = 16, components: int = 8, seed: int = 0) -> ConditionalMixture:
        """GaussianMixture.default with the condition favouring its first two components 16:1."""
        reweight = torch.full((components,), 0.25, dtype=torch.float64)
        reweight[:2] = 4.0
        return cls(GaussianMixture.default(dim, components, seed), reweight)

    def __call__(self, x: Tensor, sigma: float | Tensor, c: Tensor, **options) -> Tensor:
        return torch.where(c[:, None] > 0, self.conditional(x, sigma), self.unconditional(x, sigma))

    def guided(self) -> Callable[..., Tensor]:
        """A fresh guided denoiser (solvers.guided) of this model: one per run (APG's buffer)."""
        one = torch.ones(1, dtype=torch.float64)
        return guided(self, one, torch.zeros_like(one))
