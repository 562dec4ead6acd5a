"""Per-step options (solvers/options.py): one declaration gives an option its check, its device-side
reading, its flag and its place in the PNG's parameters line, with no other file to edit."""

import json

import numpy as np
import pytest
import torch

import safeio
from model import UNet
from pipeline import PARAMETERS_KEY, PLAN_KEY
from run_sample import main
from solvers import OPTIONS, Flag, Option, Plan, PlanError, prepare
from solvers.options import number
from tests.checkpoints import write_checkpoint
from tests.helpers import one_thread, pixels, run_main, text_chunks


@pytest.fixture
def eps_scale(monkeypatch):
    """A new option, declared here only: eps_scale >= 0 multiplies the U-Net's noise prediction (its
    consumer: the U-Net, wrapped to take it). Returns the values the U-Net was called with."""
    option = Option(
        "eps_scale",
        1.0,
        lambda value: safeio.number(value, 0),
        read=lambda value, device: torch.tensor(value, device=device),
        label="Eps scale",
        flags=(Flag("--eps-scale", "scale the U-Net's noise prediction", {"type": number, "metavar": "S"}),),
    )
    monkeypatch.setitem(OPTIONS, option.name, option)
    forward, seen = UNet.forward, []

    def scaled(self, *args, eps_scale=1.0, **kwargs):
        seen.append(eps_scale)
        return eps_scale * forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", scaled)
    return seen


def test_a_new_option_declared_in_one_place_runs_from_its_flag_to_the_unet_and_the_png(
    eps_scale, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = write_checkpoint(tmp_path / "weights", "single")
    common = ["--weights", str(weights), "--device", "cpu", "--height", "64", "--width", "64"]
    with one_thread():
        code, _, err = run_main(main, capsys, *common, "--out", str(tmp_path / "a"), "--steps", "2",
                                "--prompt", "a cube", "--eps-scale", "0.5")  # fmt: skip
        assert code == 0, err
        [png] = (tmp_path / "a").glob("*.png")
        chunks = text_chunks(png)
        assert ", FreeU: 1.1/1.1/0.9/0.2, Eps scale: 0.5, Plan: " in chunks[PARAMETERS_KEY]
        stored = json.loads(chunks[PLAN_KEY])
        assert stored["options"]["eps_scale"] == [0.5, 0.5] and stored["name"] == "paper-2+eps_scale=0.5"
        # read once per run, on the device, as the one tensor every call gets
        assert len(eps_scale) == 2 and eps_scale[0] is eps_scale[1] and eps_scale[0].item() == 0.5
        assert main([*common, "--replay", str(png), "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(pixels(tmp_path / "b" / png.name), pixels(png))
    code, _, err = run_main(main, capsys, *common, "--out", str(tmp_path / "c"), "--eps-scale", "x")
    assert code == 2 and "argument --eps-scale: 'x' is not a number" in err


def test_a_declared_option_is_checked_by_the_plan_and_absent_where_not_given(eps_scale):
    with pytest.raises(PlanError, match="eps_scale of step 2: must be >= 0, got -1"):
        Plan([3.0, 2.0, 1.0], eps_scale=[0.5, -1])
    assert "eps_scale" not in Plan([3.0, 2.0, 1.0]).options
    assert Plan([3.0, 2.0, 1.0], eps_scale=2).eps_scale == (2.0, 2.0)
    # absent, it is its default: the denoiser gets that, read like a given value
    options = prepare(Plan([3.0, 2.0, 1.0]), torch.zeros(1, 4)).options
    assert [o["eps_scale"].item() for o in options] == [1.0, 1.0]


def test_the_prepared_loop_reads_each_distinct_value_once_and_passes_undeclared_ones_as_stored():
    plan = Plan(
        [3.0, 2.0, 1.0, 0.5], freeu=[None, {"b1": 1, "b2": 1, "s1": 1, "s2": 1}, None], mask=[1, 2, 3]
    )
    options = prepare(plan, torch.zeros(1, 4)).options
    assert (
        options[0]["freeu"] is options[2]["freeu"] is None and options[1]["freeu"].factors.tolist() == [1] * 4
    )
    assert [o["mask"] for o in options] == [1, 2, 3] and [o["guidance"] for o in options] == [7.5] * 3
