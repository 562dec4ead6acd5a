"""`python -m evaluation.generate` on a tiny random-weight SD 1.5 checkpoint: 6 manifest rows, 64 x 64 px,
the paper's 2-step plan, batches of 2, on the CPU in float32.

Bitwise comparisons need the same CPU thread count: torchrun starts each process with
OMP_NUM_THREADS=1, and float sums split over 2 threads round differently (pixels then differ by 1/255).
So every in-process run here uses one thread as well.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import run_sample
from evaluation.generate import RUN_FILE, Shard, main, shard_batches
from evaluation.prompts import Prompt, read_manifest
from pipeline import batches as batch_grid
from pipeline import read_replay
from pipeline.provenance import project_version
from tests.checkpoints import write_checkpoint
from tests.helpers import pixels, text_chunks

REPO = Path(__file__).resolve().parents[2]
ROWS = ["a red cube", "a blue ball on grass", "a cat on a mat", "two dogs", "a castle at night", "fruit"]
NAMES = [f"{i:05d}.png" for i in range(len(ROWS))]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The weights' sha256 cache in a temporary folder, for this process and the torchrun children."""
    caches = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(caches))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, env):
    """(tiny checkpoint, 6-row manifest whose seeds are not its indices)."""
    root = tmp_path_factory.mktemp("inputs")
    weights = write_checkpoint(root, "single")
    manifest = root / "rows.jsonl"
    records = [
        {"index": i, "prompt": p, "seed": 1000 + 17 * i, "reference": None} for i, p in enumerate(ROWS)
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return weights, manifest


def argv(inputs, out: Path, *extra: str) -> list[str]:
    weights, manifest = inputs
    return [
        "--manifest", str(manifest), "--out", str(out), "--weights", str(weights), "--steps", "2",
        "--batch-size", "2", "--height", "64", "--width", "64", "--device", "cpu", *extra,
    ]  # fmt: skip


def generate(*args: str) -> tuple[int, str, str]:
    """main() in this process on one CPU thread: (exit status, stdout, stderr)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    except SystemExit as exited:  # argparse
        code = exited.code
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def one_line_error(*args: str) -> str:
    code, out, err = generate(*args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    return err.rstrip("\n")


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory):
    """One process, no torchrun: the reference output folder (never modified; tests copy it)."""
    out = tmp_path_factory.mktemp("single") / "run"
    code, stdout, stderr = generate(*argv(inputs, out))
    assert code == 0, stderr
    assert stdout.startswith(f"made 6 images (00000.png ... 00005.png) in {out}/ in ")
    assert stdout.endswith("; 0 were already there\n")
    return out


@pytest.fixture
def run_copy(single, tmp_path):
    """A copy of the single-process folder to modify."""
    return Path(shutil.copytree(single, tmp_path / "run"))


def torchrun(inputs, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    return subprocess.run(
        [*command, "-m", "evaluation.generate", *argv(inputs, out, *extra)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- sharding --------------------------------------------------------------------------------------------


def test_two_process_torchrun_matches_one_process_resumes_and_refuses_other_settings(
    inputs, single, tmp_path
):
    out = tmp_path / "sharded"
    done = torchrun(inputs, out)
    assert done.returncode == 0, done.stderr
    # batches {0, 1}, {2, 3}, {4, 5}: rank 0 makes the first and the last, rank 1 the middle one
    lines = sorted(line.split(" in ")[0] for line in done.stdout.splitlines())
    assert lines == [
        "rank 0 of 2: made 4 images (00000.png ... 00005.png)",
        "rank 1 of 2: made 2 images (00002.png ... 00003.png)",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, RUN_FILE])
    for name in NAMES:
        assert np.array_equal(pixels(out / name), pixels(single / name)), name
        assert text_chunks(out / name) == text_chunks(single / name), name
    assert (out / RUN_FILE).read_text() == (single / RUN_FILE).read_text()

    # resume: one deleted image in a batch of each rank
    deleted = ["00001.png", "00002.png"]
    made = {name: (out / name).read_bytes() for name in deleted}
    for name in deleted:
        (out / name).unlink()
    before = snapshot(out)
    done = torchrun(inputs, out)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split(" in ")[0] for line in done.stdout.splitlines()) == [
        "rank 0 of 2: made 1 image (00001.png)",
        "rank 1 of 2: made 1 image (00002.png)",
    ]
    after = snapshot(out)
    assert set(after) == set(before) | set(deleted)
    assert {name: after[name] for name in before} == before  # same bytes and modification times
    assert {name: (out / name).read_bytes() for name in deleted} == made

    done = torchrun(inputs, out, "--guidance", "5.5")
    assert done.returncode != 0 and done.stdout == ""
    for rank in (0, 1):
        assert (
            f"python -m evaluation.generate (rank {rank} of 2): error: {out / RUN_FILE} belongs to a run "
            "with other settings (guidance 7.5 -> 5.5); use another --out, or pass --force to replace "
            "that run\n"
        ) in done.stderr
    assert snapshot(out) == after


def test_batches_go_round_robin_and_every_row_to_exactly_one_rank():
    rows = [Prompt(i, f"p{i}", i, None) for i in range(11)]
    batches = batch_grid(rows, 3)
    assert [[r.index for _, r in b.jobs] for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    assert [r.index for r in batches[-1].rows] == [9, 10, 10]  # padded with a copy, as every batch
    for world_size in (1, 2, 3, 5):
        shares = [shard_batches(batches, Shard(rank, world_size)) for rank in range(world_size)]
        assert sorted(r.index for share in shares for batch in share for _, r in batch.jobs) == list(
            range(11)
        )
    assert shard_batches(batches, Shard(1, 2)) == [batches[1], batches[3]]


@pytest.mark.parametrize(
    ("environ", "shard"),
    [
        ({}, Shard(0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, Shard(3, 4, 1)),
        ({"RANK": "1", "WORLD_SIZE": "2"}, Shard(1, 2, 1)),  # one node: the local rank is the rank
    ],
)
def test_shard_comes_from_torchrun_environment(environ, shard):
    assert Shard.from_env(environ) == shard


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "environment variable RANK='x' is not an integer"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK is not set; launch with torchrun"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2, LOCAL_RANK=2 is not a valid launch"),
    ],
)
def test_a_broken_launch_environment_is_refused(environ, message):
    with pytest.raises(ValueError, match=message):
        Shard.from_env(environ)


# -- images and run.json ---------------------------------------------------------------------------------


def test_each_png_carries_its_rows_seed_prompt_and_batch_slot(inputs, single):
    rows = read_manifest(inputs[1])
    for position, row in enumerate(rows):
        settings, plan = read_replay(single / f"{row.index:05d}.png")
        assert (settings.prompt, settings.seed) == (row.prompt, row.seed)
        assert (settings.batch, settings.batch_index) == (2, position % 2)
        assert plan.name == "paper-2" and plan.guidance == (7.5, 7.5)


def test_an_image_replays_bitwise_with_run_sample(single, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_sample.main(["--replay", str(single / "00003.png"), "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    (replayed,) = tmp_path.iterdir()
    assert np.array_equal(pixels(replayed), pixels(single / "00003.png"))


def test_run_json_records_the_settings(inputs, single):
    weights, manifest = inputs
    record = json.loads((single / RUN_FILE).read_text())
    plan = read_replay(single / "00000.png")[1]
    assert record == {
        "format": 1,
        "method": "paper-2",
        "preset": "paper-2",
        "nfe": 2,
        "guidance": 7.5,
        "plan": plan.to_dict(),
        "weights": str(weights),
        "weights_sha256": record["weights_sha256"],
        "model": "sd15-tiny-seed0-fp32",
        "manifest": str(manifest),
        "manifest_rows": 6,
        "manifest_sha256": record["manifest_sha256"],
        "negative_prompt": "",
        "height": 64,
        "width": 64,
        "dtype": "float32",
        "vae_dtype": "float32",
        "vae": None,
        "vae_sha256": None,
        "size_conditioning": None,
        "empty_negative": "encode",
        "quantization": "round",
        "loras": None,
        "unet_sha256": None,
        "unet": None,
        "sampler": "DPM++ 1S",
        "version": project_version(),
    }
    assert record["weights_sha256"] == read_replay(single / "00000.png")[0].weights_sha256


def test_a_run_json_written_before_sdxl_still_matches_its_run(inputs, run_copy):
    """Older records lack the settings added with SDXL: their absence means the defaults."""
    path = run_copy / RUN_FILE
    record = json.loads(path.read_text())
    added = ("vae", "vae_dtype", "vae_sha256", "size_conditioning", "empty_negative", "quantization")
    path.write_text(json.dumps({k: v for k, v in record.items() if k not in added}))
    code, stdout, _ = generate(*argv(inputs, run_copy))
    assert code == 0 and stdout.endswith("; 6 were already there\n")


def test_truncated_pixels_are_a_setting_of_the_run(inputs, run_copy, tmp_path):
    error = one_line_error(*argv(inputs, run_copy, "--quantize", "truncate"))
    assert 'quantization "round" -> "truncate"' in error
    out = tmp_path / "truncated"
    assert generate(*argv(inputs, out, "--quantize", "truncate", "--limit", "2"))[0] == 0
    assert json.loads((out / RUN_FILE).read_text())["quantization"] == "truncate"
    assert read_replay(out / "00000.png")[0].quantization == "truncate"


def test_limit_makes_the_first_rows_and_a_later_run_the_rest(inputs, single, tmp_path):
    out = tmp_path / "run"
    assert generate(*argv(inputs, out, "--limit", "3"))[0] == 0
    assert sorted(p.name for p in out.glob("*.png")) == NAMES[:3]
    code, stdout, _ = generate(*argv(inputs, out))
    assert code == 0 and stdout.startswith("made 3 images") and stdout.endswith("; 3 were already there\n")
    for name in NAMES:
        assert np.array_equal(pixels(out / name), pixels(single / name)), name


def test_other_settings_into_the_same_folder_are_refused(inputs, run_copy):
    before = snapshot(run_copy)
    assert one_line_error(*argv(inputs, run_copy, "--guidance", "5.5")) == (
        f"python -m evaluation.generate: error: {run_copy / RUN_FILE} belongs to a run with other settings "
        "(guidance 7.5 -> 5.5); use another --out, or pass --force to replace that run"
    )
    error = one_line_error(*argv(inputs, run_copy, "--steps", "3", "--dtype", "bfloat16"))
    assert (
        '(plan paper-2 -> paper-3; dtype "float32" -> "bfloat16"; vae_dtype "float32" -> "bfloat16")' in error
    )
    assert snapshot(run_copy) == before


def test_force_replaces_the_run_and_never_leaves_it_mixed(inputs, single, run_copy):
    """--force with --limit 2 remakes two images with guidance 5.5; a plain run then refuses the other
    four (made with 7.5) rather than skip them, and --force remakes them."""
    code, _, err = generate(*argv(inputs, run_copy, "--guidance", "5.5", "--force", "--limit", "2"))
    assert code == 0, err
    assert json.loads((run_copy / RUN_FILE).read_text())["guidance"] == 5.5
    assert [read_replay(run_copy / name)[1].guidance[0] for name in NAMES] == [5.5, 5.5, 7.5, 7.5, 7.5, 7.5]
    assert (run_copy / "00002.png").read_bytes() == (single / "00002.png").read_bytes()

    assert one_line_error(*argv(inputs, run_copy, "--guidance", "5.5")) == (
        f"python -m evaluation.generate: error: {run_copy / '00002.png'} was made with other settings "
        "(guidance 7.5 -> 5.5); pass --force to remake it, or use another --out"
    )
    code, out, err = generate(*argv(inputs, run_copy, "--guidance", "5.5", "--force"))
    assert code == 0 and out.startswith("made 4 images"), err
    assert {read_replay(run_copy / name)[1].guidance[0] for name in NAMES} == {5.5}
    assert sorted(p.name for p in run_copy.iterdir()) == sorted([*NAMES, RUN_FILE])


# -- one-line refusals, before any weights are loaded ----------------------------------------------------


def test_missing_manifest_exits_with_status_2_and_one_line(tmp_path):
    args = ["--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "evaluation.generate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"python -m evaluation.generate: error: cannot read the manifest {tmp_path / 'none.jsonl'}: "
        "No such file or directory; write one with python -m evaluation.prompts\n"
    )


def test_bad_manifest_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"index": 0, "prompt": "a cat", "seed": 1, "reference": null}\n{"index": 1}\n')
    args = ["--manifest", str(manifest), "--out", str(tmp_path / "out"), "--weights", "missing.safetensors"]
    assert one_line_error(*args) == (
        f"python -m evaluation.generate: error: {manifest} line 2 is not a manifest record "
        "(no 'prompt', 'seed', 'reference'); rewrite it"
    )


def test_unwritable_output_folder(inputs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where a folder should be: refused even for root, unlike chmod
    args = argv(inputs, blocker / "out", "--weights", str(tmp_path / "missing.safetensors"))
    assert one_line_error(*args) == (
        f"python -m evaluation.generate: error: cannot write to the output folder {blocker / 'out'}: "
        "Not a directory; give --out a writable folder"
    )


def test_help_lists_every_flag():
    code, text, _ = generate("--help")
    assert code == 0
    for flag in (
        "--manifest", "--out", "--limit", "--force", "--steps", "--preset", "--plan", "--guidance",
        "--negative-prompt", "--batch-size", "--height", "--width", "--weights", "--device", "--dtype",
        "--compile", "--debug",
    ):  # fmt: skip
        assert flag in text


def test_the_bar_counts_the_steps_of_every_batch_and_ends_at_100_percent(inputs, tmp_path):
    """Per step on a CPU (no CUDA graph): 3 rows in batches of 2 are 2 batches x 2 steps."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:  # tqdm draws only on a terminal
            return True

    err = Terminal()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv(inputs, tmp_path / "run", "--limit", "3")) == 0
    assert "3 images, 2 batches: 100%" in err.getvalue() and " 4/4 [" in err.getvalue()
