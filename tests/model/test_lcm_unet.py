"""The full LCM U-Net (LCM_Dreamshaper_v7's: SD 1.5 with `time_cond_proj_dim`, the guidance scale
entering as an embedding added to the timestep's): the embedding equals diffusers'
`get_guidance_scale_embedding`, and a diffusers U-Net file of that kind loads through
weights.unet_file into a U-Net whose output equals diffusers' UNet2DConditionModel.

Parity tolerance: max|ours - ref| / max|ref| <= 1e-5 in float32, as tests/model/test_unet.py: the same
arithmetic in another summation order inside convolutions and matmuls (a few float32 ulps per layer).
"""

from types import SimpleNamespace

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from safetensors.torch import save_file

from model import Denoiser
from model.unet import guidance_embedding
from pipeline.generate import embedded_guidance
from pipeline.plans import build_plan
from schedule import DiscreteSchedule
from solvers import guided
from tests.helpers import one_thread, rel_err
from tests.reference.unet import diffusers_unet, sd15_config
from weights import unet_file

PARITY_TOL = 1e-5
COND_DIM = 32  # LCM_Dreamshaper_v7: 256


@pytest.mark.parametrize("dim", [COND_DIM, 33, 256])
def test_guidance_embedding_equals_diffusers(dim):
    w = torch.tensor([0.0, 1.5, 7.0])
    expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, dim)
    assert torch.allclose(guidance_embedding(w, dim), expected, rtol=0, atol=1e-6)


def test_lcm_unet_file_matches_diffusers(tmp_path):
    reference = diffusers_unet(sd15_config() | {"time_cond_proj_dim": COND_DIM}, seed=3)
    path = tmp_path / "lcm_unet.safetensors"
    save_file(reference.state_dict(), path)
    unet = unet_file.load(path, "sd1")
    assert unet.config.time_cond_proj_dim == COND_DIM
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 48, generator=g)
    t, w = torch.tensor([999.0, 259.0]), torch.tensor([7.0, 0.0])
    with one_thread(), torch.no_grad():
        expected = reference(x, t, context, timestep_cond=guidance_embedding(w, COND_DIM)).sample
        got = unet(x, t, context, timestep_cond=guidance_embedding(w, COND_DIM))
    assert rel_err(got, expected) <= PARITY_TOL
    with pytest.raises(ValueError, match=r"needs timestep_cond \[2, 32\]"):
        unet(x, t, context)


def test_one_guided_step_of_an_lcm_unet_is_the_lcm_pipelines_single_unet_call(tmp_path):
    """pipeline.generate.embedded_guidance turns the plan's guidance w into the U-Net's input, as
    LatentConsistencyModelPipeline does (timestep_cond = embedding of w - 1, one pass on the prompt
    alone), and guidance off: the denoiser's x0 is x - sigma * eps of diffusers' U-Net called so on
    the VP-scaled latents x / sqrt(sigma^2 + 1). Tolerance as above."""
    reference = diffusers_unet(sd15_config() | {"time_cond_proj_dim": COND_DIM}, seed=4)
    path = tmp_path / "lcm_unet.safetensors"
    save_file(reference.state_dict(), path)
    model = SimpleNamespace(unet=unet_file.load(path, "sd1"))
    schedule = DiscreteSchedule.sd()
    plan = build_plan(None, "lcm-4", guidance=8.0, schedule=schedule)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 48, generator=g)
    plan, cond = embedded_guidance(model, plan, context)
    assert set(plan.guidance) == {1.0}
    sigma = plan.sigmas[0]
    denoise = guided(Denoiser(model.unet, schedule), cond, torch.zeros_like(context))
    t = schedule.t(torch.tensor([sigma] * 2, dtype=torch.float64)).float()
    embedding = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, torch.full((2,), 7.0), COND_DIM
    )
    with one_thread(), torch.no_grad():
        got = denoise(x, sigma, guidance=plan.guidance[0])
        eps = reference(x / (sigma**2 + 1) ** 0.5, t, context, timestep_cond=embedding).sample
    assert rel_err(got, x - sigma * eps) <= PARITY_TOL
