"""torch.compile of the U-Net and the VAE decoder: one graph each, no graph breaks, and a FreeU switch
between steps costs at most one recompilation (new FreeU values, sigmas and guidance none).

Traced by dynamo only (`torch._dynamo.explain`, the counting backend): what breaks a graph or
recompiles is decided there, before any code generation, so these run in seconds on the CPU.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import weights
from model import FreeU
from pipeline.generate import conditioning, prepared_steps
from solvers import Plan
from tests.checkpoints import write_checkpoint
from tests.helpers import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():  # tiny networks: 2 threads on a shared machine are many times slower
        yield


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return weights.load(write_checkpoint(tmp_path_factory.mktemp("compile"), "single"))


def unet_inputs(sd, batch: int = 2):
    x = torch.randn(batch, 4, 8, 8)
    return x, torch.full((batch,), 500.0), torch.randn(batch, 77, sd.unet.config.context_dim)


@pytest.mark.slow  # ~30 s of dynamo tracing each on 2 shared cores
@pytest.mark.parametrize(
    "freeu",
    [None, *(FreeU(1.3, 1.4, 0.9, 0.2, v, where) for v in (1, 2) for where in ("channels", "blocks"))],
    ids=lambda f: "off" if f is None else f"v{f.version}-{f.placement}",
)
def test_the_unet_compiles_to_one_graph_with_no_break(sd, freeu):
    torch._dynamo.reset()
    x, t, context = unet_inputs(sd)
    with torch.inference_mode():
        explained = torch._dynamo.explain(sd.unet)(x, t, context, freeu=freeu)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_the_vae_decoder_compiles_to_one_graph_with_no_break(sd):
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(sd.vae.decoder)(torch.randn(1, 4, 8, 8))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_a_freeu_switch_recompiles_once_and_new_values_sigmas_guidance_never(sd):
    """FreeU on for 2 steps with two different values, then off; sigmas and guidance vary per step."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(sd.unet, backend=counter)
    on, other = FreeU.common().to_dict(), FreeU(1.3, 1.4, 0.9, 0.2).to_dict()
    plan = Plan([14.6, 5.0, 2.0, 0.6, 0.2], "dpmpp_2m", [7.5, 7.5, 5.0, 3.0], [on, other, None, None])
    with torch.inference_mode():
        cond, uncond = conditioning(sd, ["a cube"], "")
        x = torch.randn(1, 4, 8, 8) * plan.sigmas[0]
        loop = prepared_steps(dataclasses.replace(sd, unet=compiled), plan, x, None)
        loop({"x": x, "noise": x.new_empty(0, *x.shape), "cond": cond, "uncond": uncond})
    assert counter.frame_count == 2  # FreeU on, then off
