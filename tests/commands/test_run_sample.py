"""run_sample.py end to end: tiny random-weight checkpoints in the official layouts, `main([...])` in
process on the CPU in float32, 64 x 64 px (8 x 8 latents)."""

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import pipeline
import weights
from pipeline import (
    PARAMETERS_KEY,
    PLAN_KEY,
    SETTINGS_KEY,
    build_plan,
    decode,
    initial_noise,
    read_replay,
)
from pipeline.provenance import project_version
from run_sample import main
from schedule import DiscreteSchedule, Karras
from solvers import Plan, preset
from solvers.presets import PAPER_FREEU
from solvers.search.record import Searched
from tests.checkpoints import sd15_alphas_cumprod, write_checkpoint
from tests.helpers import pixels, run_main, text_chunks
from weights.catalog import SD15_FILE, SD15_REPO

SIZE = ["--height", "64", "--width", "64"]
CAT = "a photo of a cat"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint per layout, written once for the module."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {layout: write_checkpoint(root / layout, layout=layout) for layout in ("single", "diffusers")}


@pytest.fixture(autouse=True)
def env(tmp_path_factory, monkeypatch):
    """A fresh sha256 cache (tests/conftest.py keeps the Hub offline, with an empty cache of its own)."""
    caches = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("XDG_CACHE_HOME", str(caches / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")  # --help text unwrapped enough to search
    return monkeypatch


def run(capsys, *argv: str) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def sample_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--weights", str(weights), "--device", "cpu", "--out", str(out), *SIZE, *extra]


@pytest.fixture(scope="module")
def cat(checkpoints, tmp_path_factory):
    """The README command on the tiny single-file checkpoint, seed 42: (png path, file sha256)."""
    out = tmp_path_factory.mktemp("cat")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cat-cache")))
        code = main(sample_args(checkpoints["single"], out, "--steps", "5", "--prompt", CAT, "--seed", "42"))
    assert code == 0
    sha256 = hashlib.sha256(checkpoints["single"].read_bytes()).hexdigest()
    return out / f"42-{CAT.replace(' ', '-')}.png", sha256


# -- files and metadata ----------------------------------------------------------------------------------


def test_readme_command_writes_one_png_of_the_asked_size(cat):
    png, _ = cat
    assert sorted(p.name for p in png.parent.iterdir() if p.suffix == ".png") == [png.name]
    assert pixels(png).shape == (64, 64, 3)
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_parameters_chunk_is_an_a1111_line(cat):
    png, sha256 = cat
    assert text_chunks(png)[PARAMETERS_KEY] == (
        f"{CAT}\nNegative prompt: \n"
        "Steps: 5, U-Net passes: 10 per image (5 guided x 2 + 0 conditional), Sampler: DPM++ 1S, "
        "Schedule type: paper, CFG scale: 7.5, Seed: 42, Size: 64x64, "
        f"Model hash: {sha256[:10]}, Model: sd15-tiny-seed0-fp32, FreeU: 1.1/1.1/0.9/0.2, "
        f"Plan: paper-5, Version: fewstep-sd {project_version()}"
    )


def test_plan_chunk_is_the_paper_5_plan_with_every_sigma(cat):
    plan = Plan.from_json(text_chunks(cat[0])[PLAN_KEY])
    # placed on the noise table the file stores (float32 alphas_cumprod, as LDM checkpoints do)
    assert plan == build_plan(5, schedule=DiscreteSchedule(sd15_alphas_cumprod()))
    # float32 vs float64 alphas_cumprod moves the sigmas by under 1e-5 (relative)
    assert plan.sigmas == pytest.approx(preset("paper-5").sigmas, rel=1e-5)
    assert plan.freeu == (PAPER_FREEU,) * 5 and plan.final == "keep"


def test_settings_chunk_holds_everything_replay_needs(cat):
    png, sha256 = cat
    settings = json.loads(text_chunks(png)[SETTINGS_KEY])
    assert settings == {
        "format": 1,
        "prompt": CAT,
        "negative_prompt": "",
        "seed": 42,
        "width": 64,
        "height": 64,
        "weights": settings["weights"],
        "weights_sha256": sha256,
        "model": "sd15-tiny-seed0-fp32",
        "dtype": "float32",
        "device": "cpu",
        "compile": False,
        "batch": 1,
        "batch_index": 0,
        "version": project_version(),
        "torch_version": torch.__version__,
        # SD 1.x text to image: no size conditioning, no separate VAE, no init image
        "size_conditioning": None,
        "empty_negative": "encode",
        "vae": None,
        "vae_sha256": None,
        "vae_dtype": "float32",
        "init_image": None,
        "init_image_sha256": None,
        "strength": None,
        "strength_cut": None,
        "quantization": "round",
        # no LoRA, the checkpoint's own U-Net
        "loras": None,
        "unet": None,
        "unet_sha256": None,
    }
    assert Path(settings["weights"]).name == "sd15-tiny-seed0-fp32.safetensors"


def test_a_second_run_never_overwrites_and_takes_the_next_free_name(checkpoints, tmp_path, capsys):
    argv = sample_args(checkpoints["single"], tmp_path, "--steps", "1", "--prompt", CAT, "--seed", "7")
    assert run(capsys, *argv)[0] == 0
    first = tmp_path / "7-a-photo-of-a-cat.png"
    before = first.read_bytes()
    assert run(capsys, *argv)[0] == 0
    assert first.read_bytes() == before
    assert (tmp_path / "7-a-photo-of-a-cat-1.png").read_bytes() == before  # same seed: same image


def test_prompts_file_gives_consecutive_seeds_and_equal_batches(checkpoints, tmp_path, capsys):
    """2 prompts x 2 images in batches of 3: the last batch is padded with copies of its image, so
    every image is made in a batch of 3 and the summary counts 4 images."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n  a blue ball  \n")
    out = tmp_path / "out"
    argv = sample_args(
        checkpoints["single"],
        out,
        "--steps",
        "1",
        "--prompts",
        str(prompts),
        "--seed",
        "10",
        "--num-images",
        "2",
        "--batch-size",
        "3",
    )
    code, stdout, _ = run(capsys, *argv)
    assert code == 0
    made = {p.name: read_replay(p)[0] for p in out.iterdir()}
    assert {name: (s.seed, s.batch, s.batch_index) for name, s in made.items()} == {
        "10-a-red-cube.png": (10, 3, 0),
        "11-a-red-cube.png": (11, 3, 1),
        "12-a-blue-ball.png": (12, 3, 2),
        "13-a-blue-ball.png": (13, 3, 0),
    }
    assert (
        stdout.startswith(f"wrote 4 images (10-a-red-cube.png ... 13-a-blue-ball.png) to {out}/ in ")
        and " s per image; loading the weights took " in stdout
    )
    assert stdout.count("\n") == 1


def test_progress_bar_per_batch_on_a_terminal(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws only on a terminal
    argv = sample_args(checkpoints["single"], tmp_path, "--steps", "2", "--prompt", CAT, "--seed", "1")
    code, _, err = run(capsys, *argv, "--num-images", "2")
    assert code == 0
    assert "batch 1/2: 100%" in err and "batch 2/2: 100%" in err and " 2/2 [" in err and "it/s]" in err


def test_progress_moves_per_step_where_no_cuda_graph_replays(checkpoints, tmp_path, capsys, monkeypatch):
    """On a CPU (even with --compile) each step reaches the bar; only a CUDA graph run has no host call
    per step, so its bar moves per batch."""
    seen = []
    generate_batch = pipeline.generate_batch

    def watched(*args, callback=None, **kwargs):
        steps = []

        def step(info):
            steps.append(info.index)
            callback(info)

        seen.append(steps)
        return generate_batch(*args, callback=None if callback is None else step, **kwargs)

    monkeypatch.setattr(sys.modules["pipeline.generate"], "generate_batch", watched)  # pipeline.write_batch's
    argv = sample_args(checkpoints["single"], tmp_path, "--steps", "3", "--prompt", CAT, "--seed", "1")
    assert run(capsys, *argv, "--num-images", "2")[0] == 0
    assert seen == [[0, 1, 2], [0, 1, 2]]
    made = pipeline.read_replay(tmp_path / "1-a-photo-of-a-cat.png")[0]
    assert not pipeline.replays_graph(dataclasses.replace(made, compile=True))  # CPU: run eagerly
    assert pipeline.replays_graph(dataclasses.replace(made, compile=True, device="cuda"))


# -- replay and reproducibility --------------------------------------------------------------------------


def test_replay_gives_the_same_pixels_and_metadata_bitwise(checkpoints, tmp_path, capsys):
    """A run with every part of the plan overridden, replayed from its PNG alone (CPU, float32)."""
    first, second = tmp_path / "first", tmp_path / "second"
    argv = sample_args(
        checkpoints["diffusers"],
        first,
        "--steps",
        "2",
        "--prompt",
        "a tree",
        "--seed",
        "3",
        "--negative-prompt",
        "blurry",
        "--discretization",
        "karras",
        "--solver",
        "dpmpp_2m",
        "--guidance",
        "5.5",
        "--freeu",
        "--height",
        "64",
        "--width",
        "128",
    )
    assert run(capsys, *argv)[0] == 0
    (original,) = first.iterdir()
    assert run(capsys, "--replay", str(original), "--out", str(second))[0] == 0
    (replayed,) = second.iterdir()
    assert replayed.name == original.name
    assert np.array_equal(pixels(replayed), pixels(original))
    assert text_chunks(replayed) == text_chunks(original)
    settings, plan = read_replay(original)
    assert (settings.prompt, settings.negative_prompt, settings.seed) == ("a tree", "blurry", 3)
    assert (settings.width, settings.height) == (128, 64)
    assert plan.sigmas == tuple(Karras(N=2).sigmas(DiscreteSchedule.sd()).tolist())
    assert plan.discretization == Karras(N=2)
    assert (
        plan.solver == ("dpmpp_2m",) * 2 and plan.guidance == (5.5,) * 2 and plan.freeu == (PAPER_FREEU,) * 2
    )
    assert plan.name == "paper-2+discretization=karras+solver=dpmpp_2m+freeu"


def test_replay_flags_override_the_stored_settings(checkpoints, cat, tmp_path, capsys):
    png, _ = cat
    argv = ["--replay", str(png), "--out", str(tmp_path), "--seed", "43", "--guidance", "2", "--steps", "1"]
    assert run(capsys, *argv)[0] == 0
    (made,) = tmp_path.iterdir()
    settings, plan = read_replay(made)
    assert (settings.seed, settings.prompt, settings.width) == (43, CAT, 64)
    assert plan == build_plan(1, guidance=2.0, schedule=DiscreteSchedule(sd15_alphas_cumprod()))


def test_any_multiple_of_8_pixels_is_accepted(checkpoints, tmp_path, capsys):
    """72 x 80 px is a 9 x 10 latent: not a multiple of the U-Net's 8x downsampling."""
    argv = sample_args(checkpoints["single"], tmp_path, "--steps", "1", "--prompt", CAT, "--seed", "1")
    assert run(capsys, *argv, "--height", "72", "--width", "80")[0] == 0
    (made,) = tmp_path.iterdir()
    assert pixels(made).shape == (72, 80, 3)


def test_image_is_the_same_alone_or_inside_a_batch(checkpoints, tmp_path, capsys):
    """Image k of a batch of 3 against the same seed alone: the noise is bitwise equal (above), the
    pixels within one 8-bit level: batched GEMMs block differently and round differently (measured on
    this CPU: at most 1 level, on 0.2-0.8% of the pixel values)."""
    batch, alone = tmp_path / "batch", tmp_path / "alone"
    common = ["--steps", "1", "--prompt", CAT]
    three = ["--seed", "20", "--num-images", "3", "--batch-size", "3"]
    assert run(capsys, *sample_args(checkpoints["single"], batch, *common, *three))[0] == 0
    assert run(capsys, *sample_args(checkpoints["single"], alone, *common, "--seed", "21"))[0] == 0
    name = "21-a-photo-of-a-cat.png"
    difference = np.abs(pixels(batch / name).astype(int) - pixels(alone / name).astype(int)).max()
    assert difference <= 1

    # ... so a replay rebuilds the batch shape (copies of the image) and is bitwise equal again
    again = tmp_path / "again"
    assert run(capsys, "--replay", str(batch / name), "--out", str(again))[0] == 0
    assert (read_replay(batch / name)[0].batch, read_replay(batch / name)[0].batch_index) == (3, 1)
    assert np.array_equal(pixels(again / name), pixels(batch / name))


def test_trajectory_grid_shows_decoded_x_and_denoised_at_every_step(checkpoints, tmp_path, capsys):
    argv = sample_args(checkpoints["single"], tmp_path, "--steps", "2", "--prompt", CAT, "--seed", "4")
    code, out, _ = run(capsys, *argv, "--trajectory")
    assert code == 0 and f"wrote 1 image (4-a-photo-of-a-cat.png) and 1 trajectory to {tmp_path}/ in " in out
    image, grid = tmp_path / "4-a-photo-of-a-cat.png", tmp_path / "4-a-photo-of-a-cat-trajectory.png"
    assert pixels(grid).shape == (2 * 64, 2 * 64, 3)  # rows x_i and D_i, one column per step
    assert text_chunks(grid) == text_chunks(image)
    # top left: x_0 = sigma_0 * noise, decoded; its own computation gives the same pixels
    sd = weights.load(checkpoints["single"])
    x0 = initial_noise([4], (4, 8, 8)) * read_replay(image)[1].sigmas[0]
    with torch.inference_mode():
        assert np.array_equal(pixels(grid)[:64, :64], decode(sd, x0)[0].permute(1, 2, 0).numpy())
    # the last step goes from x_1 to x_2 = the image; D_1, bottom right, is not the image
    assert not np.array_equal(pixels(grid)[64:, 64:], pixels(image))


# -- plans -----------------------------------------------------------------------------------------------


def test_plan_file_is_run_as_saved(checkpoints, tmp_path, capsys):
    plan = Plan(
        [14.6, 3.0, 0.5],
        ["dpmpp_1s", "euler"],
        guidance=[7.5, 1.0],
        freeu=[None, PAPER_FREEU],
        final="denoise",
        name="mine",
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    out = tmp_path / "out"
    code, _, _ = run(
        capsys, *sample_args(checkpoints["single"], out, "--plan", str(path), "--prompt", CAT, "--seed", "1")
    )
    assert code == 0
    (made,) = out.iterdir()
    assert read_replay(made)[1] == plan
    assert (
        "Sampler: 1 x DPM++ 1S + 1 x Euler, Schedule type: custom, CFG scale: 7.5; 1"
        in (text_chunks(made)[PARAMETERS_KEY])
    )


def test_a_stochastic_solver_draws_each_images_noise_from_its_seed_and_replays_bitwise(
    checkpoints, tmp_path, capsys
):
    """Euler a adds noise at every step, drawn per image from a stream seeded by its own seed: alone or
    as row 1 of a batch the image comes out the same within one 8-bit level (batched GEMMs round
    differently, as above), and its replay is bitwise."""
    common = ["--preset", "karras-euler_a-3", "--prompt", CAT]
    batch, alone, again = tmp_path / "batch", tmp_path / "alone", tmp_path / "again"
    three = ["--seed", "30", "--num-images", "3", "--batch-size", "3"]
    assert run(capsys, *sample_args(checkpoints["single"], batch, *common, *three))[0] == 0
    assert run(capsys, *sample_args(checkpoints["single"], alone, *common, "--seed", "31"))[0] == 0
    name = "31-a-photo-of-a-cat.png"
    assert np.abs(pixels(batch / name).astype(int) - pixels(alone / name).astype(int)).max() <= 1
    assert not np.array_equal(pixels(batch / name), pixels(batch / "30-a-photo-of-a-cat.png"))
    assert run(capsys, "--replay", str(alone / name), "--out", str(again))[0] == 0
    assert np.array_equal(pixels(again / name), pixels(alone / name))
    assert "Sampler: Euler a, Schedule type: Karras" in text_chunks(alone / name)[PARAMETERS_KEY]


def test_print_plan_shows_the_json_and_each_tools_sigma_list_without_weights(tmp_path, capsys):
    code, out, _ = run(
        capsys, "--print-plan", "--steps", "5", "--weights", str(tmp_path / "none.safetensors")
    )
    assert code == 0
    lines = out.splitlines()
    plan = Plan.from_json(lines[0])
    assert plan == preset("paper-5")
    values = ", ".join(np.format_float_positional(s, trim="-") for s in plan.sigmas)
    assert lines[lines.index("ComfyUI ManualSigmas:") + 1] == f"  {values}"
    assert lines[lines.index("stable-diffusion.cpp --sigmas:") + 1] == f'  "{values.replace(", ", ",")}"'
    assert json.loads(lines[lines.index("diffusers sigmas=:") + 1]) == list(plan.sigmas)
    assert sum(line.startswith("  note: ") for line in lines) == 3
    assert lines[-1].startswith("final=keep: the lists end at sigma_N = 0.131981 > 0")


def test_print_plan_of_a_final_denoise_plan_ends_the_lists_with_a_step_into_0(capsys):
    code, out, _ = run(
        capsys, "--print-plan", "--preset", "paper-8", "--final", "denoise", "--solver", "unipc_bh2_3"
    )
    assert code == 0
    lines = out.splitlines()
    assert Plan.from_json(lines[0]).solver == ("unipc_bh2_3",) * 8
    assert json.loads(lines[lines.index("diffusers sigmas=:") + 1])[-2:] == [preset("paper-8").sigmas[-1], 0]


# -- errors: one line on stderr, exit status 2 -----------------------------------------------------------


def one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, out + err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.removesuffix("\n")


def bad_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    return path


def test_missing_weights(tmp_path, capsys):
    missing = tmp_path / "nothing.safetensors"
    assert one_line_error(capsys, *sample_args(missing, tmp_path / "out", "--prompt", CAT)) == (
        f"run_sample.py: error: --weights {missing} not found: give a path to a .safetensors file or "
        f"diffusers folder, a Hub id such as {SD15_REPO}, or a short name: sd15, sdxl, dreamshaper-xl, "
        "sdxl-vae-fp16-fix, sdxl-turbo, lcm-dreamshaper-v7"
    )


def test_corrupt_weights(tmp_path, capsys):
    path = bad_file(tmp_path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    error = one_line_error(capsys, *sample_args(path, tmp_path / "out", "--prompt", CAT))
    assert error.startswith(f"run_sample.py: error: {path} is not a valid safetensors file: ")


def test_wrong_file(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, path)
    error = one_line_error(capsys, *sample_args(path, tmp_path / "out", "--prompt", CAT))
    assert error.startswith(f"run_sample.py: error: {path} does not look like a Stable Diffusion checkpoint")


def test_unsupported_model_kind(tmp_path, capsys):
    """SDXL is supported now; SD 2.x (OpenCLIP ViT-H under cond_stage_model.model.) is not."""
    path = tmp_path / "sd2.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2),
            "cond_stage_model.model.positional_embedding": torch.zeros(2),
        },
        path,
    )
    error = one_line_error(capsys, *sample_args(path, tmp_path / "out", "--prompt", CAT))
    assert error.startswith(f"run_sample.py: error: {path} looks like Stable Diffusion 2.x")


def test_unreadable_weights(checkpoints, tmp_path, monkeypatch, capsys):
    path = checkpoints["single"]
    opened = Path.open

    def refuse(self, *args, **kwargs):  # chmod cannot lock out root, who runs these tests in CI
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    error = one_line_error(capsys, *sample_args(path, tmp_path / "out", "--prompt", CAT))
    assert error == f"run_sample.py: error: {path}: Permission denied"


def test_unknown_preset_lists_the_valid_ones(tmp_path, capsys):
    error = one_line_error(capsys, "--prompt", CAT, "--out", str(tmp_path), "--preset", "fast")
    assert error.startswith(
        "run_sample.py: error: unknown preset 'fast'; choose from paper-5, paper-6, paper-8, "
    )
    assert "karras-2m-20" in error


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # the weights do not exist either: the folder is checked first
    argv = sample_args(tmp_path / "missing.safetensors", blocker / "out", "--prompt", CAT)
    assert one_line_error(capsys, *argv) == (
        f"run_sample.py: error: cannot write to the output folder {blocker / 'out'}: Not a directory; "
        "give --out a writable folder"
    )


def test_plan_file_without_a_valid_plan(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text('{"format": 1, "sigmas": [1.0]}')
    assert one_line_error(capsys, "--prompt", CAT, "--plan", str(path)) == (
        f"run_sample.py: error: {path} is not a valid plan: plan keys must be ['final', 'format', 'freeu', "
        "'guidance', 'name', 'sigmas', 'solver'], got ['format', 'sigmas']"
    )


def test_png_without_a_plan(tmp_path, capsys):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    assert one_line_error(capsys, "--replay", str(path)) == (
        f"run_sample.py: error: {path} has no fewstep-plan or fewstep-settings metadata, so it cannot be "
        "replayed; pass a PNG written by run_sample.py with its metadata intact"
    )


def test_replay_of_a_file_that_is_not_an_image(tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    error = one_line_error(capsys, "--replay", str(path))
    assert error.startswith(f"run_sample.py: error: cannot read {path} as a PNG: ")


def test_non_finite_latents_name_the_step_and_blame_the_plan_on_a_float32_run(checkpoints, tmp_path, capsys):
    # w = 1e300 is inf in float32: the first guided estimate D_u + w (D_c - D_u) is non-finite. The run
    # is float32 already, so "try --dtype float32" (the message before issue 12) would mislead.
    argv = sample_args(
        checkpoints["single"], tmp_path, "--steps", "3", "--prompt", CAT, "--guidance", "1e300"
    )
    assert one_line_error(capsys, *argv) == (
        "run_sample.py: error: the latents became non-finite at step 1 of 3 (sigma 14.61); the run is "
        f"float32 already, so the plan (guidance up to 1e+300) or the weights {checkpoints['single']} are "
        "at fault: lower --guidance, or check the weights"
    )
    assert list(tmp_path.iterdir()) == []


def test_help_explains_every_flag(capsys):
    code, text, _ = run(capsys, "--help")
    assert code == 0
    for flag in (
        "--prompt ",
        "--prompts",
        "--negative-prompt",
        "--steps",
        "--preset",
        "--solver",
        "--discretization",
        "--stop",
        "--p1",
        "--p2",
        "--rho",
        "--guidance",
        "--freeu",
        "--no-freeu",
        "--freeu-version",
        "--freeu-steps",
        "--final",
        "--plan",
        "--replay",
        "--seed",
        "--num-images",
        "--batch-size",
        "--vae",
        "--vae-dtype",
        "--empty-negative",
        "--original-size",
        "--crop-top-left",
        "--target-size",
        "--quantize",
        "--init-image",
        "--strength",
        "--strength-cut",
        "--height",
        "--width",
        "--device",
        "--dtype",
        "--compile",
        "--out",
        "--weights",
        "--trajectory",
        "--print-plan",
        "--alpha",
        "--beta",
        "--coeff",
        "--spacing",
        "--offset",
        "--threshold",
        "--linear",
        "--debug",
    ):
        assert flag in text
    assert f"default: {SD15_REPO}, file {SD15_FILE}" in " ".join(text.split())


# -- plans searched on another model ---------------------------------------------------------------------


def _searched_plan(model: str) -> Plan:
    record = Searched(
        N=2, solver="dpmpp_2m", nfe=2, cost="global", grid=8, samples=4, seed=0, stages=("dp",),
        teacher="exact", substeps=0, model=model,
    )  # fmt: skip
    return Plan([14.6, 2.0, 0.5], "dpmpp_2m", "keep", "searched-2m-2", record, guidance=7.5)


@pytest.mark.parametrize(
    ("model", "note"),
    [
        (
            "solvers.analytic:GaussianMixture.default",
            "run_sample.py: note: the plan searched-2m-2 was searched on the analytic denoiser "
            "solvers.analytic:GaussianMixture.default, a toy model, not on SD: its sigmas fit that model, "
            "whatever its guidance (7.5) says",
        ),
        (
            "v1-5-pruned-emaonly",
            "run_sample.py: note: the plan searched-2m-2 was searched on v1-5-pruned-emaonly, not on "
            "sd15-tiny-seed0-fp32: its sigmas fit that model",
        ),
        ("sd15-tiny-seed0-fp32", None),
        ("", None),  # a plan from before the search recorded its model
    ],
)
def test_a_plan_searched_on_another_model_says_so_in_one_line(model, note, checkpoints, tmp_path, capsys):
    plan_file = tmp_path / "searched.json"
    plan_file.write_text(_searched_plan(model).to_json())
    argv = sample_args(checkpoints["single"], tmp_path / "out", "--plan", str(plan_file), "--prompt", CAT)
    code, _, err = run(capsys, *argv)
    assert code == 0
    notes = [line for line in err.splitlines() if "was searched on" in line]
    assert notes == ([] if note is None else [note])
