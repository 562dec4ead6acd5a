"""Noise tables, time <-> sigma maps and step placement."""

import math

import numpy as np
import pytest
import torch

from schedule import (
    AYS,
    AYS_TABLES,
    VPSDE,
    Beta,
    DiscreteSchedule,
    KLOptimal,
    Polyexponential,
    SGMUniform,
    Simple,
    append_zero,
    exponential,
    karras,
    loglinear,
    paper_sigmas,
    time_uniform,
    uniform,
)

SD = DiscreteSchedule.sd()


def test_sd_table_matches_the_published_end_points():
    # docs/model-facts.md section 6: ac[0] = 0.99915, ac[999] = 0.0046601, sigma range 0.029167 .. 14.61464.
    assert SD.alphas_cumprod[0].item() == pytest.approx(0.99915, abs=5e-6)
    assert SD.alphas_cumprod[-1].item() == pytest.approx(0.0046601, rel=1e-4)
    assert SD.sigma_min == pytest.approx(0.029167, rel=1e-4)
    assert SD.sigma_max == pytest.approx(14.61464, rel=1e-6)
    assert SD.sigmas.dtype == torch.float64


def test_discrete_sigma_and_t_are_exact_inverses():
    # 1e-10: both maps are float64 log-linear interpolation, exact up to rounding (~1e-13).
    t = torch.rand(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * SD.t_max
    assert (SD.t(SD.sigma(t)) - t).abs().max() < 1e-10
    log_sigma = torch.empty(20_000, dtype=torch.float64).uniform_(
        math.log(SD.sigma_min), math.log(SD.sigma_max)
    )
    sigma = log_sigma.exp()
    assert ((SD.sigma(SD.t(sigma)) - sigma) / sigma).abs().max() < 1e-10


def test_discrete_schedule_hits_table_entries_at_integer_times():
    t = torch.tensor([0.0, 1.0, 500.0, 998.0, 999.0], dtype=torch.float64)
    assert torch.allclose(SD.sigma(t), SD.sigmas[t.long()], rtol=1e-14, atol=0)


def test_discrete_schedule_interpolates_log_sigma_linearly():
    # Halfway between two indices the log sigma is the mean of the neighbours (k-diffusion's t_to_sigma).
    expected = math.exp((SD.log_sigmas[123] + SD.log_sigmas[124]).item() / 2)
    assert SD.sigma(123.5) == pytest.approx(expected, rel=1e-14)


def test_scalars_in_scalars_out_tensors_in_tensors_out():
    assert isinstance(SD.sigma(10.0), float) and isinstance(SD.t(1.0), float)
    out = SD.t(torch.tensor([1.0, 2.0]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_discrete_schedule_refuses_values_outside_its_range():
    with pytest.raises(ValueError, match="outside"):
        SD.t(0.0)
    with pytest.raises(ValueError, match="outside"):
        SD.sigma(1000.0)
    with pytest.raises(ValueError, match="outside"):
        SD.t(float("nan"))


def test_discrete_schedule_rejects_a_table_that_is_not_a_noise_schedule():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteSchedule([0.5, 0.9])
    with pytest.raises(ValueError, match="between 0 and 1"):
        DiscreteSchedule([1.0, 0.5])


def test_discrete_schedule_equals_diffusers_sigmas():
    # diffusers keeps alphas_cumprod in float32: 1 - 0.99915 then carries ~7e-5 relative error,
    # so sigma_min agrees to ~4e-5; 1e-4 leaves room and still catches any table mistake.
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    acp = ref.alphas_cumprod.double()
    assert torch.allclose(((1 - acp) / acp).sqrt(), SD.sigmas, rtol=1e-4)


def test_vpsde_inverse_and_fit_hit_both_end_points():
    vp = VPSDE.fit(SD.sigma_min, SD.sigma_max)
    # recipe: beta_d ~ 9.046, beta_min ~ 0.846
    assert vp.beta_d == pytest.approx(9.046, abs=1e-3) and vp.beta_min == pytest.approx(0.846, abs=1e-3)
    assert vp.sigma(vp.eps_s) == pytest.approx(SD.sigma_min, rel=1e-10)
    assert vp.sigma(1.0) == pytest.approx(SD.sigma_max, rel=1e-10)
    t = torch.linspace(vp.eps_s, 1, 1001, dtype=torch.float64)
    assert (vp.t(vp.sigma(t)) - t).abs().max() < 1e-10
    sigma = torch.logspace(-1.5, 1.16, 500, dtype=torch.float64)
    assert ((vp.sigma(vp.t(sigma)) - sigma) / sigma).abs().max() < 1e-10


def test_vpsde_scale_and_log_snr_follow_eq_7_and_8():
    vp = VPSDE.fit(SD.sigma_min, SD.sigma_max)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    integral = 0.5 * vp.beta_d * t**2 + vp.beta_min * t
    assert torch.allclose(vp.sigma(t), (integral.exp() - 1).sqrt(), rtol=1e-12)
    assert torch.allclose(vp.s(t), 1 / integral.exp().sqrt(), rtol=1e-12)
    assert torch.allclose(vp.s(t), 1 / (1 + vp.sigma(t) ** 2).sqrt(), rtol=1e-12)
    assert torch.allclose(vp.lambda_(t), -vp.sigma(t).log(), rtol=1e-12)


def test_fitted_vpsde_is_not_sds_table_mid_trajectory():
    # Why the paper's sampler never converts sigma to the U-Net's time through the VP fit: at
    # the same fraction of the time range the fit is ~20% off SD's table (recipe: 1.94 vs 1.62).
    vp = VPSDE.fit(SD.sigma_min, SD.sigma_max)
    fraction = 500 / 999
    assert SD.sigma(500.0) == pytest.approx(1.62, abs=0.01)
    assert vp.sigma(vp.eps_s + fraction * (1 - vp.eps_s)) == pytest.approx(1.94, abs=0.01)


@pytest.mark.parametrize("place", [
    lambda n: karras(n, 0.03, 14.6),
    lambda n: exponential(n, 0.03, 14.6),
    lambda n: time_uniform(n, SD, rho=1.2),
    lambda n: uniform(n, SD, "leading"),
    lambda n: loglinear(AYS_TABLES["sd1"], n),
    lambda n: paper_sigmas(SD, n, n + 4, 7, n + 1),
    # the discretizations that end with a step to 0: their n + 1 placed sigmas before it
    lambda n: AYS(N=n + 1).sigmas(SD)[:-1],
    lambda n: Simple(N=n + 1).sigmas(SD)[:-1],
    lambda n: SGMUniform(N=n + 1).sigmas(SD)[:-1],
    lambda n: KLOptimal(N=n + 1).sigmas(SD)[:-1],
    lambda n: Polyexponential(N=n + 1, rho=2.0).sigmas(SD)[:-1],
    lambda n: Beta(N=n + 1).sigmas(SD)[:-1],
])  # fmt: skip
@pytest.mark.parametrize("n", [1, 5, 8, 20])
def test_every_placement_returns_n_plus_one_descending_float64_sigmas_without_a_zero(place, n):
    s = place(n)
    assert s.shape == (n + 1,) and s.dtype == torch.float64
    assert (s[1:] < s[:-1]).all() and (s > 0).all()


def test_append_zero_is_the_only_way_to_end_at_zero():
    s = append_zero(karras(3, 0.1, 10.0))
    assert s.tolist()[-1] == 0.0 and len(s) == 5


def test_karras_follows_eq_15_with_exact_end_points():
    s = karras(9, 0.03, 14.6, rho=7.0)
    assert s[0].item() == pytest.approx(14.6, rel=1e-14) and s[-1].item() == pytest.approx(0.03, rel=1e-14)
    # uniform in sigma^(1/rho)
    d = torch.diff(s ** (1 / 7))
    assert torch.allclose(d, d[0].expand_as(d), rtol=1e-10)


def test_exponential_is_uniform_in_log_snr():
    s = exponential(6, 0.03, 14.6)
    d = torch.diff(-s.log())
    assert torch.allclose(d, d[0].expand_as(d), rtol=1e-12)


def test_time_uniform_places_steps_uniformly_in_vp_time():
    vp = VPSDE.fit(SD.sigma_min, SD.sigma_max)
    t = vp.t(time_uniform(4, vp))
    assert torch.allclose(t, torch.linspace(1, vp.eps_s, 5, dtype=torch.float64), rtol=1e-10)


def test_time_uniform_with_rho_follows_eq_16_in_ddpm_index():
    t = SD.t(time_uniform(5, SD, rho=1.2))
    t_ref = (999 ** (1 / 1.2) + torch.arange(6) / 5 * (0 - 999 ** (1 / 1.2))) ** 1.2
    assert torch.allclose(t, t_ref.double(), atol=1e-9)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 25])
def test_uniform_plus_zero_equals_diffusers_euler_schedule(spacing, steps):
    # diffusers interpolates its float32 sigmas (see above): agreement to ~4e-5 relative.
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing=spacing,
        steps_offset=1,
    )
    ref.set_timesteps(steps)
    ours = append_zero(uniform(steps - 1, SD, spacing))
    assert torch.allclose(ours.float(), ref.sigmas.float(), rtol=1e-4, atol=1e-7)


def test_karras_plus_zero_equals_diffusers_karras_sigmas():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True
    )
    ref.set_timesteps(20)
    ours = append_zero(karras(19, SD.sigma_min, SD.sigma_max))
    # float32 end points in diffusers (see above): ~4e-5 relative.
    assert torch.allclose(ours.float(), ref.sigmas.float(), rtol=1e-4, atol=1e-7)


def test_ays_reproduces_the_published_tables_and_diffusers():
    pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_utils import AysSchedules

    for model, key in (("sd1", "StableDiffusionSigmas"), ("sdxl", "StableDiffusionXLSigmas")):
        ref = np.array(AysSchedules[key])
        # diffusers' tables already carry the ComfyUI/diffusers tail: the final 0.029 replaced by 0.
        assert ref[-1] == 0
        assert np.allclose(AYS(N=10, model=model).sigmas(SD).numpy(), ref, rtol=1e-12, atol=0)


def test_ays_interpolates_log_linearly_between_table_entries():
    # 20 steps put every other point halfway (in log sigma) between two table entries.
    s20, s10 = loglinear(AYS_TABLES["sd1"], 20), loglinear(AYS_TABLES["sd1"], 10)
    assert s10.tolist() == pytest.approx(AYS_TABLES["sd1"], rel=1e-12)
    assert torch.allclose(s20[::2], s10, rtol=1e-12)
    assert torch.allclose(s20[1::2], (s10[:-1] * s10[1:]).sqrt(), rtol=1e-12)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((8, 12, 7, 9), [14.615, 6.712, 3.608, 2.172, 1.404, 0.937, 0.617, 0.373, 0.1471]),
        ((5, 8, 5, 6), [14.615, 4.519, 1.962, 1.001, 0.502, 0.1320]),
        ((6, 8, 5, 6), [14.615, 5.341, 2.523, 1.388, 0.805, 0.437, 0.1320]),
        ((8, 12, 12, 10), [14.615, 6.548, 3.467, 2.067, 1.324, 0.871, 0.560, 0.317, 0.0598]),
    ],
)
def test_paper_sigmas_equal_the_recipe_reference_lists(args, expected):
    # recipe: "any correct implementation matches them to ~0.2%". The last entry is the table's
    # 4-digit sigma_stop: the lists print 0.060 for 0.0598, whose rounding alone is 0.3%.
    assert np.allclose(paper_sigmas(SD, *args).numpy(), expected, rtol=2e-3)


def test_paper_sigmas_stop_level_is_a_point_of_the_karras_grid():
    s = paper_sigmas(SD, 8, 12, 7, 9)
    grid = karras(11, SD.sigma_min, SD.sigma_max, 7)
    assert s[-1].item() == pytest.approx(grid[9].item(), rel=1e-10)
    assert SD.t(s[-1].item()) == pytest.approx(22.7, abs=0.05)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: karras(0, 0.1, 1.0), "steps must be an integer >= 1"),
        (lambda: karras(3, 1.0, 0.1), "0 < sigma_min < sigma_max"),
        (lambda: uniform(3, SD, "middle"), "unknown spacing"),
        (lambda: AYS(N=3, model="sd2"), "model must be one of sd1, sdxl, got 'sd2'"),
        (lambda: paper_sigmas(SD, 8, 12, 7, 12), "j_stop must index"),
    ],
)
def test_bad_placement_arguments_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_float32_table_accepts_plans_made_on_the_float64_table():
    # Checkpoints store alphas_cumprod in float32: sigma_min moves up by 1.3e-5 relative, and a
    # Karras plan's last sigma (the float64 sigma_min) must still map to t = 0.
    sd32 = DiscreteSchedule(SD.alphas_cumprod.float())
    assert sd32.sigma_min > SD.sigma_min
    assert sd32.t(SD.sigma_min) == 0.0
    with pytest.raises(ValueError, match="outside"):
        sd32.t(SD.sigma_min * (1 - 1e-3))
