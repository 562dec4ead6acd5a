"""The prepared run (solvers.prepare, pipeline.generate.step_loop, pipeline/graphs.py) and torch.compile
of its networks.

Everything a run needs that does not depend on x is computed before the first step (the denoiser's
sigma / c_in / t on the device, FreeU's factors on the device, the step noise drawn ahead into one
buffer, finite flags recorded on the device). On CPU float32 that must change no bit: the prepared
values come from the same float64 code, and the noise from the same generators in the same order.

Compile: the U-Net and the VAE decoder are one graph each with no graph break, and a FreeU switch
between steps costs at most one recompilation (new FreeU values, sigmas and guidance none). Traced
by dynamo only (`torch._dynamo.explain`, the counting backend): what breaks a graph or recompiles is
decided there, before any code generation.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import pipeline
import weights
from model import Denoiser, FreeU
from pipeline.generate import _LOOPS, conditioning, step_loop, step_noise
from pipeline.graphs import StaticLoop
from schedule import DiscreteSchedule
from solvers import SOLVERS, Plan, prepare, sample
from solvers.loop import buffered, draw_ahead
from tests.checkpoints import write_checkpoint
from tests.helpers import one_thread, tiny_unet

SEEDS = (3, 11)
LATENT = (4, 8, 8)  # 64 px: the tiny model's smallest size the VAE / U-Net levels take


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():  # tiny networks: 2 threads on a shared machine are many times slower
        yield


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return weights.load(write_checkpoint(tmp_path_factory.mktemp("prepared"), "single"))


@pytest.fixture(scope="module")
def cond(sd):
    with torch.inference_mode():
        return pipeline.conditioning(sd, ["a red cube", "a blue sphere"], "")


def plain_run(sd, plan: Plan, cond) -> torch.Tensor:
    """`sample` on the library's guided denoiser: its coefficients computed at each call."""
    x = pipeline.initial_noise(SEEDS, LATENT) * plan.sigmas[0]
    return sample(pipeline.denoiser(sd, *cond), x, plan, noise=step_noise(SEEDS))


def prepared_run(sd, plan: Plan, cond) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's loop: the denoiser's coefficients on the device, over a dict of input buffers."""
    x = pipeline.initial_noise(SEEDS, LATENT) * plan.sigmas[0]
    prepared = prepare(plan, x, step_noise(SEEDS))
    return step_loop(sd, prepared, x)({"x": x, "noise": prepared.noise, "cond": cond[0], "uncond": cond[1]})


def plan_for(solver: str, guidance: float, freeu: bool) -> Plan:
    # 4 steps: every multistep rule reaches a step with two earlier estimates; the last into 0.
    sigmas = [14.6, 3.0, 0.9, 0.2, 0.0]
    return Plan(sigmas, solver, guidance=guidance, freeu=FreeU.common().to_dict() if freeu else None)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_a_prepared_run_equals_the_plain_loop_bitwise_for_every_solver(sd, cond, solver):
    with torch.inference_mode():
        for guidance in (1.0, 7.5):
            for freeu in (False, True):
                plan = plan_for(solver, guidance, freeu)
                x, finite = prepared_run(sd, plan, cond)
                assert torch.equal(x, plain_run(sd, plan, cond)), (guidance, freeu)
                assert finite.tolist() == [True] * (plan.steps + 1)


def test_a_freeu_switch_between_steps_is_prepared_per_step(sd, cond):
    on = FreeU.common().to_dict()
    plan = Plan([14.6, 3.0, 0.9, 0.2], "dpmpp_2m", guidance=7.5, freeu=[on, on, None])
    with torch.inference_mode():
        assert torch.equal(prepared_run(sd, plan, cond)[0], plain_run(sd, plan, cond))
    options = prepare(plan, torch.zeros(1, *LATENT)).options
    assert options[0]["freeu"] is options[1]["freeu"] == FreeU.common()  # read once per distinct value
    assert options[2]["freeu"] is None


def test_noise_drawn_ahead_is_the_lazy_stream_in_order():
    like = torch.zeros(2, *LATENT)
    lazy = step_noise(SEEDS)
    source = buffered(draw_ahead(step_noise(SEEDS), like, 3))
    for _ in range(3):
        assert torch.equal(source(like), lazy(like))
    with pytest.raises(ValueError, match="drew more than the 3 noise tensors drawn ahead"):
        source(like)


def test_denoiser_coefficients_come_from_the_table_without_changing_a_bit():
    """The table holds what the per-sample float64 path computes; a float sigma and a [B] tensor agree."""
    unet = torch.nn.Linear(1, 1)
    unet.forward = lambda x, t, context, freeu=None: x * t[:, None, None, None] / 1000
    denoiser = Denoiser(unet, DiscreteSchedule.sd())
    x, context = torch.randn(2, *LATENT), torch.randn(2, 3, 5)
    denoiser.prepare([14.6, 0.5], 2, x.device, x.dtype)
    assert denoiser._prepared.cache_info().currsize == 2
    for sigma in (14.6, 0.5, 0.123):
        assert torch.equal(denoiser(x, sigma, context), denoiser(x, torch.tensor([sigma] * 2), context))


def test_a_run_with_graphs_gives_the_same_images_and_reuses_its_static_loop(sd):
    plan = plan_for("dpmpp_2m_sde", 7.5, True)
    eager, graphs = pipeline.run_in_memory(sd, plan), pipeline.run_in_memory(sd, plan, compile=True)
    jobs = [pipeline.Job("a red cube", SEEDS[0]), pipeline.Job("a blue sphere", SEEDS[1])]
    plain = pipeline.generate(eager, jobs)
    assert torch.equal(pipeline.generate(graphs, jobs), plain)
    others = [pipeline.Job("a cat", 5), pipeline.Job("a dog", 6)]
    other = pipeline.generate(graphs, others)  # the same buffers
    assert len(_LOOPS[sd.unet]) == 1
    assert torch.equal(other, pipeline.generate(eager, others))


def test_a_static_loop_refuses_inputs_of_another_shape():
    loop = StaticLoop(lambda inputs: inputs["x"] * 2, {"x": torch.ones(2, 3)})
    assert torch.equal(loop({"x": torch.full((2, 3), 3.0)}), torch.full((2, 3), 6.0))
    with pytest.raises(ValueError, match=r"a captured run takes shape \(2, 3\), got \(1, 3\)"):
        loop({"x": torch.ones(1, 3)})


def test_non_finite_latents_name_their_step_without_a_per_step_check(sd):
    """w = 1e300 is inf in float32: the first guided estimate is non-finite; the flags recorded on the
    device name step 1 after the run, as the per-step check did."""
    plan = Plan([14.6, 3.0, 0.0], "euler", guidance=1e300)
    with pytest.raises(pipeline.SamplingError, match=r"non-finite at step 1 of 2 \(sigma 14\.6\)"):
        pipeline.generate(pipeline.run_in_memory(sd, plan), [pipeline.Job("a", 0)])


def unet_inputs(sd, batch: int = 2):
    x = torch.randn(batch, 4, 8, 8)
    return x, torch.full((batch,), 500.0), torch.randn(batch, 77, sd.unet.config.context_dim)


@pytest.mark.parametrize(
    "freeu",
    [None, *(FreeU(1.3, 1.4, 0.9, 0.2, v, where) for v in (1, 2) for where in ("channels", "blocks"))],
    ids=lambda f: "off" if f is None else f"v{f.version}-{f.placement}",
)
def test_the_unet_compiles_to_one_graph_with_no_break(sd, freeu):
    torch._dynamo.reset()
    x, t, context = unet_inputs(sd)
    with torch.inference_mode():
        explained = torch._dynamo.explain(tiny_unet(context.shape[-1]))(x, t, context, freeu=freeu)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_the_vae_decoder_compiles_to_one_graph_with_no_break(sd):
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(sd.vae.decoder)(torch.randn(1, 4, 8, 8))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_a_freeu_switch_recompiles_once_and_new_values_sigmas_guidance_never(sd):
    """FreeU on for 2 steps with two different values, then off; sigmas and guidance vary per step."""
    on, other = FreeU.common().to_dict(), FreeU(1.3, 1.4, 0.9, 0.2).to_dict()
    plan = Plan(
        [14.6, 5.0, 2.0, 0.6, 0.2], "dpmpp_2m", guidance=[7.5, 7.5, 5.0, 3.0], freeu=[on, other, None, None]
    )
    assert compiled_frames(sd, plan) == 2  # FreeU on, then off


def compiled_frames(sd, plan: Plan) -> int:
    """The graphs torch.compile makes of a tiny U-Net over one run of `plan` (its frame count)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(tiny_unet(sd.unet.config.context_dim), backend=counter)
    with torch.inference_mode():
        cond, uncond = conditioning(sd, ["a cube"], "")
        x = torch.randn(1, 4, 8, 8) * plan.sigmas[0]
        prepared = prepare(plan, x)
        loop = step_loop(dataclasses.replace(sd, unet=compiled), prepared, x)
        loop({"x": x, "noise": prepared.noise, "cond": cond, "uncond": uncond})
    return counter.frame_count


GUIDANCE_VARIANTS = {
    "interval": {"guidance_interval": [[0.5, 5.0]] * 4},
    "rescale": {"cfg_rescale": 0.7},
    "apg": {"apg": {"eta": 0.5, "norm_threshold": 10.0, "momentum": -0.5}},
    "zero-star": {"cfg_zero_star": True},
    "all": {
        "guidance_interval": [[0.5, 5.0]] * 4,
        "cfg_rescale": 0.7,
        "apg": {"eta": 0.0, "norm_threshold": 0.0, "momentum": 0.3},
        "cfg_zero_star": True,
    },
}


@pytest.mark.parametrize("variant", list(GUIDANCE_VARIANTS))
def test_a_prepared_run_with_a_guidance_variant_equals_the_plain_loop_bitwise(sd, cond, variant):
    """Also twice from one Prepared: APG's momentum buffer starts afresh with each run."""
    plan = plan_for("heun", 7.5, False).replace(**GUIDANCE_VARIANTS[variant])
    with torch.inference_mode():
        x = pipeline.initial_noise(SEEDS, LATENT) * plan.sigmas[0]
        prepared = prepare(plan, x, step_noise(SEEDS))
        loop = step_loop(sd, prepared, x)
        inputs = {"x": x, "noise": prepared.noise, "cond": cond[0], "uncond": cond[1]}
        first, second = loop(inputs)[0], loop(inputs)[0]
        assert torch.equal(first, plain_run(sd, plan, cond)) and torch.equal(second, first)


@pytest.mark.parametrize("variant", ["rescale", "all"])  # the U-Net sees only the batch of each call
def test_a_compiled_unet_neither_breaks_nor_recompiles_under_a_guidance_variant(sd, variant):
    """Batch B outside the interval and 2B inside are two input shapes: one recompilation, no more."""
    plan = Plan([14.6, 5.0, 2.0, 0.6, 0.2], "dpmpp_2m", guidance=[7.5, 7.5, 5.0, 3.0]).replace(
        **GUIDANCE_VARIANTS[variant]
    )
    shapes = 2 if "guidance_interval" in GUIDANCE_VARIANTS[variant] else 1
    assert compiled_frames(sd, plan) == shapes


def test_the_compiled_unet_equals_the_eager_one_with_and_without_freeu():
    """fullgraph=True raises on any graph break; aot_eager also traces the in-place adds and the FFT."""
    unet = tiny_unet()
    compiled = torch.compile(unet, fullgraph=True, backend="aot_eager")
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3.5, 700.25]), torch.randn(2, 3, 8)
    freeu = FreeU.common()
    with torch.no_grad():
        # Tolerance 1e-6: the traced graph runs the same kernels, perhaps in a different order.
        torch.testing.assert_close(compiled(x, t, context), unet(x, t, context), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            compiled(x, t, context, freeu=freeu), unet(x, t, context, freeu=freeu), rtol=1e-6, atol=1e-6
        )


def test_switching_freeu_between_calls_recompiles_at_most_once():
    torch._dynamo.reset()
    unet, backend = tiny_unet(), CompileCounter()
    compiled = torch.compile(unet, fullgraph=True, backend=backend)
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 3, 8)
    settings = [
        None,
        FreeU(1.1, 1.1, 0.9, 0.2),
        FreeU.common(),
        None,
        FreeU(1.3, 1.4, 0.8, 0.3),
        FreeU(1.1, 1.1, 0.9, 0.2),
    ]
    with torch.no_grad():
        for freeu in settings:
            torch.testing.assert_close(
                compiled(x, t, context, freeu=freeu), unet(x, t, context, freeu=freeu), rtol=1e-6, atol=1e-6
            )
    assert backend.frame_count == 2  # one graph without FreeU, one with it
