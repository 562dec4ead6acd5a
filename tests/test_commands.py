"""Every command of the project refuses bad input the same way: one line `{prog}: error: ...` on
stderr, exit status 2, nothing on stdout; Ctrl-C is one line and status 130."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parents[1]
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


def test_debug_shows_the_traceback_instead():
    def broken(args):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        cli.run("prog", broken, argparse.Namespace(debug=True))


def test_an_os_error_reads_as_file_and_reason():
    assert cli.one_line(FileNotFoundError(2, "No such file or directory", "x.png")) == (
        "x.png: No such file or directory"
    )
    assert cli.one_line(ValueError("two\nlines")) == "two lines"
