"""The samplers of distilled models (solvers/distilled.py: LCM, TCD), their discretizations (LCM's
timesteps, explicit timesteps) and presets (solvers/presets.py DISTILLED) against diffusers'
schedulers: the same timesteps, and whole runs on the same exact denoiser with the same noise, in
float64.

The schedulers get SD's table in float64 (their own `alphas_cumprod` comes from float32 betas; the
Euler schedulers' sigmas, cast to float32 in set_timesteps, are set to diffusers' formula
sqrt((1 - abar_t) / abar_t) at their own timesteps in float64) and timesteps as Python ints (LCM's
c_skip, c_out of a tensor timestep are computed in float32). LCM, TCD and DDIM then agree to float64
round-off: measured <= 8.3e-15 relative, bound 1e-10. EulerDiscrete and EulerAncestral cast the
sample to float32 inside step(): measured <= 1.8e-6 (1 step, x at sigma 14.6 rounded to float32),
bound 1e-5. Both bounds catch any wrong coefficient or level: LCM's c_skip alone moves an 8-step run
by 1e-7, a trailing timestep one off moves a run by > 1e-3.
"""

import json
import math

import numpy as np
import pytest
import torch

import run_sample
from pipeline import PARAMETERS_KEY, PLAN_KEY
from schedule import LCM, Diffusers, DiscreteSchedule, Timesteps
from schedule.discretizations import from_dict, to_dict
from solvers import Plan, PlanError, generator_noise, preset, sample
from solvers.analytic import GaussianMixture
from solvers.presets import DISTILLED, distilled, preset_names, weights_warning
from tests.checkpoints import write_checkpoint
from tests.helpers import one_thread, pixels, rel_err, run_main, text_chunks

diffusers = pytest.importorskip("diffusers")
# diffusers' Euler schedulers take np.array of torch tensors, which numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"
)

SD = DiscreteSchedule.sd()
MIXTURE = GaussianMixture.default(dim=6)
X = MIXTURE.sample(4, SD.sigma_max, torch.Generator().manual_seed(0))
TABLE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SEED = 11


def _eps(x_t: torch.Tensor, t: int) -> torch.Tensor:
    """The exact mixture denoiser as an eps-prediction network of the VP sample x_t at timestep t."""
    sigma = float(SD.sigmas[t])
    x = x_t * math.sqrt(1 + sigma**2)
    return (x - MIXTURE(x, sigma)) / sigma


def _float64(scheduler):
    scheduler.alphas_cumprod = SD.alphas_cumprod.clone()
    if hasattr(scheduler, "final_alpha_cumprod"):
        one = torch.tensor(1.0, dtype=torch.float64)
        scheduler.final_alpha_cumprod = (
            one if scheduler.config.set_alpha_to_one else SD.alphas_cumprod[0].clone()
        )
    return scheduler


def _vp_run(scheduler, end_sigma: float, **step_options) -> torch.Tensor:
    """A VP scheduler (LCM, TCD, DDIM) from X along its own timesteps; the result in our form."""
    generator = torch.Generator().manual_seed(SEED)
    x_t = X / math.sqrt(1 + SD.sigma_max**2)
    for t in scheduler.timesteps.tolist():
        x_t = scheduler.step(_eps(x_t, t), t, x_t, generator=generator, **step_options).prev_sample
    return x_t * math.sqrt(1 + end_sigma**2)


def _euler_run(scheduler, steps: int) -> torch.Tensor:
    """EulerDiscrete / EulerAncestral (their state is our x) from X along their own timesteps."""
    scheduler.set_timesteps(steps)
    t_list = scheduler.timesteps.long()
    scheduler.sigmas = torch.cat([SD.sigmas[t_list], torch.zeros(1, dtype=torch.float64)])
    generator, x = torch.Generator().manual_seed(SEED), X.clone()
    for t in scheduler.timesteps:
        x_t = scheduler.scale_model_input(x, t)
        x = scheduler.step(_eps(x_t, int(t)), t, x, generator=generator).prev_sample
    return x


def _ours(plan: Plan) -> torch.Tensor:
    return sample(MIXTURE, X.clone(), plan, noise=generator_noise(torch.Generator().manual_seed(SEED)))


def _levels(timesteps, end: float) -> list[float]:
    """Timesteps mapped to sigmas on SD's table, then the level the last step lands on."""
    return [float(SD.sigmas[t]) for t in timesteps] + [end]


def _lcm(**config):
    return _float64(diffusers.LCMScheduler(**TABLE, **config))


def _tcd():
    return _float64(diffusers.TCDScheduler(**TABLE))


def _ddim():
    # Hyper-SD's card: DDIMScheduler.from_config(SD's config, timestep_spacing="trailing"); SD's
    # config has set_alpha_to_one false and clip_sample false.
    return _float64(
        diffusers.DDIMScheduler(
            **TABLE, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False
        )
    )


# --- each preset's sigmas are its reference scheduler's timesteps, mapped to sigmas ----------------


@pytest.mark.parametrize("steps", [1, 2, 4, 6, 8])
@pytest.mark.parametrize("name", ["lcm", "flash"])
def test_lcm_and_flash_presets_sit_at_lcm_schedulers_timesteps_then_zero(name, steps):
    reference = _lcm()
    reference.set_timesteps(steps)
    assert list(preset(f"{name}-{steps}").sigmas) == pytest.approx(
        _levels(reference.timesteps, 0.0), rel=1e-14
    )


def test_flash_runs_where_diffusers_runs_it_lcm_ignores_trailing_spacing():
    # Flash's model card asks LCMScheduler for timestep_spacing="trailing"; LCMScheduler ignores it.
    reference = _lcm(timestep_spacing="trailing")
    reference.set_timesteps(4)
    assert reference.timesteps.tolist() == [999, 759, 499, 259]
    assert list(preset("flash-4").sigmas) == pytest.approx(_levels([999, 759, 499, 259], 0.0), rel=1e-14)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_tcd_preset_sits_at_tcd_schedulers_timesteps_then_t_0(steps):
    reference = _tcd()
    reference.set_timesteps(steps)
    plan = preset(f"tcd-{steps}")
    assert list(plan.sigmas) == pytest.approx(_levels(reference.timesteps, SD.sigma_min), rel=1e-14)
    assert plan.gamma == (0.3,) * steps  # recorded, not implied


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize(
    "name, scheduler",
    [("lightning", diffusers.EulerDiscreteScheduler), ("turbo", diffusers.EulerAncestralDiscreteScheduler)],
)
def test_lightning_and_turbo_presets_equal_eulers_trailing_sigmas(name, scheduler, steps):
    reference = scheduler(**TABLE, timestep_spacing="trailing")
    reference.set_timesteps(steps)
    ours = list(preset(f"{name}-{steps}").sigmas)
    assert ours == pytest.approx(_levels(reference.timesteps.long(), 0.0), rel=1e-14)
    # its own sigmas, from its float32 table (a cumprod of 1000 float32 factors: 1.8e-6 at t = 124)
    assert ours == pytest.approx(reference.sigmas.tolist(), rel=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_hyper_preset_equals_ddim_trailing_ending_at_t_0(steps):
    reference = _ddim()
    reference.set_timesteps(steps)
    assert list(preset(f"hyper-{steps}").sigmas) == pytest.approx(
        _levels(reference.timesteps, SD.sigma_min), rel=1e-14
    )


def test_dmd2_runs_at_its_own_timesteps_and_dmd2_paper_at_lcms_defaults():
    own, paper = _lcm(), _lcm()
    own.set_timesteps(timesteps=[999, 749, 499, 249])
    paper.set_timesteps(4)
    assert list(preset("dmd2-4").sigmas) == pytest.approx(_levels(own.timesteps, 0.0), rel=1e-14)
    assert list(preset("dmd2-4-paper").sigmas) == pytest.approx(_levels(paper.timesteps, 0.0), rel=1e-14)
    assert paper.timesteps.tolist() == [999, 759, 499, 259]
    assert [round(s, 4) for s in preset("dmd2-4").sigmas] == [14.6146, 4.0817, 1.6129, 0.6932, 0.0]


# --- whole runs: the same denoiser and noise give diffusers' latents -------------------------------


@pytest.mark.parametrize("name", ["lcm-1", "lcm-4", "lcm-8", "flash-6", "dmd2-4", "dmd2-4-paper"])
def test_lcm_runs_equal_lcm_scheduler_fed_the_same_noise(name):
    reference = _lcm()
    plan = preset(name)
    if name == "dmd2-4":
        reference.set_timesteps(timesteps=[999, 749, 499, 249])
    else:
        reference.set_timesteps(plan.steps)
    assert rel_err(_ours(plan), _vp_run(reference, 0.0)) < 1e-10


def test_lcms_last_step_applies_the_boundary_condition_not_plain_d():
    # c_skip at t = 139 is 1.3e-7: small, but the step is LCMScheduler's, not the loop's D.
    plan = preset("lcm-8")
    plain = sample(MIXTURE, X.clone(), plan.replace(solver=["lcm"] * 7 + ["euler"]), noise=_noise())
    assert 1e-9 < rel_err(_ours(plan), plain) < 1e-5


def _noise():
    return generator_noise(torch.Generator().manual_seed(SEED))


@pytest.mark.parametrize("gamma", [0.3, 0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [2, 4, 8])
def test_tcd_runs_equal_tcd_scheduler_fed_the_same_noise(gamma, steps):
    reference = _tcd()
    reference.set_timesteps(steps)
    plan = preset(f"tcd-{steps}").replace(gamma=gamma)
    assert rel_err(_ours(plan), _vp_run(reference, SD.sigma_min, eta=gamma)) < 1e-10


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_hyper_runs_equal_ddim_trailing(steps):
    """DDIM steps from t to t - 1000 // N: the next trailing timestep when N divides 1000 (Hyper-SD's
    1, 2, 4 and 8 steps); for other N it lands one timestep off the next (docs/distilled.md)."""
    reference = _ddim()
    reference.set_timesteps(steps)
    assert rel_err(_ours(preset(f"hyper-{steps}")), _vp_run(reference, SD.sigma_min)) < 1e-10


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8])
def test_lightning_runs_equal_euler_trailing(steps):
    reference = diffusers.EulerDiscreteScheduler(**TABLE, timestep_spacing="trailing")
    assert rel_err(_ours(preset(f"lightning-{steps}")), _euler_run(reference, steps)) < 1e-5


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_turbo_runs_equal_euler_ancestral_trailing_fed_the_same_noise(steps):
    reference = diffusers.EulerAncestralDiscreteScheduler(**TABLE, timestep_spacing="trailing")
    assert rel_err(_ours(preset(f"turbo-{steps}")), _euler_run(reference, steps)) < 1e-5


# --- gamma: a per-step option of the plan that only the rule reads ----------------------------------


def test_gamma_round_trips_through_plan_json_step_by_step():
    plan = preset("tcd-4").replace(gamma=[0.0, 0.3, 0.5, 1.0])
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.gamma == (0.0, 0.3, 0.5, 1.0)
    assert json.loads(plan.to_json())["options"]["gamma"] == [0.0, 0.3, 0.5, 1.0]


@pytest.mark.parametrize("bad, why", [(1.5, "must be at most 1, got 1.5"), (-0.1, "must be >= 0"),
                                      (True, "must be a number"), ("0.3", "must be a number")])  # fmt: skip
def test_a_gamma_outside_0_to_1_is_refused_naming_the_step(bad, why):
    with pytest.raises(PlanError, match=f"gamma of step 2: {why}"):
        preset("tcd-2").replace(gamma=[0.3, bad])


def test_gamma_reaches_the_rule_and_never_the_denoiser():
    seen = []

    def strict(x, sigma, **options):  # the guided U-Net's options (guidance, freeu, ...), never gamma
        assert "gamma" not in options and {"guidance", "freeu"} <= set(options)
        seen.append(options["guidance"])
        return MIXTURE(x, sigma)

    plan = preset("tcd-4")
    assert torch.equal(sample(strict, X.clone(), plan, noise=_noise()), _ours(plan)) and len(seen) == 4
    # per step: gamma 0 on the last three steps makes them deterministic, unlike 0.3
    mixed = plan.replace(gamma=[0.3, 0.0, 0.0, 0.0])
    other = generator_noise(torch.Generator().manual_seed(SEED + 1))
    assert not torch.equal(_ours(mixed), sample(MIXTURE, X.clone(), mixed, noise=other))


def test_gamma_0_is_deterministic():
    plan = preset("tcd-4").replace(gamma=0.0)
    other = generator_noise(torch.Generator().manual_seed(SEED + 1))
    assert torch.equal(_ours(plan), sample(MIXTURE, X.clone(), plan, noise=other))


def test_tcd_gamma_flag_is_recorded_in_the_plan_and_its_name(capsys):
    code, out, err = run_main(
        run_sample.main, capsys, "--print-plan", "--preset", "tcd-4", "--tcd-gamma", "0.5"
    )
    assert code == 0, err
    stored = json.loads(out.splitlines()[0])
    assert stored["name"] == "tcd-4+gamma=0.5" and stored["options"]["gamma"] == [0.5] * 4
    code, _, err = run_main(run_sample.main, capsys, "--print-plan", "--preset", "tcd-4", "--tcd-gamma", "2")
    assert code == 2 and "argument --tcd-gamma: must be at most 1, got 2" in err


# --- the discretizations ------------------------------------------------------------------------


@pytest.mark.parametrize("original", [50, 25, 8])
def test_lcm_timesteps_equal_lcm_schedulers_for_every_step_count(original):
    for steps in range(1, original + 1):
        reference = _lcm(original_inference_steps=original)
        reference.set_timesteps(steps)
        assert (
            LCM(steps, original_inference_steps=original).timesteps(1000).tolist()
            == reference.timesteps.tolist()
        )


def test_lcm_timesteps_are_the_published_ones():
    rows = {2: [999, 499], 4: [999, 759, 499, 259], 6: [999, 839, 679, 499, 339, 179],
            8: [999, 879, 759, 639, 499, 379, 259, 139]}  # fmt: skip
    assert {n: LCM(n).timesteps(1000).tolist() for n in rows} == rows


def test_more_lcm_steps_than_its_grid_are_refused():
    with pytest.raises(ValueError, match="LCM's timesteps take N = 9 of its 8-point grid"):
        LCM(9, original_inference_steps=8)


def test_explicit_timesteps_place_the_steps_and_round_trip():
    d = Timesteps(4, timesteps="999,749,499,249")
    assert d.sigmas(SD).tolist() == pytest.approx(_levels([999, 749, 499, 249], 0.0), rel=1e-14)
    assert d.describe() == "timesteps N=4 timesteps=999,749,499,249 end=zero"
    assert from_dict(json.loads(json.dumps(to_dict(d)))) == d
    ended = Timesteps(4, timesteps="999,749,499,249", end="sigma_min")
    assert ended.sigmas(SD).tolist()[-1] == pytest.approx(SD.sigma_min, rel=1e-14)


def test_timesteps_without_a_list_are_the_trailing_ones():
    # the `diffusers` kind with spacing=trailing is already diffusers' trailing spacing
    for steps in (1, 3, 4, 7):
        assert torch.equal(Timesteps(steps).sigmas(SD), Diffusers(steps, spacing="trailing").sigmas(SD))


@pytest.mark.parametrize(
    "text, why",
    [("999,749,749", "must be strictly descending"), ("999,-1", "must be strictly descending integers >= 0"),
     ("999,7.5", "is not a comma-separated list of integers")],
)  # fmt: skip
def test_bad_timesteps_are_refused_alike_from_a_file_and_the_flag(text, why, capsys):
    with pytest.raises(ValueError, match=why):
        from_dict({"kind": "timesteps", "N": len(text.split(",")), "timesteps": text})
    code, _, err = run_main(
        run_sample.main, capsys, "--print-plan", "--discretization", "timesteps", "--timesteps", text
    )
    assert code == 2 and f"argument --timesteps: '{text}' {why}" in err


def test_timesteps_for_another_step_count_or_beyond_the_table_are_refused():
    with pytest.raises(
        ValueError, match="timesteps 999,499 are 2 for a plan of N = 4 steps; give one per step"
    ):
        Timesteps(4, timesteps="999,499")
    with pytest.raises(ValueError, match="timestep 1000 is beyond the model's table"):
        Timesteps(2, timesteps="1000,500").sigmas(SD)


def test_the_timesteps_flag_replaces_a_presets_steps(capsys):
    code, out, err = run_main(run_sample.main, capsys, "--print-plan", "--preset", "dmd2-4-paper",
                              "--discretization", "timesteps", "--timesteps", "999,749,499,249")  # fmt: skip
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["sigmas"] == list(preset("dmd2-4").sigmas)


# --- the presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lcm-4", "tcd-4", "lightning-8", "hyper-8", "turbo-1", "flash-4", "dmd2-4",
                                  "dmd2-4-paper"])  # fmt: skip
def test_distilled_presets_run_without_guidance_one_unet_pass_a_step(name, capsys):
    plan = preset(name)
    assert set(plan.guidance) == {1.0} and plan.nfe == plan.steps
    assert distilled(name).made_for and distilled(f"{name}+guidance") is distilled(name)
    code, out, err = run_main(run_sample.main, capsys, "--print-plan", "--preset", name)
    assert code == 0 and json.loads(out.splitlines()[0]) == plan.to_dict(), err


def test_turbo_records_its_512_px_default_for_the_run_assembly():
    assert distilled("turbo-4").size == 512
    assert {stem for stem, entry in DISTILLED.items() if entry.size is not None} == {"turbo"}


def test_preset_names_list_the_distilled_ones_and_dmd2_has_only_4_steps():
    assert {
        "lcm-N",
        "tcd-N",
        "lightning-N",
        "hyper-N",
        "turbo-N",
        "flash-N",
        "dmd2-4",
        "dmd2-4-paper",
    } <= set(preset_names())
    for name in ("dmd2-8", "lcm-4-paper"):
        with pytest.raises(ValueError, match=f"unknown preset '{name}'"):
            preset(name)


def test_a_distilled_preset_on_other_weights_gets_a_one_line_warning():
    warning = weights_warning("lcm-4+gamma=0", ["v1-5-pruned-emaonly.safetensors"])
    assert warning.startswith("warning: lcm-4 is made for LCM-LoRA SD 1.5 / SDXL") and "\n" not in warning
    assert "v1-5-pruned-emaonly.safetensors" in warning
    assert weights_warning("lcm-4", ["v1-5.safetensors", "latent-consistency/lcm-lora-sdv1-5"]) is None
    assert (
        weights_warning("dmd2-4-paper", ["sd_xl_base_1.0.safetensors", "dmd2_sdxl_4step_unet_fp16.bin"])
        is None
    )
    assert weights_warning("paper-5", ["v1-5.safetensors"]) is None  # not made for other weights
    assert weights_warning("karras-2m-20", []) is None


@pytest.mark.parametrize("name", ["tcd-2", "lcm-2"])
def test_a_distilled_preset_runs_from_the_command_line_records_gamma_and_replays(
    name, tmp_path, monkeypatch, capsys
):
    """Through the U-Net: gamma reaches the TCD rule and not the network; the PNG records it (TCD) and
    a replay draws the same step noise from the image's seed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = write_checkpoint(tmp_path / "weights", "single")
    common = ["--weights", str(checkpoint), "--device", "cpu", "--height", "64", "--width", "64"]
    with one_thread():
        code, _, err = run_main(
            run_sample.main,
            capsys,
            *common,
            "--out",
            str(tmp_path / "a"),
            "--preset",
            name,
            "--prompt",
            "a cube",
        )
        assert code == 0, err
        [png] = (tmp_path / "a").glob("*.png")
        stored = json.loads(text_chunks(png)[PLAN_KEY])
        # placed on the checkpoint's own float32 table: sigma_min moves by 1.3e-5 (schedule/noise.py)
        expected = preset(name).to_dict()
        assert stored["sigmas"] == pytest.approx(expected.pop("sigmas"), rel=2e-5)
        assert {key: stored[key] for key in expected} == expected
        assert ("TCD gamma: 0.3" in text_chunks(png)[PARAMETERS_KEY]) == (name == "tcd-2")
        assert run_sample.main([*common, "--replay", str(png), "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(pixels(tmp_path / "b" / png.name), pixels(png))
