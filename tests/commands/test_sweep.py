"""run_sample.py --sweep: every combination of up to two knobs on the tiny random-weight checkpoint
(`main([...])` in process on the CPU in float32, 64 x 64 px, 1-2 steps), its labelled grid PNG, the
grid's replay, and the refusals (one line, exit 2, nothing written, no weights loaded)."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

import pipeline
from pipeline.sweep import PAD, SWEEP_KEY, Axis, combinations, parse_axis
from run_sample import main
from tests.checkpoints import write_checkpoint
from tests.helpers import pixels, run_main, text_chunks

SIZE = ["--height", "64", "--width", "64"]
CAT = "a photo of a cat"
SWEEP = ["--sweep", "steps=1,2", "--sweep", "guidance=1,7.5"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint"), layout="single")


@pytest.fixture(autouse=True)
def env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("caches") / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")


def args(checkpoint, out, *extra: str) -> list[str]:
    return ["--weights", str(checkpoint), "--device", "cpu", "--out", str(out), *SIZE, "--seed", "7", *extra]


@pytest.fixture(scope="module")
def swept(checkpoint, tmp_path_factory):
    """The 2 x 2 sweep steps=1,2 (columns) x guidance=1,7.5 (rows): its folder and the grid's path."""
    out = tmp_path_factory.mktemp("swept")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("swept-cache")))
        assert main(args(checkpoint, out, "--prompt", CAT, *SWEEP)) == 0
    (grid,) = out.glob("*-sweep.png")
    return out, grid


def record(grid) -> dict:
    return json.loads(text_chunks(grid)[SWEEP_KEY])


def test_a_2x2_sweep_writes_4_images_and_one_grid(swept):
    out, grid = swept
    images = sorted(p for p in out.glob("*.png") if p != grid)
    assert len(images) == 4
    assert all(pipeline.read_replay(p)[0].prompt == CAT for p in images)  # each with its own metadata
    assert text_chunks(grid)["parameters"].startswith("Sweep: steps=1,2 x guidance=1,7.5, 4 combinations")


def test_each_cell_equals_the_image_of_its_combination_run_alone(swept, checkpoint, tmp_path):
    _, grid = swept
    cells = record(grid)["cells"]
    for k, values in enumerate(combinations([Axis("steps", ("1", "2")), Axis("guidance", ("1", "7.5"))])):
        alone = tmp_path / f"alone-{k}"
        flags = [f"--{knob}={value}" for knob, value in values.items()]
        assert main(args(checkpoint, alone, "--prompt", CAT, *flags)) == 0
        (png,) = alone.glob("*.png")
        x, y, w, h = cells[k]["box"]
        assert np.array_equal(pixels(grid)[y : y + h, x : x + w], pixels(png)), values


def test_the_grid_labels_name_each_knob_value_over_its_column_and_beside_its_row(swept):
    _, grid = swept
    shown, boxes = pixels(grid), [cell["box"] for cell in record(grid)["cells"]]
    top, left, (slot_w, slot_h) = boxes[0][1], boxes[0][0], boxes[0][2:]
    font = ImageFont.load_default()

    def drawn(text: str, width: int, height: int) -> np.ndarray:
        label = Image.new("RGB", (width, height), (255, 255, 255))
        ImageDraw.Draw(label).text((PAD, PAD), text, fill=(0, 0, 0), font=font)
        return np.asarray(label)

    for c, text in enumerate(["steps=1", "steps=2"]):
        x = left + c * slot_w
        assert np.array_equal(shown[:top, x : x + slot_w], drawn(text, slot_w, top)), text
    for r, text in enumerate(["guidance=1", "guidance=7.5"]):
        y = top + r * slot_h
        assert np.array_equal(shown[y : y + slot_h, :left], drawn(text, left, slot_h)), text
    assert record(grid)["axes"] == [
        {"knob": "steps", "values": ["1", "2"]},
        {"knob": "guidance", "values": ["1", "7.5"]},
    ]


def test_replaying_the_grid_reruns_every_image_and_the_grid_bitwise(swept, tmp_path, capsys):
    out, grid = swept
    code, _, err = run_main(main, capsys, "--replay", str(grid), "--out", str(tmp_path))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in out.iterdir())
    for again in tmp_path.iterdir():
        assert again.read_bytes() == (out / again.name).read_bytes(), again.name


def loads(monkeypatch) -> list:
    """The prepare_run calls of a run (each one loads the weights)."""
    calls = []
    real = pipeline.prepare_run

    def counted(request):
        calls.append(request)
        return real(request)

    monkeypatch.setattr(pipeline, "prepare_run", counted)
    return calls


def test_plan_knobs_load_the_model_once(checkpoint, tmp_path, monkeypatch, capsys):
    calls = loads(monkeypatch)
    argv = args(checkpoint, tmp_path, "--prompt", CAT, "--sweep", "solver=euler,dpmpp_2m", "--steps", "2")
    assert run_main(main, capsys, *argv)[0] == 0
    assert len(calls) == 1
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_a_model_knob_loads_the_model_once_per_value(checkpoint, tmp_path, monkeypatch, capsys):
    calls = loads(monkeypatch)
    argv = args(
        checkpoint, tmp_path, "--prompt", CAT, "--steps", "1", "--sweep", "vae-dtype=float32,bfloat16"
    )
    assert run_main(main, capsys, *argv)[0] == 0
    assert [request.vae_dtype for request in calls] == ["float32", "bfloat16"]


def test_a_knob_value_holding_commas_is_listed_with_semicolons():
    knobs = {"freeu": str, "steps": int}
    assert parse_axis("freeu=1.1,1.1,0.9,0.2;1.3,1.4,0.9,0.2", knobs).values == (
        "1.1,1.1,0.9,0.2",
        "1.3,1.4,0.9,0.2",
    )
    assert parse_axis("--steps=4, 6", knobs) == Axis("steps", ("4", "6"))


def test_combinations_run_row_by_row_with_the_first_knob_over_the_columns():
    axes = [Axis("steps", ("1", "2")), Axis("guidance", ("3", "4"))]
    assert combinations(axes) == [
        {"steps": "1", "guidance": "3"},
        {"steps": "2", "guidance": "3"},
        {"steps": "1", "guidance": "4"},
        {"steps": "2", "guidance": "4"},
    ]


# -- refusals: one line, exit 2, nothing written, the weights never loaded ------------------------------


@pytest.mark.parametrize(
    ("sweeps", "message"),
    [
        (
            ["stesp=1,2"],
            "argument --sweep: unknown knob 'stesp'; did you mean steps or stop? choose from alpha, apg, ",
        ),
        (
            ["steps=1", "steps=2"],
            "--sweep steps is given twice; list all its values in one --sweep steps=V1,V2",
        ),
        (
            ["steps=1,2", "guidance=1,2", "stop=1,2"],
            "--sweep takes at most 2 knobs (columns and rows), got 3: steps, guidance, stop",
        ),
        (
            ["steps="],
            "argument --sweep: steps= needs values such as steps=V1,V2, none of them empty, got 'steps='",
        ),
        (["steps"], "argument --sweep: give KNOB=V1,V2,... such as steps=4,6,8, got 'steps'"),
        (["steps=1,0"], "argument --sweep: steps=0: must be 1 or more, got 0"),
        (["cfg-rescale=0.5,2"], "argument --sweep: cfg-rescale=2: "),
        (
            ["steps=" + ",".join(map(str, range(1, 10))), "guidance=" + ",".join(map(str, range(1, 9)))],
            "--sweep steps=1,2,3,4,5,6,7,8,9 x guidance=1,2,3,4,5,6,7,8 makes 72 images, over the maximum "
            "of 64 per sweep; pass --allow-large to lift the limits (see the README)",
        ),
        (["preset=karras-2m-20,fast"], "--sweep preset=fast: unknown preset 'fast'; choose from "),
        (["replay=a.png,b.png"], "argument --sweep: unknown knob 'replay'"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_is_loaded(
    sweeps, message, checkpoint, tmp_path, monkeypatch, capsys
):
    calls = loads(monkeypatch)
    out = tmp_path / "out"
    argv = args(checkpoint, out, "--prompt", CAT, *(flag for sweep in sweeps for flag in ("--sweep", sweep)))
    code, _, err = run_main(main, capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"run_sample.py: error: {message}"), err
    assert not out.exists() and not calls


def test_the_image_count_counts_every_image_of_every_combination(checkpoint, tmp_path, monkeypatch, capsys):
    calls = loads(monkeypatch)
    argv = args(
        checkpoint,
        tmp_path / "out",
        "--prompt",
        CAT,
        "--num-images",
        "3",
        "--sweep",
        "steps=" + ",".join(map(str, range(1, 23))),
    )
    code, _, err = run_main(main, capsys, *argv)
    assert code == 2
    assert "makes 66 images, over the maximum of 64 per sweep" in err
    assert not (tmp_path / "out").exists() and not calls


def test_a_grid_replay_takes_no_new_sweep(swept, tmp_path, capsys):
    _, grid = swept
    code, _, err = run_main(
        main, capsys, "--replay", str(grid), "--sweep", "steps=1,2", "--out", str(tmp_path / "out")
    )
    assert code == 2
    assert err == (
        f"run_sample.py: error: --replay {grid} is a sweep grid, which reruns its own sweep; drop --sweep\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        ("{", "the fewstep-sweep chunk of"),
        ('{"format": 2}', "its fewstep-sweep chunk is not a sweep of format 1"),
        ('{"format": 1, "axes": [], "cells": []}', "its fewstep-sweep chunk has 0 knobs; a sweep has 1 or 2"),
        ('{"format": 1, "axes": [{"knob": "steps", "values": ["1"]}]}', "is not a sweep record"),
    ],
)
def test_a_broken_sweep_record_is_refused_in_one_line(chunk, message, tmp_path, capsys):
    info = PngImagePlugin.PngInfo()
    info.add_text(SWEEP_KEY, chunk)
    grid = tmp_path / "grid.png"
    Image.new("RGB", (8, 8)).save(grid, pnginfo=info)
    code, _, err = run_main(main, capsys, "--replay", str(grid), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_weights_file_of_a_weights_sweep_is_refused_before_any_model_loads(
    checkpoint, tmp_path, monkeypatch, capsys
):
    calls = loads(monkeypatch)
    missing = tmp_path / "missing.safetensors"
    argv = [
        *args(checkpoint, tmp_path / "out", "--prompt", CAT),
        "--sweep",
        f"weights={checkpoint},{missing}",
    ]
    code, _, err = run_main(main, capsys, *argv)
    assert code == 2 and err.startswith(f"run_sample.py: error: --weights {missing} not found"), err
    assert not calls and not (tmp_path / "out").exists()


def test_print_plan_shows_every_combinations_plan_without_weights(tmp_path, monkeypatch, capsys):
    calls = loads(monkeypatch)
    code, out, err = run_main(
        main, capsys, "--sweep", "steps=5,6", "--out", str(tmp_path / "out"), "--print-plan"
    )
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("# ")] == ["# paper-5", "# paper-6"]
    assert not calls and not (tmp_path / "out").exists()


def test_a_swept_knob_replaces_the_same_flag_given_on_the_command_line(capsys):
    code, out, err = run_main(
        main, capsys, "--steps", "8", "--guidance", "3", "--sweep", "steps=5,6", "--print-plan"
    )
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("# ")] == ["# paper-5", "# paper-6"]
    for steps in (5, 6):  # the other flags given stay
        assert f'"guidance": [{", ".join(["3.0"] * steps)}]' in out


def test_each_combination_warns_for_its_own_plan_of_a_distilled_preset(checkpoint, tmp_path, capsys):
    """One model load serves both plans; only the LCM preset is made for other weights (LCM-LoRA)."""
    code, _, err = run_main(main, capsys, *args(checkpoint, tmp_path, "--prompt", CAT, "--sweep",
                                                "preset=paper-2,lcm-2"))  # fmt: skip
    assert code == 0
    warnings = [line for line in err.splitlines() if "made for" in line]
    assert len(warnings) == 1 and "lcm-2" in warnings[0], err
