"""Every command of the project refuses bad input the same way: one line `{prog}: error: ...` on
stderr, exit status 2, nothing on stdout; Ctrl-C is one line and status 130."""

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import pipeline
import run_sample
import safeio
from evaluation import generate as evaluation_generate
from evaluation import metrics
from evaluation.generate import build_parser as generate_parser
from pipeline import read_replay
from schedule.discretizations import knob_flags
from solvers import SOLVERS, preset
from solvers.search.__main__ import build_parser as search_parser
from tests.helpers import run_main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {  # the command -> how it is started, and how it names itself
    "run_sample.py": ([sys.executable, "run_sample.py"], "run_sample.py"),
    "evaluation.generate": ([sys.executable, "-m", "evaluation.generate"], "python -m evaluation.generate"),
    "evaluation.metrics": (
        [sys.executable, "-m", "evaluation.metrics", "fid"],
        "python -m evaluation.metrics fid",
    ),
    "evaluation.prompts": (
        [sys.executable, "-m", "evaluation.prompts", "laion"],
        "python -m evaluation.prompts laion",
    ),
    "evaluation.table": ([sys.executable, "-m", "evaluation.table"], "python -m evaluation.table"),
    "solvers.analyze": ([sys.executable, "-m", "solvers.analyze"], "python -m solvers.analyze"),
    "solvers.search": ([sys.executable, "-m", "solvers.search", "--steps", "5"], "python -m solvers.search"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_unknown_flag_is_one_line_with_status_2(name):
    command, prog = COMMANDS[name]
    done = subprocess.run([*command, "--no-such-flag"], cwd=ROOT, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"{prog}: error: ") and done.stderr.endswith(" (see --help)\n")
    assert done.stderr.count("\n") == 1


def test_a_refusal_of_the_work_itself_is_the_same_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "evaluation.table", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"python -m evaluation.table: error: {tmp_path} has no run.json; pass folders written by "
        "python -m evaluation.generate --out DIR\n"
    )


def test_ctrl_c_is_one_line_with_status_130(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert cli.run("prog", interrupted, argparse.Namespace(debug=False)) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"


def test_debug_shows_the_traceback_instead(tmp_path):
    def broken(args):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        cli.run("prog", broken, argparse.Namespace(debug=True))
    missing = str(tmp_path / "missing.safetensors")  # a command's --debug reaches cli.run
    with pytest.raises(safeio.InputError):
        run_sample.main(["--weights", missing, "--prompt", "a cat", "--out", str(tmp_path), "--debug"])


def test_an_os_error_reads_as_file_and_reason():
    assert cli.one_line(FileNotFoundError(2, "No such file or directory", "x.png")) == (
        "x.png: No such file or directory"
    )
    assert cli.one_line(ValueError("two\nlines")) == "two lines"


# -- bad flag values: one exact line, before anything is read or written ------------------------------


DIGITS = "1" * 5000  # int() refuses it: Exceeds the limit (4300 digits)
RUN, GENERATE = "run_sample.py", "python -m evaluation.generate"
PRD, FID = "python -m evaluation.metrics prd", "python -m evaluation.metrics fid"
BAD_FLAGS = [  # (command, flags, the whole line after "{prog}: error: ")
    (RUN, ["--height", "100"], "argument --height: 100 is not a positive multiple of 8 (the VAE's "
     "downsampling factor); use e.g. 96 or 104 (see --help)"),
    (RUN, ["--width", "4"], "argument --width: 4 is not a positive multiple of 8 (the VAE's "
     "downsampling factor); use e.g. 8 (see --help)"),
    (RUN, ["--steps", "0"], "argument --steps: must be 1 or more, got 0 (see --help)"),
    (RUN, ["--steps", DIGITS], f"argument --steps: '{'1' * 36}... is not an integer (see --help)"),
    (RUN, ["--seed", DIGITS], f"argument --seed: '{'1' * 36}... is not an integer (see --help)"),
    # every solver of the table (tests/solvers/test_solver_table.py pins its contents), in its order
    (RUN, ["--solver", "dpmpp_9m"], "argument --solver: unknown solver 'dpmpp_9m'; did you mean "
     "dpmpp_3m or dpmpp_2m or dpmpp_2s? choose from euler, heun, dpmpp_1s, dpmpp_2s, dpmpp_2m, dpmpp_3m, "
     f"{', '.join(list(SOLVERS)[6:])} (see --help)"),
    (RUN, ["--discretization", "cosine"], "argument --discretization: unknown discretization "
     "'cosine'; choose from paper, karras, exponential, linspace, ays, gits, beta, simple, sgm_uniform, "
     "kl_optimal, polyexponential, linear_quadratic, diffusers, lcm, timesteps (see --help)"),
    (RUN, ["--spacing", "middle"], "argument --spacing: unknown spacing 'middle'; choose from "
     "linspace, leading, trailing (see --help)"),
    (RUN, ["--dtype", "float8"], "argument --dtype: unknown dtype 'float8'; did you mean float or "
     "float32 or float16? choose from float32, float16, bfloat16 (see --help)"),
    (RUN, ["--final", "blend"], "argument --final: unknown final policy 'blend'; choose from keep, "
     "denoise (see --help)"),
    (RUN, ["--guidance", "1e999"], "argument --guidance: must be a finite number, got inf "
     "(see --help)"),
    (RUN, ["--steps", "5", "--preset", "karras-2m-20"], "give only one of --steps, --preset and "
     "--plan (or --preset paper --steps N)"),
    (RUN, ["--steps", "1001"], "steps 1001 is over the maximum of 1000 steps, the noise levels of "
     "SD's DDPM table; pass --allow-large to lift the limits (see the README)"),
    (RUN, ["--batch-size", "65"], "--batch-size 65 is over the maximum of 64 images per U-Net batch; "
     "pass --allow-large to lift the limits (see the README)"),
    (RUN, ["--num-images", "1000000"], "images 1000000 is over the maximum of 100000 images per run "
     "(prompts x --num-images); pass --allow-large to lift the limits (see the README)"),
    (RUN, ["--seed", str(2**63 - 1), "--num-images", "2"], f"--seed {2**63 - 1} + 1 images runs past "
     "2^63 - 1; use a smaller seed"),
    (RUN, ["--device", "meta"], "--device meta cannot run the models; use cpu, cuda, mps"),
    (RUN, ["--plan", "missing.json"], "cannot read plan file missing.json: No such file or "
     "directory"),
    (GENERATE, ["--limit", "0"], "argument --limit: must be 1 or more, got 0 (see --help)"),
    (GENERATE, ["--height", "100"], "argument --height: 100 is not a positive multiple of 8 (the VAE's "
     "downsampling factor); use e.g. 96 or 104 (see --help)"),
    (GENERATE, ["--steps", "5", "--preset", "paper-5"], "give only one of --steps, --preset and --plan "
     "(or --preset paper --steps N)"),
    (GENERATE, ["--steps", "5000"], "steps 5000 is over the maximum of 1000 steps, the noise levels of SD's "
     "DDPM table; pass --allow-large to lift the limits (see the README)"),
    (PRD, ["prd", "--clusters", "0"], "argument --clusters: must be 1 or more, got 0 (see --help)"),
    (PRD, ["prd", "--runs", "0"], "argument --runs: must be 1 or more, got 0 (see --help)"),
    (PRD, ["prd", "--angles", "2"], "argument --angles: the PRD curve needs at least 3 angles, got 2 "
     "(see --help)"),
    (FID, ["fid", "--batch-size", "0"], "argument --batch-size: must be 1 or more, got 0 (see --help)"),
    (FID, ["fid", "--device", "meta"], "argument --device: cannot run the models; use cpu, cuda, mps "
     "(see --help)"),
]  # fmt: skip


@pytest.mark.parametrize(("prog", "flags", "message"), BAD_FLAGS)
def test_a_bad_flag_value_is_one_exact_line_before_anything_is_written(
    tmp_path, capsys, prog, flags, message
):
    out = tmp_path / "out"
    if prog == GENERATE:
        manifest = tmp_path / "m.jsonl"
        manifest.write_text('{"index": 0, "prompt": "a cat", "seed": 0, "reference": null}\n')
        main, argv = (
            evaluation_generate.main,
            ["--manifest", str(manifest), "--out", str(out)],
        )
    elif prog in (PRD, FID):
        main, argv = metrics.main, ["--generated", str(tmp_path), "--reference", str(tmp_path)]
    else:
        main, argv = run_sample.main, ["--prompt", "a cat", "--out", str(out)]
    assert run_main(main, capsys, *flags, *argv) == (2, "", f"{prog}: error: {message}\n")
    assert not out.exists() or not any(out.iterdir())


# -- names, spellings and help as people read them -------------------------------------------------------


def _refusal(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--solver", "dpmpp2m"], "unknown solver 'dpmpp2m'; did you mean dpmpp_2m or "),
        (["--solver", "DPM++_2M"], "unknown solver 'DPM++_2M'; did you mean 'DPM++ 2M' or "),
        (["--discretization", "karas"], "unknown discretization 'karas'; did you mean karras? choose from "),
        (["--rhoo", "3"], "unrecognized arguments: --rhoo 3; did you mean --rho? (see --help)"),
        (["--dtype", "flaot16"], "unknown dtype 'flaot16'; did you mean float16 or "),
    ],
)
def test_a_misspelt_name_is_answered_with_the_closest_ones(argv, said, capsys):
    assert said in _refusal(run_sample.build_parser(), argv, capsys)


def test_a_misspelt_preset_is_answered_with_the_closest_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'karas-2m-20'; did you mean karras-2m-20 or "):
        preset("karas-2m-20")


def test_a1111_solver_names_and_common_dtype_spellings_are_accepted():
    """The solver as the PNG's parameters line names it (A1111's), in any case; fp16 and the like."""
    for parser in (run_sample.build_parser(), search_parser()):
        assert parser.parse_args(["--steps", "5", "--solver", "DPM++ 2M"]).solver == "dpmpp_2m"
        assert parser.parse_args(["--steps", "5", "--solver", "euler a"]).solver == "euler_a"
    args = run_sample.build_parser().parse_args(["--dtype", "fp16", "--vae-dtype", "BF16"])
    assert (args.dtype, args.vae_dtype) == ("float16", "bfloat16")
    for spelling, dtype in [("half", "float16"), ("fp32", "float32"), ("float", "float32")]:
        assert run_sample.build_parser().parse_args(["--dtype", spelling]).dtype == dtype


def test_help_wraps_only_between_names():
    """A line ends at a space or after the "|" between alternatives, never inside a name."""
    text = "a named plan: paper-5, paper-xl-8, {karras|linear_quadratic|polyexponential}-{2m|ipndm_v}-N"
    for width in (8, 20, 33):
        lines = cli.wrap(text, width)
        assert " ".join(lines).replace("| ", "|") == text
        assert all(len(line) <= width or (" " not in line and "|" not in line[:-1]) for line in lines)


def test_help_names_every_knob_default_and_the_family_default_of_steps():
    helps = {
        parser: {a.dest: a.help for a in parser._actions}
        for parser in (run_sample.build_parser(), generate_parser())
    }
    for actions in helps.values():
        for flag in (*knob_flags(), "freeu_version", "steps", "solver", "guidance", "final"):
            assert "default" in actions[flag], flag
        assert "6 for SDXL" in actions["steps"]
    assert "reference" in {a.dest: a.help for a in generate_parser()._actions}["manifest"]


def test_counts_and_file_spans_read_as_people_count():
    assert (cli.count(1, "image"), cli.count(2, "image")) == ("1 image", "2 images")
    assert cli.count(1, "trajectory", "trajectories") == "1 trajectory"
    assert cli.count(0, "trajectory", "trajectories") == "0 trajectories"
    assert cli.span(["1-a.png"]) == "1-a.png"
    assert cli.span(["1-a.png", "2-a.png", "3-a.png"]) == "1-a.png ... 3-a.png"


def test_the_replay_note_shows_whole_values():
    png = next((ROOT / "tests" / "fixtures" / "replay").glob("*.png"))
    stored = read_replay(png)[0]
    now = dataclasses.replace(stored, torch_version="2.14.1+cu130", device="cuda")
    note = pipeline.replay_differences(stored, now)
    assert f"device cpu -> cuda, torch_version {stored.torch_version} -> 2.14.1+cu130" in note
