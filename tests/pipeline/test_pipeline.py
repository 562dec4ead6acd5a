"""pipeline/ as a library: plans from presets and overrides, Settings and PNG metadata, atomic PNG
writes, initial noise, batches."""

import hashlib
import json

import numpy as np
import pytest
import torch

from pipeline import (
    PARAMETERS_KEY,
    Job,
    Settings,
    batches,
    build_plan,
    check_plan,
    initial_noise,
    jobs_for,
    png_metadata,
    read_plan_file,
    save_png,
)
from pipeline.generate import step_noise, step_noise_seed
from pipeline.pixels import quantize
from schedule import DiscreteSchedule, Exponential, Karras, Paper, append_zero, karras, time_uniform
from solvers import Plan, PlanError, preset
from solvers.presets import PAPER_FREEU
from tests.helpers import pixels, text_chunks

SD = DiscreteSchedule.sd()
CAT = "a photo of a cat"


def test_save_png_skips_a_name_taken_meanwhile_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"someone else's")
    (tmp_path / "x-1.png").write_bytes(b"and another")
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)
    path = save_png(image, tmp_path, "x", {"k": "v", "unicode": "ü ✓"})
    assert path == tmp_path / "x-2.png"
    assert (tmp_path / "x.png").read_bytes() == b"someone else's"
    assert np.array_equal(pixels(path), image.permute(1, 2, 0).numpy())
    assert text_chunks(path) == {"k": "v", "unicode": "ü ✓"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-1.png", "x-2.png", "x.png"]


def test_initial_noise_of_an_image_depends_only_on_its_seed():
    together = initial_noise([5, 6, 7], (4, 8, 8))
    assert torch.equal(together[1], initial_noise([6], (4, 8, 8))[0])
    assert torch.equal(together[0], torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(5)))


def test_step_noise_of_an_image_depends_only_on_its_seed_and_is_not_its_initial_noise():
    # Each image's own CPU float32 stream, seeded from its seed through a fixed derivation.
    like = torch.zeros(3, 4, 8, 8, dtype=torch.float64)
    together, alone = step_noise([5, 6, 7]), step_noise([6])
    first, second = together(like), together(like)
    assert first.dtype == torch.float64 and not torch.equal(first, second)  # every draw is new
    assert torch.equal(first[1], alone(like[:1])[0]) and torch.equal(second[1], alone(like[:1])[0])
    assert not torch.allclose(first[0].float(), initial_noise([5], (4, 8, 8))[0])
    assert step_noise_seed(5) == int.from_bytes(
        hashlib.sha256(b"fewstep-sd step noise 5").digest()[:8], "little"
    )


def test_steps_pick_the_paper_preset_and_5_is_the_default():
    assert build_plan() == preset("paper-5")
    assert build_plan(8) == preset("paper-8")
    assert build_plan(7, "paper") == preset("paper-7")
    assert build_plan(preset_name="karras-2m-20") == preset("karras-2m-20")


def test_overrides_replace_their_part_on_every_step():
    plan = build_plan(
        6, discretization="exponential", solver="euler", guidance=3.0, freeu=False, final="keep"
    )
    assert plan.sigmas == tuple(Exponential(N=6).sigmas(DiscreteSchedule.sd()).tolist())
    assert plan.solver == ("euler",) * 6 and plan.guidance == (3.0,) * 6 and plan.freeu == (None,) * 6
    assert build_plan(8, freeu=True, final="denoise").freeu == (PAPER_FREEU,) * 8
    assert build_plan(8, final="denoise").final == "denoise"


def test_png_metadata_quotes_values_with_commas_like_a1111():
    settings = Settings(CAT, "", 1, 64, 64, "w", "0" * 64, "my, model", "float32", "cpu", False, 1, 0)
    assert 'Model: "my, model"' in png_metadata(preset("paper-8"), settings)[PARAMETERS_KEY]


def test_settings_from_a_png_are_type_checked():
    good = Settings(CAT, "", 1, 64, 64, "w", "0" * 64, "m", "float32", "cpu", False, 1, 0)
    assert Settings.from_json(good.to_json()) == good
    broken = json.loads(good.to_json()) | {"seed": "1"}
    with pytest.raises(PlanError, match="the settings lack a valid 'seed' \\(int\\), found '1'"):
        Settings.from_json(json.dumps(broken))


def test_settings_of_an_older_png_take_the_defaults_of_the_fields_added_since():
    """PNGs written before SDXL and image to image: SD 1.x text to image, rounded, bundled VAE."""
    good = Settings(CAT, "", 1, 64, 64, "w", "0" * 64, "m", "float32", "cpu", False, 1, 0)
    added = {"size_conditioning", "empty_negative", "vae", "vae_sha256", "vae_dtype", "init_image"}
    added |= {"init_image_sha256", "strength", "strength_cut", "quantization"}
    older = {k: v for k, v in json.loads(good.to_json()).items() if k not in added}
    settings = Settings.from_json(json.dumps(older))
    assert settings == good and settings.size() is None
    assert (settings.empty_negative, settings.quantization, settings.vae, settings.strength) == (
        "encode",
        "round",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size_conditioning", [1024, 1024], "needs 6 numbers"),
        ("size_conditioning", [1024, 1024, 0, 0, 1024, -1], "two integers >= 0"),
        ("strength", 1.5, r"strength must be a number in \(0, 1\]"),
        ("strength", "0.5", r"lack a valid 'strength' \(float \| None\)"),
        ("strength_cut", "sigma", "'sigma' is not one of steps, time"),
        ("quantization", "dither", "'dither' is not one of round, truncate"),
        ("empty_negative", "none", "'none' is not one of encode, zeros"),
        ("vae_dtype", "float8", "'float8' is not one of float32, float16, bfloat16"),
    ],
)
def test_the_settings_added_for_sdxl_and_img2img_are_checked_as_the_flags_are(field, value, message):
    good = Settings(CAT, "", 1, 64, 64, "w", "0" * 64, "m", "float32", "cpu", False, 1, 0)
    with pytest.raises(PlanError, match=message):
        Settings.from_json(json.dumps(json.loads(good.to_json()) | {field: value}))


def test_quantizations_round_like_diffusers_and_truncate_like_the_authors():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.999, 1.0, 2.0])
    assert quantize(x, "round").tolist() == [0, 0, 64, 128, 255, 255, 255]
    assert quantize(x, "truncate").tolist() == [0, 0, 63, 127, 254, 255, 255]


def test_plan_is_placed_on_the_model_noise_table():
    table = DiscreteSchedule(DiscreteSchedule.sd().alphas_cumprod.float())  # as a file stores it
    plan = build_plan(preset_name="karras-2m-20", schedule=table)
    assert plan.sigmas[-2] == pytest.approx(table.sigma_min, rel=1e-12)


# -- checking a plan against the model's options ---------------------------------------------------------

FREEU = {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}


@pytest.mark.parametrize(
    "freeu, message",
    [
        ({"b1": 1.1}, r"freeu of step 1: FreeU dict has no \['b2', 's1', 's2'\]"),
        ({**FREEU, "b3": 1}, r"freeu of step 1: FreeU dict has unknown field\(s\) \['b3'\]"),
        ({**FREEU, "s1": -1}, "freeu of step 1: FreeU s1 must be >= 0, got -1"),
        ({**FREEU, "version": 3}, "freeu of step 1: FreeU version must be one of"),
        (1.1, "freeu of step 1: FreeU must be null .off. or an object with b1, b2, s1, s2"),
    ],
)
def test_a_plan_is_checked_against_freeus_one_schema_with_a_one_line_reason(freeu, message):
    with pytest.raises(PlanError, match=message) as info:
        Plan([2.0, 1.0], freeu=freeu)  # the freeu option checks with FreeU's schema (solvers/freeu.py)
    assert "\n" not in str(info.value)


def test_an_option_no_part_of_the_model_takes_is_refused():
    with pytest.raises(
        PlanError, match="the plan has an option 'cfg_rescal' that no part of the model takes"
    ):
        check_plan(Plan([2.0, 1.0], cfg_rescal=0.7))


def test_a_plan_file_names_itself_in_its_refusal(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(Plan([2.0, 1.0], freeu=FREEU).to_json().replace('"s2": 0.2', '"s2": -2'))
    with pytest.raises(
        PlanError, match=f"{path} is not a valid plan: freeu of step 1: FreeU s2 must be >= 0"
    ):
        read_plan_file(path)


# -- every hyperparameter of the paper as a knob ---------------------------------------------------------


def test_paper_knobs_move_sigma_stop_and_the_time_exponent_and_are_recorded():
    plan = build_plan(8, knobs={"stop": 4, "p2": 5.0})
    assert plan.discretization == Paper(N=8, stop=4, p2=5.0)
    assert (plan.discretization.grid_size, plan.discretization.stop_index) == (13, 9)
    grid = karras(12, SD.sigma_min, SD.sigma_max, 5.0)
    assert plan.sigmas[-1] == pytest.approx(grid[9].item(), rel=1e-12)
    assert plan.name == "paper-8+stop=4+p2=5"
    p1 = build_plan(5, knobs={"p1": 1.0})
    assert p1.sigmas == tuple(time_uniform(5, SD, sigma_min=p1.sigmas[-1], rho=1.0).tolist())


def test_a_new_stop_returns_the_grid_of_a_tuned_row_to_the_papers_rule():
    six = build_plan(6)
    assert (six.discretization.grid_size, six.discretization.stop_index) == (8, 6)  # the tuned row
    moved = build_plan(6, knobs={"stop": 2})
    assert (moved.discretization.grid_size, moved.discretization.stop_index) == (9, 7)  # the rule
    assert build_plan(6, knobs={"p2": 6.0}).discretization.stop_index == 6  # other knobs keep the row


def test_rho_is_a_knob_of_karras_and_a_discretization_is_placed_anew_on_request():
    plan = build_plan(preset_name="karras-2m-10", knobs={"rho": 3.0})
    assert plan.sigmas == tuple(append_zero(karras(9, SD.sigma_min, SD.sigma_max, 3.0)).tolist())
    anew = build_plan(5, discretization="karras", knobs={"rho": 9.0})
    assert anew.discretization == Karras(N=5, rho=9.0) and anew.freeu == (PAPER_FREEU,) * 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 8, "knobs": {"rho": 3.0}}, "^rho is not a knob of the paper discretization"),
        ({"preset_name": "karras-2m-10", "knobs": {"stop": 2}}, "^stop is not a knob of the karras"),
        ({"steps": 8, "knobs": {"p2": 0.0}}, "^p2: p2 must be a finite number > 0, got 0.0"),
        (
            {"base": Plan([3.0, 1.0]), "knobs": {"p2": 5.0}},
            "sigmas were given as a list; add discretization KIND",
        ),
    ],
)
def test_a_knob_that_does_not_fit_the_discretization_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_plan(**kwargs)


def test_a_plan_file_keeps_its_sigmas_unless_a_discretization_knob_is_given():
    base = Plan([3.0, 1.5, 0.5], "euler", guidance=2.0, name="mine")
    assert build_plan(base=base, solver="heun").sigmas == base.sigmas
    assert build_plan(base=base, discretization="exponential").discretization == Exponential(N=2)


def test_freeu_values_version_and_window_are_knobs():
    plan = build_plan(8, freeu=(1.3, 1.4, 0.9, 0.2), freeu_version=2, freeu_steps="2-3,8")
    setting = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2, "version": 2, "placement": "channels"}
    assert plan.freeu == (None, setting, setting, None, None, None, None, setting)
    assert plan.name == "paper-8+freeu=1.3/1.4/0.9/0.2 v2@2-3,8"
    assert build_plan(5, freeu=True).freeu == (PAPER_FREEU,) * 5
    # without values, the version and the window apply to the plan's own setting
    assert build_plan(5, freeu_steps="4-5").freeu == (None, None, None, PAPER_FREEU, PAPER_FREEU)
    v2 = build_plan(5, freeu_version=2)
    assert v2.freeu == ({**PAPER_FREEU, "version": 2},) * 5 and v2.name == "paper-5+freeu-v2"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 8, "freeu_steps": "2-4"}, "this plan has no FreeU setting to change; give its values"),
        ({"preset_name": "paper-xl-6", "freeu_steps": "2"}, "several FreeU settings; give the one to window"),
        (
            {"steps": 5, "freeu": False, "freeu_steps": "2"},
            "^no_freeu goes with neither freeu_version nor freeu_steps",
        ),
        ({"steps": 5, "freeu": True, "freeu_steps": "4-9"}, "names steps outside 1-5"),
        (
            {"steps": 5, "freeu": True, "freeu_steps": "2-x"},
            "is not a list of steps and ranges such as 2-4,6",
        ),
    ],
)
def test_freeu_flags_that_cannot_apply_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_plan(**kwargs)


# -- batches ---------------------------------------------------------------------------------------------


def test_batches_pad_the_short_one_with_copies_and_a_replay_row_comes_back_at_its_offset():
    cut = batches([1, 2, 3, 4, 5], 2)
    assert [(b.rows, list(b.slots)) for b in cut] == [((1, 2), [0, 1]), ((3, 4), [0, 1]), ((5, 5), [0])]
    [replay] = batches(["job"], 3, offset=2)
    assert replay.rows == ("job",) * 3 and replay.jobs == [(2, "job")]
    with pytest.raises(ValueError, match="batch row 3 does not exist in a batch of 3"):
        batches(["job"], 3, offset=3)


def test_jobs_take_consecutive_seeds_prompt_by_prompt_and_stop_short_of_2_63():
    assert jobs_for(["a", "b"], 2, 5) == [Job("a", 5), Job("a", 6), Job("b", 7), Job("b", 8)]
    assert jobs_for(["a"], 2, 2**63 - 2)[-1].seed == 2**63 - 1
    with pytest.raises(ValueError, match=r"^seed 9223372036854775806 \+ 2 images runs past 2\^63 - 1; use a"):
        jobs_for(["a"], 3, 2**63 - 2)
