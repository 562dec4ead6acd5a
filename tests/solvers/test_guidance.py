"""Guidance variants (solvers/guidance.py) against diffusers 0.35's guiders, on the same conditional and
unconditional predictions in the reference's own space, and the exact guided model
(solvers.analytic.ConditionalMixture).

Spaces: the denoiser gives x0 predictions D; eps = (x - D) / sigma. CFG rescale and CFG-Zero* are
compared on eps (diffusers applies them to SD's noise prediction), APG on D (its paper's space). All
in float64: the conversions x0 <-> eps round at ~1e-16 relative, so 1e-12 leaves only rounding; CFG-Zero*'s
s* is computed by diffusers in float32, so there 1e-6 (float32's 6e-8 times the sums' conditioning).
"""

import json
import math

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

from pipeline import PARAMETERS_KEY, PLAN_KEY, build_plan
from run_sample import main
from solvers import OPTIONS, Plan, PlanError, guided, preset, sample
from solvers.analytic import ConditionalMixture
from solvers.guidance import APG, combine, passes, steps_interval, weight_schedule
from solvers.guidance_analysis import guided_error
from tests.checkpoints import write_checkpoint
from tests.helpers import one_thread, pixels, run_main, text_chunks

SHAPE = (2, 4, 8, 8)


def predictions(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, d_cond, d_uncond = (torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    return 3.0 * x, d_cond, d_uncond


def eps(x, d, sigma):
    return (x - d) / sigma


class Recording:
    """A model(x, sigma, c) that records each call's batch and returns c-dependent x0 predictions."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, c, **options):
        self.batches.append(x.shape[0])
        return 0.5 * x + c.view(-1, *(1,) * (x.ndim - 1))


def test_a_call_outside_the_guidance_interval_runs_the_model_with_batch_b():
    model = Recording()
    denoise = guided(model, torch.ones(1), torch.zeros(1))
    x = torch.randn(3, 4)
    for sigma in (10.0, 5.0, 1.0, 0.5, 0.1):
        denoise(x, sigma, guidance=7.5, guidance_interval=[0.5, 5.0])
    # (0.5, 5]: 10 and 0.1 outside, the lower edge 0.5 outside, the upper edge 5 inside
    assert model.batches == [3, 6, 6, 3, 3]


def test_outside_the_interval_the_result_is_the_conditional_prediction():
    model = Recording()
    denoise = guided(model, torch.ones(1), torch.zeros(1))
    x = torch.randn(3, 4)
    assert torch.equal(denoise(x, 9.0, guidance=7.5, guidance_interval=[0.5, 5.0]), 0.5 * x + 1)


def test_guidance_steps_are_diffusers_step_window_as_a_sigma_interval():
    plan = Plan([14.6, 8.0, 4.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0])
    interval = steps_interval(plan, 0.25, 0.75)  # int(0.25 * 8) = 2 <= i < 6
    guided_steps = [i for i in range(8) if interval[0] < plan.sigmas[i] <= interval[1]]
    assert guided_steps == [2, 3, 4, 5]


@pytest.mark.parametrize(
    "sigma", [2.5, torch.tensor([2.5, 0.7], dtype=torch.float64)], ids=["float", "per-sample"]
)
@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_cfg_rescale_equals_diffusers_on_the_noise_prediction(sigma, phi):
    x, d_cond, d_uncond = predictions()
    s = sigma if isinstance(sigma, float) else sigma.view(-1, 1, 1, 1)
    ours, _ = combine(x, sigma, d_cond, d_uncond, 7.5, cfg_rescale=phi)
    guider = ClassifierFreeGuidance(guidance_scale=7.5, guidance_rescale=phi)
    guider.set_state(step=0, num_inference_steps=5, timestep=torch.tensor(999))
    reference, _ = guider.forward(eps(x, d_cond, s), eps(x, d_uncond, s))
    torch.testing.assert_close(eps(x, ours, s), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta,threshold,momentum", [(1.0, 0.0, 0.0), (0.0, 15.0, 0.0), (0.3, 20.0, -0.5)])
def test_apg_equals_diffusers_normalized_guidance_on_x0_with_its_momentum_over_calls(
    eta, threshold, momentum
):
    buffer = MomentumBuffer(momentum)
    setting, running = APG(eta, threshold, momentum), None
    for call in range(3):
        x, d_cond, d_uncond = predictions(call)
        ours, running = combine(x, 1.3, d_cond, d_uncond, 5.0, apg=setting, running=running)
        reference = normalized_guidance(d_cond, d_uncond, 5.0, buffer, eta, threshold)
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_cfg_zero_star_equals_diffusers_after_its_zero_init_steps():
    x, d_cond, d_uncond = predictions()
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=6.0, zero_init_steps=0)
    guider.set_state(step=3, num_inference_steps=5, timestep=torch.tensor(500))
    reference, _ = guider.forward(eps(x, d_cond, 2.0), eps(x, d_uncond, 2.0))
    ours, _ = combine(x, 2.0, d_cond, d_uncond, 6.0, cfg_zero_star=True)
    torch.testing.assert_close(eps(x, ours, 2.0), reference, rtol=1e-6, atol=1e-6)


def test_the_guided_denoiser_keeps_apgs_momentum_across_its_calls():
    model = ConditionalMixture.default(dim=4)
    x = torch.randn(3, 4, dtype=torch.float64)
    setting = APG(0.5, 0.0, 0.6)
    fresh = model.guided()
    first, second = fresh(x, 2.0, 5.0, apg=setting), fresh(x, 1.0, 5.0, apg=setting)
    d_u, d_c = (model(x, 1.0, torch.full((3,), c, dtype=torch.float64)) for c in (0.0, 1.0))
    d_u2, d_c2 = (model(x, 2.0, torch.full((3,), c, dtype=torch.float64)) for c in (0.0, 1.0))
    _, running = combine(x, 2.0, d_c2, d_u2, 5.0, apg=setting)
    expected, _ = combine(x, 1.0, d_c, d_u, 5.0, apg=setting, running=running)
    assert torch.equal(second, expected) and not torch.equal(first, second)
    assert torch.equal(
        model.guided()(x, 1.0, 5.0, apg=setting), combine(x, 1.0, d_c, d_u, 5.0, apg=setting)[0]
    )


def test_every_variant_traces_as_one_graph_without_host_synchronisation():
    """dynamo breaks a graph at .item(), data-dependent branches and other host reads."""
    torch._dynamo.reset()
    x, d_cond, d_uncond = (t.float() for t in predictions())
    explained = torch._dynamo.explain(combine)(
        x, 1.5, d_cond, d_uncond, 7.5, 0.7, APG(0.5, 15.0, -0.5), True, torch.zeros_like(x)
    )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_weight_schedules_go_from_w0_at_the_first_step_to_w1_at_the_last(kind):
    w = weight_schedule(kind, 1.0, 7.0, 5)
    assert w[0] == 1.0 and w[-1] == pytest.approx(7.0, abs=1e-15)
    assert w[2] == pytest.approx(4.0, abs=1e-15)  # both pass the midpoint halfway
    assert w[1] == pytest.approx(
        2.5 if kind == "linear" else 7.0 + (1.0 - 7.0) * (1 + math.cos(math.pi / 4)) / 2
    )


def test_a_plan_records_every_variant_per_step_and_counts_its_unet_passes():
    plan = Plan(
        [14.6, 3.0, 0.9, 0.2, 0.0],
        "heun",
        guidance=[1.0, 3.0, 5.0, 7.0],
        guidance_interval=[[0.5, 5.0]] * 4,
        cfg_rescale=0.7,
        apg={"eta": 0.0},
        cfg_zero_star=True,
    )
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.apg[0] == {"eta": 0.0, "norm_threshold": 15.0, "momentum": 0.0}
    # heun: step 1 at w = 1 (2 calls, alone); step 2 at 3.0 and 0.9 (guided); step 3 at 0.9 (guided)
    # and 0.2 (outside); step 4 into 0 at 0.2 (outside)
    assert passes(plan) == (3, 4)
    assert "U-Net passes per image 10 (3 guided x 2 + 4 conditional)" in plan.describe()


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("cfg_rescale", 1.5, "cfg_rescale of step 1: must be a number in [0, 1]"),
        ("guidance_interval", [[5.0, 0.5]], "guidance_interval of step 1: needs 0 <= sigma_lo < sigma_hi"),
        ("apg", {"eta": -1.0}, "apg of step 1: apg eta must be a finite number >= 0"),
        ("apg", {"eta": 0.0, "norm": 1.0}, "apg of step 1: must be none or an object with eta"),
        ("cfg_zero_star", 1, "cfg_zero_star of step 1: must be true or false"),
    ],
)
def test_a_bad_value_in_a_plan_names_its_field(field, value, message):
    with pytest.raises(PlanError, match=None) as raised:
        Plan([14.6, 0.0], **{field: value})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--cfg-rescale", "1.5", "argument --cfg-rescale: must be a number in [0, 1]"),
        ("--guidance-interval", "5,0.5", "argument --guidance-interval: needs 0 <= sigma_lo < sigma_hi"),
        ("--apg", "-1", "argument --apg: apg eta must be a finite number >= 0"),
        ("--guidance-steps", "0.8,0.2", "argument --guidance-steps: needs 0 <= START < STOP <= 1"),
        ("--guidance-schedule", "square:1,2", "argument --guidance-schedule: give linear:W0,W1 or cosine"),
    ],
)
def test_a_bad_flag_is_refused_in_one_line_naming_it(flag, value, message, capsys, tmp_path):
    code, _, err = run_main(main, capsys, "--out", str(tmp_path / "out"), flag, value)
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_two_flags_for_one_option_are_refused():
    plan = preset("paper-5")
    with pytest.raises(ValueError, match=r"^give guidance or guidance_schedule, not both$"):
        OPTIONS["guidance"].overridden(plan, {"guidance": 5.0, "guidance_schedule": ("linear", 1.0, 7.5)})
    with pytest.raises(ValueError, match=r"^give guidance_interval or guidance_steps, not both$"):
        OPTIONS["guidance_interval"].overridden(plan, {"guidance_interval": [0, 1], "guidance_steps": (0, 1)})


def test_guiding_only_below_a_sigma_threshold_lowers_the_few_step_error_at_5_nfe():
    """Kynkaanniemi et al. 2024's claim on the exact guided model: at w = 7.5, guidance at the highest
    noise makes the guided ODE hard for few steps; dropping it above sigma 5 (karras-2m-5's first step)
    lowers the error against the ODE's own 200-step solution, by 11-17% over the seeds 1-3 of 64 starts
    and 11% at 256 (`python -m solvers.analyze --guidance`). paper-5 shows no consistent gain."""
    model = ConditionalMixture.default()
    x = model.unconditional.sample(64, 14.6, torch.Generator().manual_seed(1))
    plan = preset("karras-2m-5")
    with one_thread():
        full = guided_error(model, x, plan, {})
        below = guided_error(model, x, plan, {"guidance_interval": [0.0, 5.0]})
    assert below < 0.9 * full, (below, full)


def test_a_run_with_every_variant_records_them_in_the_png_and_replays_bitwise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = write_checkpoint(tmp_path / "weights", "single")
    common = ["--weights", str(weights), "--device", "cpu", "--height", "64", "--width", "64"]
    variants = ["--guidance-schedule", "linear:1,7.5", "--guidance-steps", "0,0.5", "--cfg-rescale", "0.7",
                "--apg", "0.5,10,-0.5", "--cfg-zero-star"]  # fmt: skip
    with one_thread():
        code, _, err = run_main(main, capsys, *common, "--out", str(tmp_path / "a"), "--steps", "4",
                                "--prompt", "a cube", *variants)  # fmt: skip
        assert code == 0, err
        [png] = (tmp_path / "a").glob("*.png")
        chunks = text_chunks(png)
        line = chunks[PARAMETERS_KEY]
        for label in ("CFG scale: 1; 3.16667; 5.33333; 7.5", "Guidance interval: ", "CFG rescale: 0.7",
                      "APG: eta 0.5 norm 10 momentum -0.5", "CFG-Zero*: on"):  # fmt: skip
            assert label in line, line
        stored = json.loads(chunks[PLAN_KEY])["options"]
        assert stored["cfg_rescale"] == [0.7] * 4 and stored["cfg_zero_star"] == [True] * 4
        assert main([*common, "--replay", str(png), "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(pixels(tmp_path / "b" / png.name), pixels(png))


def test_a_sample_of_the_exact_model_without_variants_is_plain_cfg():
    model = ConditionalMixture.default(dim=4)
    x = model.unconditional.sample(8, 14.6, torch.Generator().manual_seed(0))
    plan = preset("paper-5").replace(guidance=3.0)
    ones = torch.ones(8, dtype=torch.float64)

    def cfg(x_, sigma, guidance=1.0, **options):
        d_u, d_c = model(x_, sigma, 0 * ones[: len(x_)]), model(x_, sigma, ones[: len(x_)])
        return d_u + guidance * (d_c - d_u)

    torch.testing.assert_close(sample(model.guided(), x.clone(), plan), sample(cfg, x.clone(), plan))


def test_guidance_steps_read_the_sigmas_the_plans_knobs_place():
    plan = build_plan(preset_name="karras-2m-8", knobs={"rho": 9.0}, guidance_steps=(0.0, 0.5))
    assert plan.guidance_interval[0] == [plan.sigmas[4], plan.sigmas[0]]
    assert plan.sigmas != preset("karras-2m-8").sigmas


def test_the_png_counts_the_unet_passes_of_a_guidance_interval_per_image():
    """Sigma 14.6 lies outside (0.5, 5]: that step runs the conditional image alone, one pass of two."""
    from pipeline import png_metadata
    from pipeline.provenance import PARAMETERS_KEY, Settings

    plan = Plan([14.6, 5.0, 2.0, 0.6, 0.2], "dpmpp_2m", guidance=7.5, guidance_interval=[[0.5, 5.0]] * 4)
    settings = Settings(
        prompt="a cat", negative_prompt="", seed=1, width=64, height=64, weights="w.safetensors",
        weights_sha256="0" * 64, model="w", dtype="float32", device="cpu", compile=False, batch=1,
        batch_index=0,
    )  # fmt: skip
    line = png_metadata(plan, settings)[PARAMETERS_KEY]
    assert "U-Net passes: 7 per image (3 guided x 2 + 1 conditional)" in line
