"""`python -m solvers.search --weights` end to end on a tiny random-weight SD 1.5 checkpoint, 64 x 64 px on
the CPU in float32: the guided batched denoiser, the resumable teacher cache, torchrun sharding, the
cost after the VAE decode; and the plan it writes, run by run_sample.py and evaluation.generate as is
and replayed from the PNG.

One CPU thread throughout (torchrun's children get OMP_NUM_THREADS=1), so runs compare bitwise.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline.search
import run_sample
from evaluation import generate as evaluation_generate
from pipeline import PLAN_KEY
from schedule import DiscreteSchedule
from solvers import Plan, Searched
from solvers.presets import PAPER_FREEU
from solvers.search import baselines
from solvers.search.__main__ import main
from tests.checkpoints import write_checkpoint
from tests.helpers import one_thread, pixels, text_chunks

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a red cube", "a cat on a mat", "a castle at night"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(tiny checkpoint, prompt file with a blank line, the environment every run gets)."""
    root = tmp_path_factory.mktemp("inputs")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join([PROMPTS[0], "", *PROMPTS[1:]]) + "\n")
    env = {"XDG_CACHE_HOME": str(root / "xdg"), "HF_HUB_OFFLINE": "1"}
    return write_checkpoint(root, "single"), prompts, env


def search_args(inputs, cache: Path, out: Path, *extra: str) -> list[str]:
    weights, prompts, _ = inputs
    return [
        "--weights", str(weights), "--prompts", str(prompts), "--steps", "3", "--samples", "2",
        "--held-out", "1", "--grid", "6", "--teacher-substeps", "1", "--stages", "dp,grid", "--decoded",
        "--freeu-bit", "--compare", "solver",
        "--batch-size", "2", "--height", "64", "--width", "64", "--device", "cpu", "--cache", str(cache),
        "--out", str(out), *extra,
    ]  # fmt: skip


def run(inputs, command, argv) -> tuple[int, str, str]:
    """`command(argv)` in this process with the runs' environment: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        for name, value in inputs[2].items():
            patch.setenv(name, value)
        try:
            code = command(argv)
        except SystemExit as exited:  # argparse
            code = exited.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def searched(inputs, tmp_path_factory):
    """One search on the tiny model: (plan file, cache folder, stdout)."""
    root = tmp_path_factory.mktemp("searched")
    code, out, err = run(inputs, main, search_args(inputs, root / "cache", root / "plan.json"))
    assert code == 0, err
    return root / "plan.json", root / "cache", out


def test_the_search_states_its_cost_then_compares_on_held_out_samples(searched):
    _, _, out = searched
    lines = out.splitlines()
    assert lines[0] == (
        "python -m solvers.search: dpmpp_2m at 3 NFE on sd15-tiny-seed0-fp32: global cost, 6 candidate "
        "levels + 0, stages dp+grid, 2 search samples, 1 held out"
    )
    # teacher: 5 positive intervals x 1 step + the step into 0; dp on the 7-point grid, FreeU on and off
    # at every node, and a run of its plan; grid descent at most 8 passes x (6 moves + 3 bit flips) x 3
    # calls; scoring: the 2 stages' plans and every baseline, 3 calls each
    scoring = 2 * 3 + 3 * len(baselines("dpmpp_2m", 3, DiscreteSchedule.sd(), {}))
    assert lines[1] == (
        "cost in denoiser calls: teacher 6 x 3 samples (dpmpp_2m, 1 per interval), search 37 (dp) + at most "
        f"216 (refinement) x 2, scoring {scoring} x 1"
    )
    table = out[out.index("plan   ") : out.index("\ntime: ")].splitlines()
    labels = [line.split()[0] for line in table[1:] if line]
    assert labels[:3] == ["dp", "grid", "paper-3+solver=dpmpp_2m"] and "dmn-2m-3" in labels
    assert "karras-2m-3" in labels and "ays-2m-3" in labels


def test_the_plan_file_records_the_search_on_the_model(searched, inputs):
    plan_file, _, _ = searched
    plan = Plan.from_json(plan_file.read_text())
    assert plan.name == "searched-2m-3" and plan.nfe == 3 and plan.guidance == (7.5,) * plan.steps
    assert plan.discretization == Searched(
        N=plan.steps, solver="dpmpp_2m", nfe=3, cost="global", grid=6, samples=2, seed=0,
        stages=("dp", "grid"), teacher="dpmpp_2m", substeps=1, option="freeu", decoded=True,
        model="sd15-tiny-seed0-fp32",
    )  # fmt: skip
    assert all(setting in (None, PAPER_FREEU) for setting in plan.freeu)


def test_the_teacher_cache_holds_one_file_per_sample_and_a_rerun_reads_it(
    searched, inputs, tmp_path, monkeypatch
):
    plan_file, cache, _ = searched
    files = sorted(cache.iterdir())
    assert len(files) == 3 and all(f.suffix == ".safetensors" for f in files)
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}

    def no_solving(*args, **kwargs):
        raise AssertionError("the teacher was solved again instead of read from the cache")

    monkeypatch.setattr(pipeline.search, "solve_teacher", no_solving)
    code, _, err = run(inputs, main, search_args(inputs, cache, tmp_path / "again.json"))
    assert code == 0, err
    assert (tmp_path / "again.json").read_text() == plan_file.read_text()
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in cache.iterdir()} == before


def test_a_cache_file_of_another_trajectory_is_ignored_with_a_warning_and_solved_again(
    searched, inputs, tmp_path
):
    plan_file, cache, _ = searched
    copy = tmp_path / "cache"
    copy.mkdir()
    first, second = sorted(cache.iterdir())[:2]
    (copy / first.name).write_bytes(second.read_bytes())
    warning = f"ignoring the damaged teacher cache file {copy / first.name} (it holds another trajectory)"
    with pytest.warns(UserWarning, match=re.escape(warning)):
        code, _, err = run(inputs, main, search_args(inputs, copy, tmp_path / "plan.json"))
    assert code == 0, err
    assert (tmp_path / "plan.json").read_text() == plan_file.read_text()
    assert (copy / first.name).read_bytes() == first.read_bytes()  # solved again, the same trajectory


def test_the_plan_runs_in_run_sample_and_replays_to_the_same_pixels(searched, inputs, tmp_path):
    plan_file, _, _ = searched
    weights, _, _ = inputs
    size = ["--height", "64", "--width", "64", "--device", "cpu", "--weights", str(weights)]
    code, _, err = run(inputs, run_sample.main, ["--plan", str(plan_file), "--prompt", "a cat", "--seed", "7",
                                                 "--out", str(tmp_path / "a"), *size])  # fmt: skip
    assert code == 0, err
    (png,) = (tmp_path / "a").glob("*.png")
    assert Plan.from_json(text_chunks(png)[PLAN_KEY]) == Plan.from_json(plan_file.read_text())
    code, _, err = run(inputs, run_sample.main, ["--replay", str(png), "--out", str(tmp_path / "b"), *size])
    assert code == 0, err
    (again,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(again), pixels(png))


def test_a_mixed_rule_plan_with_eval_shifts_runs_in_run_sample_and_replays(searched, inputs, tmp_path):
    """What `--solver auto` and the shift stage write (a rule and an eval_shift per step) is a plain plan:
    run_sample.py runs it on real weights and --replay reproduces the pixels."""
    plan_file, _, _ = searched
    weights, _, _ = inputs
    plan = Plan.from_json(plan_file.read_text())
    rules, shifts = ["unipc_bh1_3", "dpmpp_2m", "euler"], [-0.125, 0.0625, 0.0]  # within SD's noise table
    mixed = plan.replace(solver=rules[: plan.steps], eval_shift=shifts[: plan.steps], discretization=None)
    (tmp_path / "mixed.json").write_text(mixed.to_json())
    size = ["--height", "64", "--width", "64", "--device", "cpu", "--weights", str(weights)]
    code, _, err = run(inputs, run_sample.main, ["--plan", str(tmp_path / "mixed.json"), "--prompt", "a cat",
                                                 "--out", str(tmp_path / "a"), *size])  # fmt: skip
    assert code == 0, err
    (png,) = (tmp_path / "a").glob("*.png")
    assert Plan.from_json(text_chunks(png)[PLAN_KEY]) == mixed
    code, _, err = run(inputs, run_sample.main, ["--replay", str(png), "--out", str(tmp_path / "b"), *size])
    assert code == 0, err
    (again,) = (tmp_path / "b").glob("*.png")
    assert np.array_equal(pixels(again), pixels(png))


def test_the_plan_runs_in_the_evaluation_generation(searched, inputs, tmp_path):
    plan_file, _, _ = searched
    weights, _, _ = inputs
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(json.dumps({"index": 0, "prompt": "a cat", "seed": 3, "reference": None}) + "\n")
    argv = ["--manifest", str(manifest), "--out", str(tmp_path / "run"), "--plan", str(plan_file),
            "--weights", str(weights), "--height", "64", "--width", "64", "--device", "cpu"]  # fmt: skip
    code, _, err = run(inputs, evaluation_generate.main, argv)
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert Plan.from_dict(record["plan"]) == Plan.from_json(plan_file.read_text())


def test_torchrun_shards_the_teacher_and_rank_0_finds_the_same_plan(inputs, tmp_path):
    """Batches of 1 row: rank 0 solves samples 0 and 2, rank 1 sample 1; rank 0 waits for it, then
    searches alone. One thread each, batch shapes as in the one-process run: the same cache bytes and
    the same plan."""
    single = tmp_path / "single"
    code, _, err = run(inputs, main, search_args(inputs, single, tmp_path / "one.json", "--batch-size", "1"))
    assert code == 0, err
    sharded = search_args(inputs, tmp_path / "sharded", tmp_path / "two.json", "--batch-size", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
               "solvers.search", *sharded]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **inputs[2], "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "rank 1 of 2: teachers done; rank 0 runs the search" in done.stdout
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    assert {f.name: f.read_bytes() for f in (tmp_path / "sharded").iterdir()} == {
        f.name: f.read_bytes() for f in single.iterdir()
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shape", "4"], "--shape goes with --denoiser; with --weights the size is --height and --width"),
        (["--prompts", os.devnull], "--prompts /dev/null holds no prompt; write one per line"),
        (["--height", "60"], "--height: 60 is not a positive multiple of 8"),
        (["--original-size", "512,512"], "SDXL's size conditioning; SD 1.x models take none"),
    ],
)
def test_bad_weights_settings_are_one_line_refusals(inputs, tmp_path, extra, message):
    argv = search_args(inputs, tmp_path / "cache", tmp_path / "plan.json")
    for flag in ("--prompts", "--height"):
        if flag in extra:
            del argv[argv.index(flag) : argv.index(flag) + 2]
    code, out, err = run(inputs, main, [*argv, *extra])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert message in err


def test_the_search_offers_no_quantize_flag_its_decoded_pixels_stay_float(inputs, tmp_path):
    argv = search_args(inputs, tmp_path / "cache", tmp_path / "plan.json")
    code, _, err = run(inputs, main, [*argv, "--quantize", "truncate"])
    assert code == 2 and "unrecognized arguments: --quantize truncate" in err


def test_the_empty_negative_conditioning_is_part_of_the_teacher_cache_identity(searched, inputs, tmp_path):
    _, cache, _ = searched
    copy = tmp_path / "cache"
    copy.mkdir()
    for file in cache.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    code, _, err = run(
        inputs, main, search_args(inputs, copy, tmp_path / "plan.json", "--empty-negative", "zeros")
    )
    assert code == 0, err
    added = {f.name for f in copy.iterdir()} - {f.name for f in cache.iterdir()}
    assert len(added) == 3  # the zero-embedding guidance is another denoiser: its own three teachers
