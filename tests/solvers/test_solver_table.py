"""The one solver table: a rule declared once is known to plans, NFE counts, presets, the command
line and the PNG text."""

import math

import pytest

from pipeline import read_replay
from run_sample import main
from solvers import SOLVERS, Plan, PlanError, preset, solver
from solvers.table import Solver, register
from tests.checkpoints import write_checkpoint
from tests.helpers import text_chunks


@pytest.fixture
def midpoint_euler():
    """A rule registered in one place, as a user would: Euler to the geometric midpoint, then
    Euler from there with the slope seen at the midpoint (2 calls per step)."""

    @solver(calls=2, order=2, short="me", display="Midpoint Euler")
    def midpoint_euler(x, denoised, step):
        sigma, sigma_next = step.sigma, step.sigma_next
        sigma_mid = math.sqrt(sigma * sigma_next)
        x_mid = x + (sigma_mid - sigma) * (x - denoised) / sigma
        return x + (sigma_next - sigma) * (x_mid - step.denoise(x_mid, sigma_mid)) / sigma_mid

    yield midpoint_euler
    del SOLVERS["midpoint_euler"]


def test_every_built_in_rule_is_declared_with_its_calls_order_and_names():
    # "dpmpp_3m" is the published DPM-Solver++(3M) (second order); the exact-quadratic rule this
    # name held before plan format 3 is "dpmpp_3m_exact". A1111's "UniPC" is bh1, order 3.
    unipc = {f"unipc_{v}_{p}": (1, p + 1, f"unipc_{v}_{p}", f"UniPC {v} order {p}")
             for v in ("bh1", "bh2") for p in (1, 2, 3)}  # fmt: skip
    unipc["unipc_bh1_3"] = (1, 4, "unipc_bh1_3", "UniPC")
    assert {name: (s.calls, s.order, s.short, s.display) for name, s in SOLVERS.items()} == {
        "euler": (1, 1, "euler", "Euler"),
        "heun": (2, 2, "heun", "Heun"),
        "dpmpp_1s": (1, 1, "1s", "DPM++ 1S"),
        "dpmpp_2s": (2, 2, "2s", "DPM++ 2S"),
        "dpmpp_2m": (1, 2, "2m", "DPM++ 2M"),
        "dpmpp_3m": (1, 2, "3m", "DPM++ 3M"),
        "dpmpp_3m_exact": (1, 3, "3m_exact", "DPM++ 3M exact"),
        "deis_2": (1, 2, "deis_2", "DEIS 2"),
        "deis_3": (1, 3, "deis_3", "DEIS 3"),
        "ipndm": (1, 2, "ipndm", "iPNDM"),
        "ipndm_v": (1, 2, "ipndm_v", "iPNDM-v"),
        "euler_a": (1, 1, "euler_a", "Euler a"),
        "dpmpp_2m_sde": (1, 2, "2m_sde", "DPM++ 2M SDE"),
        "dpmpp_2m_sde_heun": (1, 2, "2m_sde_heun", "DPM++ 2M SDE Heun"),
        "dpmpp_3m_sde": (1, 2, "3m_sde", "DPM++ 3M SDE"),
        **unipc,
        "lcm": (1, 1, "lcm", "LCM"),
        "tcd": (1, 1, "tcd", "TCD"),
    }
    assert [name for name, s in SOLVERS.items() if s.stochastic] == [
        "euler_a", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "lcm", "tcd"
    ]  # fmt: skip
    assert [name for name, s in SOLVERS.items() if s.to_zero] == ["lcm"]  # LCM's last step is its own


def test_a_registered_rule_is_usable_by_plans_nfe_and_presets(midpoint_euler):
    plan = Plan([3.0, 1.0, 0.5], "midpoint_euler")
    assert plan.nfe == 4
    baseline = preset("karras-me-4")
    assert baseline.solver == ("midpoint_euler",) * 4 and baseline.nfe == 7  # the step into 0 makes 1 call


def test_a_name_or_short_name_that_is_taken_is_refused(midpoint_euler):
    with pytest.raises(ValueError, match="clashes with 'dpmpp_2m'"):
        register(Solver("dpmpp_2m_again", midpoint_euler, 1, 2, "2m", "again"))
    with pytest.raises(
        PlanError, match=r"unknown solver 'nope' at step 1; choose from euler, .*midpoint_euler"
    ):
        Plan([2.0, 1.0], "nope")


def test_a_registered_rule_runs_through_the_command_line_and_names_itself_in_the_png(
    midpoint_euler, tmp_path
):
    weights = write_checkpoint(tmp_path / "weights", "single")
    out = tmp_path / "out"
    argv = [
        "--weights",
        str(weights),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--height",
        "64",
        "--width",
        "64",
    ]
    assert (
        main([*argv, "--steps", "2", "--solver", "midpoint_euler", "--prompt", "a cat", "--seed", "1"]) == 0
    )
    assert main([*argv, "--preset", "karras-me-2", "--prompt", "a dog", "--seed", "1"]) == 0
    cat, dog = out / "1-a-cat.png", out / "1-a-dog.png"
    assert read_replay(cat)[1].solver == ("midpoint_euler",) * 2
    assert "Sampler: Midpoint Euler, " in text_chunks(cat)["parameters"]
    assert "Plan: paper-2+solver=midpoint_euler" in text_chunks(cat)["parameters"]
    assert read_replay(dog)[1].nfe == 3
