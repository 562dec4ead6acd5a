"""UniPC (Zhao et al. 2023): the multistep predictor UniP-p and the corrector UniC-p in data prediction,
variants B(h) = h ("bh1") and B(h) = e^h - 1 ("bh2"), as diffusers' `UniPCMultistepScheduler` runs
them (predict_x0=True, lower_order_final=True).

The corrector needs D at the predicted point, which is the next step's own evaluation. So the rule
first corrects the x it is given (the previous step's prediction) with this step's D, then predicts
from there: one call per step, NFE = N, and the last prediction stays uncorrected, as in diffusers.
A step into sigma = 0 returns D of the uncorrected x (the loop's rule for that step; diffusers' order-1
last step gives the same). The correction assumes the previous step was UniPC's (in a mixed plan it
corrects the previous rule's step as if UniP had taken it).

Orders: p = min(order, N - i, 1 + earlier steps), so a run starts at order 1 and ends with orders
2, 1 (diffusers' warm-up and lower_order_final, which UniPC applies at every N; the last step's
order 1 then bounds the global order by 2, lower_order_final=False lifts that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from solvers.table import Past, Solver, Step, register

VARIANTS = ("bh1", "bh2")


def _coefficients(h: float, rks: Sequence[float], variant: str) -> tuple[float, list[float], list[float]]:
    """B(h) and the weights of UniP-p and UniC-p (p = len(rks) + 1) on the differences
    (D_k - D_0) / r_k of earlier estimates at lambda_0 + r_k h (r_k < 0).

    Both solve UniPC's order conditions R rho = b, R_jk = r_k^j, b_j = j! z phi_{j+1}(z) / B(h) at
    z = -h (data prediction; phi_k(z) = (e^z - sum_{m<k} z^m / m!) / z^k); UniP-2 and UniC-1 use the
    closed form 1/2, as diffusers does. The corrector adds the node r = 1 of the new estimate.
    """
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    p = len(rks) + 1
    b, h_phi, factorial = [], math.expm1(hh) / hh - 1, 1
    for j in range(1, p + 1):
        b.append(h_phi * factorial / b_h)
        factorial *= j + 1
        h_phi = h_phi / hh - 1 / factorial
    nodes = torch.tensor([*rks, 1.0], dtype=torch.float64)
    r = torch.stack([nodes**j for j in range(p)])
    b = torch.tensor(b, dtype=torch.float64)
    rhos_c = [0.5] if p == 1 else torch.linalg.solve(r, b).tolist()
    rhos_p = [] if p == 1 else [0.5] if p == 2 else torch.linalg.solve(r[:-1, :-1], b[:-1]).tolist()
    return b_h, rhos_p, rhos_c


def _differences(earlier: Sequence[Past], sigma_0: float, denoised_0: Tensor, h: float, count: int):
    """r_k and (D_k - D_0) / r_k of the `count` most recent earlier estimates, relative to sigma_0."""
    rks, d1s = [], []
    for sigma_k, _, denoised_k in reversed(earlier[len(earlier) - count :]):
        rks.append(math.log(sigma_0 / sigma_k) / h)  # (lambda_k - lambda_0) / h
        d1s.append((denoised_k - denoised_0) / rks[-1])
    return rks, d1s


def unipc(
    x: Tensor,
    denoised: Tensor,
    step: Step,
    variant: str = "bh2",
    order: int = 3,
    lower_order_final: bool = True,
) -> Tensor:
    """UniC-p on the previous step with this step's D, then UniP-p from the corrected x."""
    history, i = step.history, step.index
    n = step.steps if lower_order_final else math.inf
    if history:
        p = min(order, n - i + 1, len(history))  # the previous step's predictor order
        sigma_0, _, denoised_0 = history[-1]
        h = math.log(sigma_0 / step.sigma)
        rks, d1s = _differences(history[:-1], sigma_0, denoised_0, h, p - 1)
        b_h, rhos_p, rhos_c = _coefficients(h, rks, variant)
        shift = rhos_c[-1] * (denoised - denoised_0)
        for c, q, d in zip(rhos_c[:-1], rhos_p, d1s, strict=True):
            shift = shift + (c - q) * d
        x = x - b_h * shift  # UniC minus UniP: same base, other weights
    p = min(order, n - i, len(history) + 1)
    h = math.log(step.sigma / step.sigma_next)
    rks, d1s = _differences(history, step.sigma, denoised, h, p - 1)
    b_h, rhos_p, _ = _coefficients(h, rks, variant)
    x_next = (step.sigma_next / step.sigma) * x - math.expm1(-h) * denoised
    for rho, d in zip(rhos_p, d1s, strict=True):
        x_next = x_next - b_h * rho * d
    return x_next


for _variant in VARIANTS:
    for _order in (1, 2, 3):
        # A1111's "UniPC" is its default: bh1, order 3, lower_order_final.
        _default = (_variant, _order) == ("bh1", 3)
        register(Solver(f"unipc_{_variant}_{_order}", partial(unipc, variant=_variant, order=_order), 1,
                        _order + 1, f"unipc_{_variant}_{_order}",
                        "UniPC" if _default else f"UniPC {_variant} order {_order}"))  # fmt: skip
