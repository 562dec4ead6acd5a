"""--lora and --unet through the one run assembly (pipeline.prepare_run): run_sample.py and
evaluation.generate merge the LoRAs and swap the U-Net, record both (file, sha256, strength) in the PNG
and run.json, replay them, and refuse a bad file or strength in one line with nothing written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

import pipeline
import run_sample
from cli.generation import plan_overrides, run_request
from evaluation import generate
from pipeline import Settings, read_replay
from solvers import PlanError
from solvers.presets import DISTILLED, weights_warning
from tests.checkpoints import reference_models, write_checkpoint
from tests.helpers import one_thread, pixels, run_main, text_chunks
from tests.reference.unet import ldm_state_dict
from tests.weights.test_lora import UNET_LAYERS, kohya_file, layer, random_layers
from weights.catalog import DISTILLED_FILES

REPO = Path(__file__).resolve().parents[2]
SIZE = ["--height", "64", "--width", "64", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    with one_thread():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny SD 1.5 checkpoint, a kohya LoRA on every U-Net layer, the checkpoint's own U-Net as a
    U-Net file (LDM names) and the tiny SDXL U-Net as one."""
    root = tmp_path_factory.mktemp("files")
    refs = reference_models(kind="sd1")
    own = {k: v.half().float() for k, v in ldm_state_dict(refs.unet).items()}  # as the checkpoint holds them
    save_file(own, root / "own_unet.safetensors")
    save_file(ldm_state_dict(reference_models(kind="sdxl").unet), root / "xl_unet.safetensors")
    return {
        "weights": write_checkpoint(root, "single"),
        "lora": kohya_file(
            root / "lora.safetensors", {"unet": random_layers(refs.unet, UNET_LAYERS, 3)}, 2.0
        ),
        "unet": root / "own_unet.safetensors",
        "xl_unet": root / "xl_unet.safetensors",
    }


def sample(capsys, files, out, *extra: str) -> tuple[int, str, str]:
    argv = ["--weights", str(files["weights"]), "--out", str(out), "--prompt", "a cat", "--seed", "7"]
    steps = [] if "--preset" in extra else ["--steps", "2"]
    return run_main(run_sample.main, capsys, *argv, *SIZE, *steps, *extra)


def only_png(folder):
    (png,) = folder.iterdir()
    return png


def test_a_lora_changes_the_image_is_recorded_and_replays_bitwise(capsys, files, tmp_path):
    assert sample(capsys, files, tmp_path / "plain")[0] == 0
    assert sample(capsys, files, tmp_path / "lora", "--lora", f"{files['lora']}:0.5")[0] == 0
    plain, merged = only_png(tmp_path / "plain"), only_png(tmp_path / "lora")
    assert not np.array_equal(pixels(plain), pixels(merged))
    settings = read_replay(merged)[0]
    assert settings.loras == [
        {
            "lora": str(files["lora"]),
            "file": "lora.safetensors",
            "sha256": hashlib.sha256(files["lora"].read_bytes()).hexdigest(),
            "strength": 0.5,
        }
    ]
    code, _, err = run_main(
        run_sample.main, capsys, "--replay", str(merged), "--out", str(tmp_path / "again")
    )
    assert code == 0, err
    again = only_png(tmp_path / "again")
    assert np.array_equal(pixels(again), pixels(merged))
    assert text_chunks(again) == text_chunks(merged)


def test_a_unet_file_replaces_the_checkpoints_and_is_recorded(capsys, files, tmp_path):
    """The checkpoint's own U-Net as a file: the same image and its sha256 in the PNG. Within one 8-bit
    level, not bitwise: the same weights mapped from another file sit at other memory offsets, and the
    CPU's GEMM kernels round by alignment (~2e-6 in the tiny U-Net's output)."""
    assert sample(capsys, files, tmp_path / "plain")[0] == 0
    assert sample(capsys, files, tmp_path / "unet", "--unet", str(files["unet"]))[0] == 0
    png = only_png(tmp_path / "unet")
    difference = pixels(png).astype(int) - pixels(only_png(tmp_path / "plain")).astype(int)
    assert np.abs(difference).max() <= 1
    settings = read_replay(png)[0]
    assert (settings.unet, settings.unet_sha256) == (
        str(files["unet"]),
        hashlib.sha256(files["unet"].read_bytes()).hexdigest(),
    )


def bad_lora(tmp_path, kind: str):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        save_file(layer(), path)
        path.write_bytes(path.read_bytes()[:-10])
    else:
        save_file(layer(up_rank=3) if kind == "rank" else layer(value=float("nan")), path)
    return path


@pytest.mark.parametrize(
    ("kind", "match"), [("truncated", "truncated"), ("nan", "NaN or infinite"), ("rank", "has rank 4")]
)
def test_a_bad_lora_is_refused_in_one_line_naming_it_and_nothing_is_written(
    capsys, files, tmp_path, kind, match
):
    path = bad_lora(tmp_path, kind)
    code, out, err = sample(capsys, files, tmp_path / "out", "--lora", str(path))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and str(path) in err and match in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("strength", ["nan", "inf", "x", ""])
def test_a_strength_that_is_not_a_finite_number_is_refused(capsys, files, tmp_path, strength):
    code, out, err = sample(capsys, files, tmp_path / "out", "--lora", f"{files['lora']}:{strength}")
    assert code == 2 and out == "" and "--lora" in err and "strength" in err, err
    assert not (tmp_path / "out").exists()


def test_a_unet_of_the_other_family_is_refused_in_one_line(capsys, files, tmp_path):
    code, out, err = sample(capsys, files, tmp_path / "out", "--unet", str(files["xl_unet"]))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and str(files["xl_unet"]) in err and "SDXL U-Net" in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_evaluation_runs_identity_holds_its_loras_and_unet(capsys, files, tmp_path):
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(json.dumps({"index": 0, "prompt": "a cat", "seed": 1, "reference": None}) + "\n")
    out = tmp_path / "run"
    argv = ["--manifest", str(manifest), "--out", str(out), "--weights", str(files["weights"]), *SIZE]
    argv += ["--steps", "2"]
    lora_flag = ["--lora", f"{files['lora']}:0.5", "--unet", str(files["unet"])]
    code, _, err = run_main(generate.main, capsys, *argv, *lora_flag)
    assert code == 0, err
    record = json.loads((out / generate.RUN_FILE).read_text())
    assert [(r["file"], r["strength"]) for r in record["loras"]] == [("lora.safetensors", 0.5)]
    assert record["unet_sha256"] == hashlib.sha256(files["unet"].read_bytes()).hexdigest()
    code, _, err = run_main(generate.main, capsys, *argv, "--lora", f"{files['lora']}:0.25")
    assert code == 2 and "belongs to a run with other settings (loras" in err, err


def test_a_distilled_preset_on_weights_not_made_for_it_warns_in_one_line(capsys, files, tmp_path):
    code, _, err = sample(capsys, files, tmp_path / "out", "--preset", "lcm-2")
    assert code == 0
    (line,) = [line for line in err.splitlines() if "warning" in line]
    assert line.startswith("run_sample.py: warning: lcm-2 is made for ") and "sd15-tiny" in line, err


def test_a_lora_named_for_the_preset_silences_the_warning(capsys, files, tmp_path):
    named = tmp_path / "lcm-lora-sdv1-5.safetensors"
    named.write_bytes(files["lora"].read_bytes())
    code, _, err = sample(capsys, files, tmp_path / "out", "--preset", "lcm-2", "--lora", str(named))
    assert code == 0 and "warning" not in err, err


def test_a_turbo_preset_defaults_to_sdxl_turbos_512_px(files):
    request = pipeline.Request(
        weights=str(files["weights"]), device="cpu", recipe=pipeline.Recipe(preset="turbo-1")
    )
    run = pipeline.prepare_run(request)
    assert (run.settings.height, run.settings.width) == (512, 512)
    assert "SDXL-Turbo" in run.warning
    sized = pipeline.prepare_run(dataclasses.replace(request, height=64, width=128))
    assert (sized.settings.height, sized.settings.width) == (64, 128)


def test_an_lcm_unet_takes_the_plans_guidance_as_its_input(capsys, files, tmp_path):
    """--unet an LCM U-Net (the tiny checkpoint's with `time_cond_proj_dim`): the run succeeds, and
    the guidance scale changes the image through the embedding alone (pipeline.generate)."""
    refs = reference_models(kind="sd1")
    lcm = UNet2DConditionModel.from_config({**refs.unet.config, "time_cond_proj_dim": 32})
    save_file({k: v.contiguous() for k, v in lcm.state_dict().items()}, tmp_path / "lcm_unet.safetensors")
    for w in ("8", "2"):
        flags = ["--unet", str(tmp_path / "lcm_unet.safetensors"), "--preset", "lcm-2", "--guidance", w]
        code, _, err = sample(capsys, files, tmp_path / w, *flags)
        assert code == 0, err
    assert not np.array_equal(pixels(only_png(tmp_path / "8")), pixels(only_png(tmp_path / "2")))
    assert read_replay(only_png(tmp_path / "8"))[1].guidance == (8.0, 8.0)


def test_help_lists_the_short_names_of_every_distilled_file(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    code, out, _ = run_main(run_sample.main, capsys, "--help")
    assert code == 0
    for name in DISTILLED_FILES:
        assert name in " ".join(out.split()), name


def test_every_distilled_preset_has_a_short_name_its_warning_recognises():
    for preset, entry in DISTILLED.items():
        named = [name for name in DISTILLED_FILES if any(mark in name for mark in entry.marks)]
        assert named, preset
        assert weights_warning(preset if entry.steps else f"{preset}-4", ["sd15", named[0]]) is None


def test_a_short_name_of_the_other_family_is_refused_before_anything_is_fetched(capsys, files, tmp_path):
    code, out, err = sample(capsys, files, tmp_path / "out", "--lora", "lcm-lora-sdxl")
    assert code == 2 and out == ""
    assert "--lora lcm-lora-sdxl is made for SDXL models, but the weights are SD 1.x" in err, err
    assert "lcm-lora-sd15" in err and len(err.splitlines()) == 1


def test_a_short_name_fetches_its_repo_and_file(capsys, files, tmp_path):
    """Offline (tests/conftest.py), the refusal names the Hub file the short name stands for."""
    code, _, err = sample(capsys, files, tmp_path / "out", "--lora", "tcd-lora-sd15")
    assert code == 2
    assert "h1t/TCD-SD15-LoRA/pytorch_lora_weights.safetensors" in err, err


def test_a_short_name_of_another_kind_is_refused_naming_its_flag(capsys, files, tmp_path):
    code, _, err = sample(capsys, files, tmp_path / "out", "--unet", "lcm-lora-sd15")
    assert code == 2 and "--unet lcm-lora-sd15 is not a unet file; give it as --lora" in err, err


def documented_commands() -> list[list[str]]:
    """Every `evaluation.generate` command of docs/evaluation.md section 8 and the README's distilled rows."""
    docs = (REPO / "docs" / "evaluation.md").read_text().split("## 8.")[1]
    readme = (REPO / "README.md").read_text().split("The distilled rows of the tables")[1].split("```\n\n")[0]
    text = docs.replace("\\\n", " ") + readme.replace("\\\n", " ").replace(
        "$G ", "evaluation.generate --manifest coco14.jsonl "
    )
    return [
        shlex.split(line.split("evaluation.generate", 1)[1].split("#")[0])
        for line in text.splitlines()
        if "evaluation.generate " in line and "--preset" in line and not line.startswith("G=")
    ]


def test_every_documented_distilled_command_parses_and_names_its_plan():
    commands = documented_commands()
    presets = {argv[argv.index("--preset") + 1] for argv in commands}
    assert presets == {
        "flash-4", "flash-5", "flash-6", "flash-8", "turbo-1", "turbo-4", "lightning-8", "dmd2-4",
        "dmd2-4-paper",
    }  # fmt: skip
    assert len(commands) == 2 * 12  # each of the 12 commands in both documents
    for argv in commands:
        args = generate.build_parser().parse_args(argv)
        request = run_request(args, "cpu", pipeline.Recipe(None, args.preset, None, plan_overrides(args)))
        plan = pipeline.preview_plan(request)
        assert plan.name == args.preset and set(plan.guidance) == {1.0}
        names = [request.weights, *(spec for spec, _ in request.loras), request.unet or ""]
        assert weights_warning(plan.name, names) is None, argv


def test_a_diffusers_folder_with_an_lcm_unet_runs_as_lcm_dreamshaper_v7s(capsys, tmp_path):
    """LCM Dreamshaper v7's layout (a diffusers folder whose U-Net has `time_cond_proj_dim`) loads and
    runs an LCM preset with its embedded guidance, as its authors' lcm_val.py runs it."""
    refs = reference_models(kind="sd1")
    lcm = UNet2DConditionModel.from_config({**refs.unet.config, "time_cond_proj_dim": 32})
    folder = write_checkpoint(tmp_path / "lcm", "diffusers", references=refs._replace(unet=lcm))
    argv = ["--weights", str(folder), "--out", str(tmp_path / "out"), "--prompt", "a cat", "--seed", "7"]
    code, _, err = run_main(run_sample.main, capsys, *argv, *SIZE, "--preset", "lcm-2", "--guidance", "8")
    assert code == 0, err
    settings, plan = read_replay(only_png(tmp_path / "out"))
    assert plan.guidance == (8.0, 8.0) and settings.model == folder.name


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"lora": "x", "file": "x", "sha256": "0" * 64, "strength": 1e400}, "must be a finite number"),
        ({"lora": "x", "file": "x", "sha256": "0" * 64}, "is not a LoRA record"),
        ({"lora": " ", "file": "x", "sha256": "0" * 64, "strength": 1}, "it is empty"),
        ("x.safetensors", "lack a valid 'loras'"),
    ],
)
def test_a_png_whose_lora_record_is_wrong_is_refused_as_the_flag_would_be(
    capsys, files, tmp_path, record, match
):
    assert sample(capsys, files, tmp_path / "made", "--lora", str(files["lora"]))[0] == 0
    png = only_png(tmp_path / "made")
    settings = json.loads(text_chunks(png)["fewstep-settings"])
    text = json.dumps(settings | {"loras": [record]}).replace("Infinity", "1e400")
    with pytest.raises(PlanError, match=match):
        Settings.from_json(text)
