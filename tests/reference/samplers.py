"""Reference samplers the step rules are checked against, run on the same sigma list and denoiser.

- `k_diffusion()`: k-diffusion's own `sampling.py`, loaded from the installed package file. The
  package's `__init__` imports torchvision and scikit-image, which the tests do not install;
  `sampling.py` itself only needs torch, scipy, torchdiffeq, torchsde, tqdm and one helper of
  `k_diffusion.utils`, `append_dims`, provided here by a stand-in module.
- `diffusers_multistep(...)`: a diffusers multistep scheduler (UniPC, DEIS) stepped along our sigma
  list in float64 (its `set_timesteps` would cast its sigmas to float32; they are set directly).
- `gits_ipndm(...)`: iPNDM and iPNDM-v written from the published formulas (GITS' `ipndm_sampler` /
  `ipndm_v_sampler`, ComfyUI's `sample_ipndm` / `sample_ipndm_v`): Adams-Bashforth on d = (x - D) / sigma
  in sigma, a buffer of earlier d's, order min(4, i + 1), a step into 0 returns D.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """k-diffusion's utils.append_dims: trailing singleton axes up to target_dims."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


@functools.cache
def k_diffusion() -> types.ModuleType:
    """k_diffusion/sampling.py of the installed k-diffusion, as a module."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    package = types.ModuleType("k_diffusion_ref")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion_ref.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.update({"k_diffusion_ref": package, "k_diffusion_ref.utils": utils})
    path = f"{spec.submodule_search_locations[0]}/sampling.py"
    sampling_spec = importlib.util.spec_from_file_location("k_diffusion_ref.sampling", path)
    sampling = importlib.util.module_from_spec(sampling_spec)
    sampling_spec.loader.exec_module(sampling)
    return sampling


def k_diffusion_sample(name: str, model, x: Tensor, sigmas: Sequence[float], noises=None, **kwargs) -> Tensor:
    """k-diffusion's `sample_{name}` on a float64 sigma list; `noises` (a list) feeds its noise sampler."""
    sampling = k_diffusion()
    sigmas = torch.tensor(list(sigmas), dtype=torch.float64)
    if noises is not None:
        draws = iter(noises)
        kwargs["noise_sampler"] = lambda sigma, sigma_next: next(draws)
    return getattr(sampling, f"sample_{name}")(model, x, sigmas, disable=True, **kwargs)


def diffusers_multistep(scheduler, model: Callable, x: Tensor, sigmas: Sequence[float]) -> Tensor:
    """Step a diffusers multistep scheduler (epsilon prediction) along `sigmas` in float64.

    Its state is in VP form: x_vp = x / sqrt(1 + sigma^2), and the model output it is given is
    eps = (x - D) / sigma. Returns x at the last sigma in our (VE) form.
    """
    n = len(sigmas) - 1
    scheduler.set_timesteps(n)  # resets the multistep state; the sigmas are replaced below
    scheduler.sigmas = torch.tensor(list(sigmas), dtype=torch.float64)
    scheduler.timesteps = torch.arange(n, 0, -1)
    scheduler.num_inference_steps = n
    scheduler.set_begin_index(0)
    sample = x / (1 + sigmas[0] ** 2) ** 0.5
    for i in range(n):
        x_ve = sample * (1 + sigmas[i] ** 2) ** 0.5
        eps = (x_ve - model(x_ve, sigmas[i])) / sigmas[i]
        sample = scheduler.step(eps, scheduler.timesteps[i], sample).prev_sample
    return sample * (1 + sigmas[-1] ** 2) ** 0.5


def gits_ipndm(model: Callable, x: Tensor, sigmas: Sequence[float], variable: bool) -> Tensor:
    """iPNDM (variable=False) or iPNDM-v (variable=True), max_order 4, from the published formulas."""
    t = list(sigmas)
    buffer: list[Tensor] = []
    for i in range(len(t) - 1):
        t_cur, t_next = t[i], t[i + 1]
        denoised = model(x, t_cur)
        d_cur = (x - denoised) / t_cur
        order = min(4, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif not variable:
            ab = {2: (3, -1, 0, 0, 2), 3: (23, -16, 5, 0, 12), 4: (55, -59, 37, -9, 24)}[order]
            terms = ab[0] * d_cur + sum(c * b for c, b in zip(ab[1:4], reversed(buffer), strict=False))
            x_next = x + (t_next - t_cur) * terms / ab[4]
        else:
            x_next = x + (t_next - t_cur) * _ipndm_v_sum(t, i, order, d_cur, buffer)
        buffer = [*buffer, d_cur][-3:]
        x = x_next
    return x


def _ipndm_v_sum(t: list[float], i: int, order: int, d_cur: Tensor, buffer: list[Tensor]) -> Tensor:
    """GITS ipndm_v_sampler's coefficients, term by term as published."""
    h_n, h_n_1 = t[i + 1] - t[i], t[i] - t[i - 1]
    if order == 2:
        coeff1 = (2 + (h_n / h_n_1)) / 2
        coeff2 = -(h_n / h_n_1) / 2
        return coeff1 * d_cur + coeff2 * buffer[-1]
    h_n_2 = t[i - 1] - t[i - 2]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if order == 3:
        coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1
        coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1
        coeff3 = temp1 * h_n_1 / h_n_2
        return coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2]
    h_n_3 = t[i - 2] - t[i - 3]
    temp2 = (
        (
            (1 - h_n / (3 * (h_n + h_n_1))) / 2
            + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))
        )
        * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2))
        / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
    )
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
    coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + ratio) * temp2
    coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + ratio * (1 + h_n_2 / h_n_3)) * temp2
    coeff4 = -temp2 * ratio * h_n_1 / h_n_2
    return coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2] + coeff4 * buffer[-3]
