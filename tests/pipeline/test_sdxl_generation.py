"""Generation with SDXL, and image to image with both families: the pipeline against diffusers'
StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline and StableDiffusionImg2ImgPipeline on the
same initial noise, sigmas and strength; the family-aware presets; run_sample.py end to end on tiny
random-weight SDXL checkpoints in both layouts, on the CPU in float32, 64 x 64 px.

Parity tolerance for final latents: max |ours - diffusers| / max |diffusers| <= 3e-5. Both run the
same Euler steps on the same networks and differ by float32 rounding only (the attention kernels'
order, diffusers' float32 sigmas, guidance on eps rather than on x0), which the random-weight U-Net
amplifies from step to step and guidance w multiplies: measured 1.6e-6 at w = 1 and 4e-6 to 6.6e-6
at w = 5.5 (text to image, 4 steps), 1.5e-6 (SD 1.5) and 2.4e-6 (SDXL) for image to image (w = 4,
3 steps). Changing the size conditioning by one pixel moves the latents by 1e-2, so 3e-5 still
catches any conditioning error.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from safetensors.torch import save_file

import pipeline
import weights
from run_sample import main
from solvers import Plan, PlanError, preset, sample
from tests.checkpoints import (
    SDXL_SCHEDULER_CONFIG_ARGS,
    diffusers_pipeline,
    reference_models,
    write_checkpoint,
)
from tests.helpers import pixels, rel_err, run_main, text_chunks
from tests.reference import vae as ref_vae
from weights.fingerprint import file_sha256

TOL = 3e-5
SIZE = ["--height", "64", "--width", "64"]
CAT = "a photo of a cat"
SDXL, SD1 = pipeline.FAMILIES["sdxl"], pipeline.FAMILIES["sd1"]


@pytest.fixture(scope="module")
def xl_refs():
    return reference_models(kind="sdxl")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    files = {
        layout: write_checkpoint(root / layout, layout, kind="sdxl") for layout in ("single", "diffusers")
    }
    return files | {"sd1": write_checkpoint(root / "sd1", "single")}


@pytest.fixture(scope="module")
def models(checkpoints):
    return {name: weights.load(path) for name, path in checkpoints.items()}


@pytest.fixture(autouse=True)
def env(tmp_path_factory, monkeypatch):
    caches = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("XDG_CACHE_HOME", str(caches / "xdg"))


@pytest.fixture(scope="module")
def pipes(xl_refs, tmp_path_factory):
    """diffusers' pipelines over the references, on Euler with given sigmas, built once."""
    folder = tmp_path_factory.mktemp("pipelines")
    return {
        "sdxl": diffusers_pipeline(xl_refs, folder / "xl", scheduler=euler_scheduler()),
        "sdxl-img2img": diffusers_pipeline(
            xl_refs, folder / "xl-img2img", StableDiffusionXLImg2ImgPipeline, euler_scheduler()
        ),
        "sd1-img2img": diffusers_pipeline(
            reference_models(), folder / "sd1-img2img", StableDiffusionImg2ImgPipeline, euler_scheduler()
        ),
    }


def euler_scheduler() -> EulerDiscreteScheduler:
    """diffusers' Euler on given sigmas; "trailing" makes its initial noise scale sigma_0, as ours."""
    return EulerDiscreteScheduler(**{**SDXL_SCHEDULER_CONFIG_ARGS, "timestep_spacing": "trailing"})


def plan_of(sigmas, guidance: float = 5.5) -> Plan:
    return Plan(sigmas, "euler", guidance=guidance, freeu=None, final="keep", name="euler-test")


# --- parity with diffusers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "negative", "empty_negative"),
    [
        ("single", None, "zeros"),
        ("diffusers", None, "zeros"),
        ("single", "", "encode"),
        ("single", "blurry", None),
    ],
)
def test_sdxl_latents_equal_diffusers_pipeline(models, xl_refs, pipes, layout, negative, empty_negative):
    """Four Euler steps of paper-xl-8's sigmas, guidance 5.5, size conditioning (1024, 1024, 0, 0,
    1024, 1024); diffusers' zeros for no negative prompt (force_zeros_for_empty_prompt) are our default
    for "", its encoded "" our empty_negative="encode"."""
    sd = models[layout]
    plan = plan_of(preset("paper-xl-8").sigmas[:5])
    noise = pipeline.initial_noise([7], (4, 8, 8))
    pipe = pipes["sdxl"]
    with torch.no_grad():
        expected = pipe(
            [CAT],
            negative_prompt=negative,
            sigmas=list(plan.sigmas),
            latents=noise,
            guidance_scale=5.5,
            height=64,
            width=64,
            original_size=(1024, 1024),
            target_size=(1024, 1024),
            output_type="latent",
        ).images
    cond = pipeline.conditioning(sd, [CAT], negative or "", empty_negative=empty_negative)
    with torch.inference_mode():
        latents = sample(pipeline.denoiser(sd, *cond), noise * plan.sigmas[0], plan)
    assert rel_err(latents, expected) <= TOL
    with torch.no_grad():
        theirs = (xl_refs.vae.decode(expected / 0.13025).sample / 2 + 0.5).clamp(0, 1) * 255
    # uint8 rounding of nearly equal values: at most one level apart
    assert (pipeline.decode(sd, latents).float() - theirs.round()).abs().max() <= 1


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_img2img_latents_equal_diffusers_img2img_pipeline(models, pipes, kind):
    """Strength 0.6 of a 5-step plan: diffusers keeps the last int(5 x 0.6) = 3 steps and noises the
    image's latent to that step's sigma with the generator of the seed, as ours does."""
    sd, refs = models["sd1" if kind == "sd1" else "single"], reference_models(kind=kind)
    pipe = pipes[f"{kind}-img2img"]
    plan = plan_of(preset("paper-8").sigmas[:6], guidance=4.0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    init = pipeline.InitImage(image, 0.6)
    with torch.no_grad():
        latent = (
            refs.vae.encode(image[None].float() / 255 * 2 - 1).latent_dist.mean
            * refs.vae.config.scaling_factor
        )
        sizes = {} if kind == "sd1" else {"original_size": (1024, 1024), "target_size": (1024, 1024)}
        expected = pipe(
            [CAT],
            image=latent,
            strength=0.6,
            sigmas=list(plan.sigmas),
            guidance_scale=4.0,
            generator=torch.Generator().manual_seed(11),
            output_type="latent",
            **sizes,
        ).images
    run = pipeline.img2img.cut(plan, init, sd.schedule)
    assert run.sigmas == plan.sigmas[2:]
    noise = pipeline.initial_noise([11], (4, 8, 8))
    cond = pipeline.conditioning(sd, [CAT], "", empty_negative="encode" if kind == "sd1" else "zeros")
    with torch.inference_mode():
        x = pipeline.img2img.start_latent(sd, init, run.sigmas[0], noise)
        latents = sample(pipeline.denoiser(sd, *cond), x, run)
    assert rel_err(latents, expected) <= TOL


def test_strength_cuts_the_plan_where_diffusers_strength_and_denoising_start_do(models, pipes):
    pipe, plan, schedule = pipes["sdxl-img2img"], preset("paper-xl-8"), models["single"].schedule
    for strength in (0.05, 0.3, 0.5, 0.61, 0.99, 1.0):
        for cut, denoising_start in (("steps", None), ("time", 1 - strength)):
            pipe.scheduler.set_timesteps(sigmas=list(plan.sigmas))
            _, kept = pipe.get_timesteps(plan.steps, strength, "cpu", denoising_start)
            if kept == 0:
                with pytest.raises(ValueError, match="keeps none of the plan's 8 steps"):
                    pipeline.img2img.start_step(plan, strength, cut, schedule)
            else:
                assert pipeline.img2img.start_step(plan, strength, cut, schedule) == plan.steps - kept


def test_an_empty_negative_prompt_is_zeros_for_sdxl_and_encoded_for_sd1(models):
    for name, zeros in (("single", True), ("sd1", False)):
        sd = models[name]
        _, uncond = pipeline.conditioning(sd, [CAT], "")
        expected = sd.null_condition() if zeros else sd.encode_prompt([""])
        assert json.dumps(_shapes(uncond)) == json.dumps(_shapes(expected))
        for got, want in zip(_values(uncond), _values(expected), strict=True):
            assert torch.equal(got, want)
    _, encoded = pipeline.conditioning(models["single"], [CAT], "", empty_negative="encode")
    assert torch.equal(encoded["context"], models["single"].encode_prompt([""])["context"])


def _shapes(cond):
    return {k: list(v.shape) for k, v in cond.items()} if isinstance(cond, dict) else list(cond.shape)


def _values(cond):
    return list(cond.values()) if isinstance(cond, dict) else [cond]


# --- family-aware plans ---------------------------------------------------------------------------------


def test_steps_pick_the_families_rows_and_sdxl_defaults_to_its_6_step_row():
    assert pipeline.build_plan(8, family=SDXL) == preset("paper-xl-8")
    assert pipeline.build_plan(6, family=SDXL) == preset("paper-xl-6")
    assert pipeline.build_plan(family=SDXL) == preset("paper-xl-6")
    assert pipeline.build_plan(8, family=SD1) == preset("paper-8") == pipeline.build_plan(8)
    assert pipeline.build_plan(7, family=SDXL).name == "paper-7"  # the paper's rule, for any family
    tuned = pipeline.build_plan(8, "paper", family=SDXL, discretization="paper")
    assert tuned.sigmas == preset("paper-xl-8").sigmas  # "paper" places SDXL's own tuned row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"preset_name": "paper-xl-8", "family": SD1},
            r"^preset paper-xl-8 is the paper's row for SDXL \(1024 px\) but the weights are SD 1\.x; "
            r"its rows are paper-5 \(5 steps\), paper-6 \(6 steps\), paper-8 \(8 steps\)",
        ),
        ({"preset_name": "paper-8", "family": SDXL}, r"paper-8 is the paper's row for SD 1\.x \(512 px\)"),
        (
            {"steps": 5, "family": SDXL},
            r"^preset paper-5 is the paper's row for SD 1\.x .*paper-xl-6 \(6 steps\)",
        ),
        (
            {"base": preset("paper-xl-6").replace(name="paper-xl-6+guidance"), "family": SD1},
            r"the plan paper-xl-6\+guidance \(made from paper-xl-6\) is the paper's row for SDXL",
        ),
    ],
)
def test_a_tuned_row_of_another_family_is_refused_in_one_line(kwargs, message):
    with pytest.raises(PlanError, match=message):
        pipeline.build_plan(**kwargs)


def test_sdxls_vae_decodes_in_float32_when_the_model_is_float16():
    assert SDXL.vae_dtype("float16") == "float32" and SDXL.vae_dtype("bfloat16") == "bfloat16"
    assert SD1.vae_dtype("float16") == "float16"
    assert (SDXL.size, SD1.size, SDXL.empty_negative, SD1.empty_negative) == (1024, 512, "zeros", "encode")


# --- run_sample.py end to end ---------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def args(weights_path, out, *extra: str) -> list[str]:
    return [
        "--weights",
        str(weights_path),
        "--device",
        "cpu",
        "--out",
        str(out),
        *SIZE,
        "--seed",
        "3",
        *extra,
    ]


def made(capsys, out, *argv: str):
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    (png,) = sorted(out.glob("*.png"))
    return png


@pytest.fixture(scope="module")
def xl_png(checkpoints, tmp_path_factory):
    """run_sample.py --steps 6 (paper-xl-6: FreeU on steps 2-4 and 6, Euler on 5-6) on the tiny sgm
    single file."""
    out = tmp_path_factory.mktemp("xl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xl-cache")))
        assert main(args(checkpoints["single"], out, "--steps", "6", "--prompt", CAT)) == 0
    return out / f"3-{CAT.replace(' ', '-')}.png"


def test_sdxl_run_records_its_plan_size_conditioning_and_empty_negative(xl_png):
    settings = json.loads(text_chunks(xl_png)[pipeline.SETTINGS_KEY])
    assert json.loads(text_chunks(xl_png)[pipeline.PLAN_KEY])["name"] == "paper-xl-6"
    assert settings["size_conditioning"] == [1024, 1024, 0, 0, 1024, 1024]
    assert (settings["empty_negative"], settings["vae_dtype"], settings["quantization"]) == (
        "zeros",
        "float32",
        "round",
    )
    assert pixels(xl_png).shape == (64, 64, 3)


@pytest.mark.parametrize("layout", ["single", "diffusers"])
def test_sdxl_replays_bitwise_from_either_layout(checkpoints, xl_png, tmp_path, capsys, layout):
    png = made(
        capsys,
        tmp_path,
        "--replay",
        str(xl_png),
        "--weights",
        str(checkpoints[layout]),
        "--out",
        str(tmp_path),
    )
    assert np.array_equal(pixels(png), pixels(xl_png))


@pytest.mark.parametrize(
    "flags",
    [
        ["--original-size", "512,768"],
        ["--crop-top-left", "64,0"],
        ["--target-size", "768,1024"],
        ["--empty-negative", "encode"],
    ],
)
def test_size_conditioning_and_the_empty_negative_are_knobs_and_are_recorded(
    checkpoints, xl_png, tmp_path, capsys, flags
):
    png = made(
        capsys, tmp_path, *args(checkpoints["single"], tmp_path, "--steps", "6", "--prompt", CAT, *flags)
    )
    settings = pipeline.read_replay(png)[0]
    assert not np.array_equal(pixels(png), pixels(xl_png))
    if flags[0] == "--empty-negative":
        assert settings.empty_negative == "encode"
    else:
        numbers = [int(n) for n in flags[1].split(",")]
        position = {"--original-size": 0, "--crop-top-left": 2, "--target-size": 4}[flags[0]]
        assert settings.size_conditioning[position : position + 2] == numbers


def test_sdxl_default_size_is_1024_and_its_default_preset_paper_xl_6(
    checkpoints, tmp_path, capsys, monkeypatch
):
    seen = []
    monkeypatch.setattr(  # where pipeline.write_batch finds it
        sys.modules["pipeline.generate"],
        "generate_batch",
        lambda run, batch, **kw: seen.append((run.plan, run.settings)) or [],
    )
    argv = [
        "--weights",
        str(checkpoints["diffusers"]),
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--prompt",
        CAT,
    ]
    assert run(capsys, *argv)[0] == 0
    [(plan, settings)] = seen
    assert (settings.height, settings.width, plan.name) == (1024, 1024, "paper-xl-6")


@pytest.mark.parametrize(
    ("which", "flags", "message"),
    [
        ("sd1", ["--preset", "paper-xl-8"], r"--preset paper-xl-8 is the paper's row for SDXL"),
        ("single", ["--steps", "5"], r"--preset paper-5 is the paper's row for SD 1\.x"),
        (
            "sd1",
            ["--original-size", "512,512"],
            r"--original-size is SDXL's size conditioning; SD 1\.x models take none",
        ),
        ("single", ["--strength", "0.5"], "--init-image and --strength go together"),
    ],
)
def test_flags_that_do_not_fit_the_model_are_refused_before_it_loads(
    checkpoints, tmp_path, capsys, monkeypatch, which, flags, message
):
    monkeypatch.setattr(weights, "load", lambda *a, **k: pytest.fail("the weights were loaded"))
    code, out, err = run(capsys, *args(checkpoints[which], tmp_path, "--prompt", CAT, *flags))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_a_separate_vae_is_recorded_with_its_sha256(checkpoints, tmp_path, capsys):
    vae_file = tmp_path / "sdxl_vae.safetensors"
    save_file(ref_vae.ldm_state_dict(ref_vae.diffusers_vae(ref_vae.SMALL, 0.13025, seed=3)), vae_file)
    out = tmp_path / "out"
    png = made(
        capsys,
        out,
        *args(checkpoints["single"], out, "--preset", "paper-2", "--prompt", CAT, "--vae", str(vae_file)),
    )
    settings = pipeline.read_replay(png)[0]
    assert (settings.vae, settings.vae_sha256) == (str(vae_file), file_sha256(vae_file))
    assert f"VAE hash: {settings.vae_sha256[:10]}" in text_chunks(png)[pipeline.PARAMETERS_KEY]
    again = made(capsys, tmp_path / "again", "--replay", str(png), "--out", str(tmp_path / "again"))
    assert np.array_equal(pixels(again), pixels(png))


@pytest.mark.parametrize("which", ["single", "sd1"])
def test_img2img_runs_part_of_the_plan_is_recorded_and_replays_bitwise(
    checkpoints, xl_png, tmp_path, capsys, which
):
    out = tmp_path / "out"
    png = made(
        capsys,
        out,
        *args(checkpoints[which], out, "--steps", "6", "--prompt", "a dog"),
        "--init-image",
        str(xl_png),
        "--strength",
        "0.5",
    )
    settings = pipeline.read_replay(png)[0]
    assert (settings.init_image, settings.strength, settings.strength_cut) == (str(xl_png), 0.5, "steps")
    assert settings.init_image_sha256 == file_sha256(xl_png)
    assert "Denoising strength: 0.5" in text_chunks(png)[pipeline.PARAMETERS_KEY]
    again = made(capsys, tmp_path / "again", "--replay", str(png), "--out", str(tmp_path / "again"))
    assert np.array_equal(pixels(again), pixels(png))
    time_cut = made(
        capsys,
        tmp_path / "time",
        *args(checkpoints[which], tmp_path / "time", "--steps", "6", "--prompt", "a dog"),
        "--init-image",
        str(xl_png),
        "--strength",
        "0.3",
        "--strength-cut",
        "time",
    )
    assert pipeline.read_replay(time_cut)[0].strength_cut == "time"


def test_a_strength_that_keeps_no_step_is_refused_before_loading(
    checkpoints, xl_png, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(weights, "load", lambda *a, **k: pytest.fail("the weights were loaded"))
    code, _, err = run(
        capsys,
        *args(checkpoints["single"], tmp_path, "--prompt", CAT, "--steps", "8"),
        "--init-image",
        str(xl_png),
        "--strength",
        "0.1",
    )
    assert code == 2 and "keeps none of the plan's 8 steps (cut by steps); use at least 0.125" in err


def test_truncated_pixels_are_at_most_one_level_darker_and_recorded(checkpoints, xl_png, tmp_path, capsys):
    out = tmp_path / "out"
    png = made(
        capsys,
        out,
        *args(checkpoints["single"], out, "--steps", "6", "--prompt", CAT, "--quantize", "truncate"),
    )
    difference = pixels(xl_png).astype(int) - pixels(png).astype(int)
    assert difference.min() >= 0 and difference.max() <= 1 and difference.mean() > 0.2
    assert pipeline.read_replay(png)[0].quantization == "truncate"


def test_sdxl_in_float16_decodes_with_a_float32_vae(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    png = made(
        capsys,
        out,
        *args(checkpoints["single"], out, "--preset", "paper-2", "--prompt", CAT, "--dtype", "float16"),
    )
    settings = pipeline.read_replay(png)[0]
    assert (settings.dtype, settings.vae_dtype) == ("float16", "float32")


def test_evaluation_runs_sdxl_at_its_size_with_its_settings(checkpoints, tmp_path, capsys):
    from evaluation.generate import RUN_FILE
    from evaluation.generate import main as evaluate

    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(json.dumps({"index": 0, "prompt": CAT, "seed": 5, "reference": None}) + "\n")
    out = tmp_path / "run"
    argv = ["--manifest", str(manifest), "--out", str(out), "--weights", str(checkpoints["single"]), *SIZE]
    code, _, err = run_main(
        evaluate, capsys, *argv, "--steps", "8", "--quantize", "truncate", "--device", "cpu"
    )
    assert code == 0, err
    record = json.loads((out / RUN_FILE).read_text())
    assert (record["method"], record["size_conditioning"], record["empty_negative"]) == (
        "paper-xl-8",
        [1024, 1024, 0, 0, 1024, 1024],
        "zeros",
    )
    assert record["quantization"] == "truncate"
    again = made(
        capsys, tmp_path / "again", "--replay", str(out / "00000.png"), "--out", str(tmp_path / "again")
    )
    assert np.array_equal(pixels(again), pixels(out / "00000.png"))


def test_discretizations_with_a_model_table_use_the_familys_own():
    """AYS publishes one table per model: SDXL weights get SDXL's, whichever way the plan is asked for."""
    assert pipeline.build_plan(preset_name="ays-2m-10", family=SDXL).discretization.model == "sdxl"
    assert pipeline.build_plan(6, discretization="ays", family=SDXL).discretization.model == "sdxl"
    assert pipeline.build_plan(preset_name="ays-2m-10", family=SD1).discretization.model == "sd1"
    assert (
        pipeline.build_plan(preset_name="ays-2m-10", family=SDXL).sigmas
        == preset("ays-2m-10", model="sdxl").sigmas
    )


def test_print_plan_with_local_sdxl_weights_prints_their_familys_row(checkpoints, capsys):
    code, out, _ = run_main(
        main, capsys, "--print-plan", "--steps", "8", "--weights", str(checkpoints["single"])
    )
    assert code == 0 and Plan.from_json(out.splitlines()[0]).name == "paper-xl-8"


def test_print_plan_of_a_short_name_prints_its_familys_row_without_fetching(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a fetch would fail: the family comes from the weights table
    code, out, _ = run_main(main, capsys, "--print-plan", "--steps", "8", "--weights", "sdxl")
    assert code == 0 and Plan.from_json(out.splitlines()[0]).name == "paper-xl-8"


def test_prepare_run_refuses_a_row_of_another_family_before_fetching_the_weights(monkeypatch):
    def fetch(*args, **kwargs):
        raise AssertionError("the weights were fetched")

    monkeypatch.setattr(pipeline.runs, "resolve_weights", fetch)
    request = pipeline.Request("sd15", recipe=pipeline.Recipe(preset="paper-xl-8"))
    with pytest.raises(
        PlanError, match=r"^preset paper-xl-8 is the paper's row for SDXL .* the weights are SD 1\.x"
    ):
        pipeline.prepare_run(request)
