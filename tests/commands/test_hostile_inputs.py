"""Hostile and broken inputs (issues 12 and 23), one table per input kind: every row is refused with exit
status 2 (or the library's own error), one line that names the file and the field, no traceback, and
nothing written. Then the resource bounds, the caches, the temporary files, and signals and faults;
then (issue 23) the schedule search's flags, cache and output, files that are not regular files, text
that is not valid Unicode, writes over existing files and planted links, and bounds that arrive by
other ways than a flag.

Everything here is refused before any sampling (the tiny checkpoints of tests/checkpoints.py are
read for their headers and configs only), except the two interrupted runs: one 64 px image each."""

import errno
import json
import os
import pickle
import re
import shutil
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import cli
import pipeline
import run_sample
import safeio
import weights
from evaluation import fid, images, metrics, prompts, runs, table
from evaluation import generate as evaluation_generate
from pipeline import png_metadata, save_png
from pipeline.provenance import Settings
from solvers import Plan, PlanError, preset
from tests.checkpoints import write_checkpoint
from tests.helpers import refused, run_main, snapshot
from weights.checkpoint import read_header, read_tensors

DEEP = "[" * 200_000  # RecursionError in Python's decoder
DIGITS = "1" * 5000  # ValueError: Exceeds the limit (4300 digits)
SETTINGS = Settings(
    prompt="a cat", negative_prompt="", seed=1, width=64, height=64, weights="w.safetensors",
    weights_sha256="0" * 64, model="w", dtype="float32", device="cpu", compile=False, batch=1, batch_index=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-checkpoints")
    return {layout: write_checkpoint(root / layout, layout=layout) for layout in ("single", "diffusers")}


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("hostile-sdxl"), layout="diffusers", kind="sdxl")


def one_line(capsys, main, *argv: str, status: int = 2) -> str:
    code, out, err = run_main(main, capsys, *argv)
    assert code == status, out + err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- 1. PNG metadata replayed: checked as the flags are -----------------------------------------------


def replay_png(folder: Path, settings: dict | None = None, plan: dict | None = None) -> Path:
    metadata = png_metadata(preset("paper-5"), SETTINGS)
    if settings is not None:
        metadata[pipeline.SETTINGS_KEY] = json.dumps(
            {**json.loads(metadata[pipeline.SETTINGS_KEY]), **settings}
        )
    if plan is not None:
        metadata[pipeline.PLAN_KEY] = json.dumps(plan)
    folder.mkdir(exist_ok=True)
    return save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), folder, "replay", metadata)


REPLAYED_SETTINGS = [
    ({"batch": 2, "batch_index": 5}, "batch_index 5 is not a row of a batch of 2"),
    ({"batch": -4}, "batch is wrong: must be 1 or more, got -4"),
    ({"batch": 0}, "batch is wrong: must be 1 or more, got 0"),
    ({"batch_index": -1}, "batch_index is wrong: must be 0 or more, got -1"),
    ({"seed": -5}, "seed is wrong: must be an integer in [0, 2^63), got -5"),
    ({"seed": 2**63}, "seed is wrong: must be an integer in [0, 2^63)"),
    ({"width": 100}, "width is wrong: 100 is not a positive multiple of 8"),
    ({"height": 0}, "height is wrong: 0 is not a positive multiple of 8"),
    ({"width": "64"}, "lack a valid 'width'"),
    ({"weights": " "}, "weights is wrong: it is empty"),
    ({"dtype": "float8"}, "dtype is wrong"),
    ({"seed": True}, "lack a valid 'seed'"),
]


@pytest.mark.parametrize(("change", "message"), REPLAYED_SETTINGS)
def test_replayed_settings_are_checked_like_their_flags(tmp_path, capsys, change, message):
    png = replay_png(tmp_path / "in", change)
    error = one_line(capsys, run_sample.main, "--replay", str(png), "--out", str(tmp_path / "out"))
    assert f"{png} cannot be replayed: the settings" in error and message in error
    assert files_in(tmp_path / "out") == []


def test_replayed_json_that_is_deep_or_huge_is_one_line(tmp_path, capsys):
    for text, reason in ((DEEP, "nested too deeply"), (DIGITS, "too many digits")):
        metadata = png_metadata(preset("paper-5"), SETTINGS) | {pipeline.PLAN_KEY: text}
        png = save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path, "deep", metadata)
        error = one_line(capsys, run_sample.main, "--replay", str(png), "--out", str(tmp_path / "out"))
        assert f"{png} cannot be replayed: the plan is not valid JSON" in error and reason in error


def test_a_replayed_batch_or_plan_over_the_limits_is_refused_before_loading(tmp_path, capsys):
    png = replay_png(tmp_path / "in", {"batch": 10**6, "batch_index": 0})
    error = one_line(capsys, run_sample.main, "--replay", str(png), "--out", str(tmp_path / "out"))
    assert error.endswith(
        f"the settings of {png}: --batch-size 1000000 is over the maximum of 64 images per U-Net batch; "
        "pass --allow-large to lift the limits (see the README)"
    )
    long = Plan(np.linspace(14.6, 0.03, 1002), "dpmpp_2m", name="long").to_dict()
    png = replay_png(tmp_path / "in2", plan=long)
    error = one_line(capsys, run_sample.main, "--replay", str(png), "--out", str(tmp_path / "out"))
    assert f"the plan of {png}: steps 1001 is over the maximum of 1000" in error
    assert files_in(tmp_path / "out") == []


def huge_png(path: Path, side: int = 100_000) -> Path:
    """A valid 1 x 1 PNG whose header then claims side x side pixels (CRC fixed)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_pngs_declaring_huge_dimensions_are_one_line_in_replay_init_image_and_metrics(tmp_path, capsys):
    png = huge_png(tmp_path / "bomb.png")
    error = one_line(capsys, run_sample.main, "--replay", str(png), "--out", str(tmp_path / "out"))
    assert f"cannot read {png} as a PNG" in error and "decompression bomb" in error
    with pytest.raises(ValueError, match=f"cannot read init_image {png} as an image: .*decompression bomb"):
        pipeline.read_image(png)
    with pytest.raises(ValueError, match=f"cannot read the image {png}: .*decompression bomb"):
        images.load_rgb(png)


# -- 2. flags: bounds and misleading one-liners --------------------------------------------------------


def test_huge_sizes_are_refused_after_the_header_and_allow_large_lifts_the_limits(
    checkpoints, tmp_path, capsys
):
    base = ["--weights", str(checkpoints["single"]), "--prompt", "a cat", "--out", str(tmp_path / "out")]
    error = one_line(capsys, run_sample.main, *base, "--width", "100000", "--height", "64")
    assert error.endswith("--width 100000 is over the maximum of 2048 pixels per side; pass --allow-large to "
                          "lift the limits (see the README)")  # fmt: skip
    code, out, _ = run_main(run_sample.main, capsys, "--steps", "1001", "--allow-large", "--print-plan")
    assert code == 0 and '"name": "paper-1001"' in out
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("content", [b"not safetensors at all", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a"'])
def test_clip_weights_that_are_not_safetensors_or_truncated_name_the_file(tmp_path, capsys, content):
    weights_file = tmp_path / "clip.safetensors"
    weights_file.write_bytes(content)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "00000.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"index": 0, "prompt": "a cat", "seed": 0, "reference": null}\n')
    argv = ["clip", "--images", tmp_path / "images", "--manifest", manifest, "--weights", weights_file]
    error = one_line(capsys, metrics.main, *map(str, argv))
    assert f"{weights_file} is not a valid safetensors file" in error


# -- 3. checkpoints and their configs ------------------------------------------------------------------


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


FOLDER_FILES = [
    ("vae/config.json", {"scaling_factor": "abc"}, "config.json: scaling_factor must be a number, got 'abc'"),
    ("vae/config.json", {"scaling_factor": -1}, "scaling_factor must be > 0, got -1"),
    ("vae/config.json", {"scaling_factor": 1e308}, "scaling_factor must be in [0.01, 10] (SD 1.x uses"),
    ("vae/config.json", {"scaling_factor": 1e-9}, "scaling_factor must be in [0.01, 10]"),
    ("text_encoder/config.json", {"layer_norm_eps": "x"}, "layer_norm_eps must be a number, got 'x'"),
    ("text_encoder/config.json", {"num_attention_heads": 0}, "num_attention_heads must be an integer in [1,"),
    ("text_encoder/config.json", {"hidden_act": "swish"}, "hidden_act must be one of"),
    ("unet/config.json", {"num_attention_heads": 0}, "num_attention_heads must be an integer in [1, 1024]"),
    ("unet/config.json", {"attention_head_dim": "x"}, "attention_head_dim must be an integer, got 'x'"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 1e9}, "num_train_timesteps must be an"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 5}, "num_train_timesteps must be an integer"),
    ("scheduler/scheduler_config.json", {"beta_start": "a"}, "beta_start must be a number, got 'a'"),
    ("scheduler/scheduler_config.json", {"beta_end": 2.0}, "must satisfy 0 < beta_start < beta_end < 1"),
]  # fmt: skip
FOLDER_TEXTS = [
    ("unet/config.json", DEEP, "unet/config.json is not valid JSON (nested too deeply); re-download it"),
    ("vae/config.json", '{"scaling_factor": ' + DIGITS + "}", "integer with too many digits"),
    ("tokenizer/vocab.json", DEEP, "tokenizer/vocab.json is not valid JSON (nested too deeply)"),
    ("tokenizer/vocab.json", "[1, 2]", "is not a vocabulary (an object of token: id >= 0)"),
    ("tokenizer/merges.txt", "#version: 0.2\na b c\n", "merges.txt: merge 1 is not two tokens"),
    ("text_encoder/config.json", "\xff", "text_encoder/config.json is not valid JSON"),
]


@pytest.fixture
def folder(checkpoints, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(checkpoints["diffusers"], copy)
    return copy


@pytest.mark.parametrize(("name", "change", "message"), FOLDER_FILES)
def test_config_values_are_checked_naming_the_file_and_field(folder, name, change, message):
    edit_json(folder / name, **change)
    assert message in refused(folder, ".")


@pytest.mark.parametrize(("name", "text", "message"), FOLDER_TEXTS)
def test_malformed_config_and_tokenizer_files_are_one_line(folder, name, text, message):
    (folder / name).write_text(text, encoding="latin-1" if text == "\xff" else "utf-8")
    assert message in refused(folder, ".")


TOKENIZERS = [
    ("tokenizer", lambda vocab: vocab | {"zz": 49408}, "tokenizer/vocab.json: it has token ids up to 49408, "
     "but the text encoder embeds only ids below 49408"),
    ("tokenizer_2", lambda vocab: vocab | {"zz": 10**6},
     "tokenizer_2/vocab.json: it has token ids up to 1000000"),
    ("tokenizer", lambda vocab: {k: v for k, v in vocab.items() if k != "<|endoftext|>"},
     "tokenizer/vocab.json is not a CLIP vocabulary (the vocabulary has no <|endoftext|> entry"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "change", "message"), TOKENIZERS)
def test_tokenizer_files_must_fit_their_text_encoder(
    checkpoints, sdxl_folder, tmp_path, name, change, message
):
    copy = tmp_path / "model"
    shutil.copytree(sdxl_folder if name == "tokenizer_2" else checkpoints["diffusers"], copy)
    vocab = copy / name / "vocab.json"
    vocab.write_text(json.dumps(change(json.loads(vocab.read_text()))))
    assert message in refused(copy, ".")


def rewrite(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def raw_safetensors(path: Path, header: str, data: bytes = b"") -> Path:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


OUT_BIAS = "model.diffusion_model.out.2.bias"
SINGLE_FILES = [
    ("alphas_cumprod 5", lambda t: t.update(alphas_cumprod=torch.linspace(0.99, 0.1, 5)),
     "its alphas_cumprod is float32 of shape [5], not the 1000 floats of SD's training table"),
    ("int32 weight", lambda t: t.update({OUT_BIAS: torch.zeros(4, dtype=torch.int32)}),
     f"{OUT_BIAS} is stored as int32, but the SD 1.x U-Net's weights are floating point"),
]  # fmt: skip
HEADERS = [
    (DEEP, "its header is not valid JSON (nested too deeply)"),
    ('{"__metadata__": ' + "[" * 99 + "]" * 99 + "}", "header is not valid JSON (nested more than 32"),
    ('{"__metadata__": {"format": 1}}', "__metadata__ is not an object of strings"),
    ('{"a": {"dtype": "F32", "shape": [' + DIGITS + '], "data_offsets": [0, 4]}}', "too many digits"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "change", "message"), SINGLE_FILES)
def test_checkpoint_values_are_checked_before_sampling(checkpoints, tmp_path, name, change, message):
    path = tmp_path / "model.safetensors"
    shutil.copy(checkpoints["single"], path)
    rewrite(path, change)
    assert message in refused(path, ".")


@pytest.mark.parametrize(("header", "message"), HEADERS)
def test_malformed_safetensors_headers_are_one_line(tmp_path, header, message):
    path = raw_safetensors(tmp_path / "bad.safetensors", header)
    assert message in refused(path, ".")


def test_a_weights_file_changed_after_its_header_was_read_is_refused(checkpoints, tmp_path):
    path = tmp_path / "model.safetensors"
    shutil.copy(checkpoints["single"], path)
    header = read_header(path)
    os.utime(path, ns=(time.time_ns(), header.stamp[1] + 10**9))  # rewritten in place: mtime moves
    with pytest.raises(weights.WeightsError, match=f"{path} changed while it was being loaded"):
        next(read_tensors(path, list(header.tensors.items())[:1], stamp=header.stamp))


# -- 4. evaluation files: manifests, run.json, COCO and caption files, metric records ------------------

MANIFEST_LINES = [
    (DEEP, "not JSON: nested too deeply"),
    ('{"index": ' + DIGITS + "}", "not JSON: it holds an integer with too many digits"),
    ('{"index": 0, "prompt": "a", "seed": -1, "reference": null}', "'seed' must be an integer in [0, 2^63)"),
    ('{"index": 0, "prompt": "a", "seed": 1.5, "reference": null}', "'seed' must be an integer in [0, 2^63)"),
]


@pytest.mark.parametrize(("line", "message"), MANIFEST_LINES)
def test_manifest_lines_name_the_line_and_the_problem(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match="line 1 is not a manifest record") as info:
        prompts.read_manifest(path)
    assert message in str(info.value) and "\n" not in str(info.value)


COCO = [
    (DEEP, "is not valid JSON (nested too deeply); pass the COCO captions file"),
    (json.dumps({"images": [{"id": [1], "file_name": "a"}], "annotations": []}), "images[0].id is [1], not"),
    (json.dumps({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "caption": 5}]}),
     "annotations[0].caption is 5, not a str"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), COCO)
def test_coco_files_are_checked(tmp_path, capsys, text, message):
    captions, instances = tmp_path / "captions.json", tmp_path / "instances.json"
    captions.write_text(text)
    instances.write_text(json.dumps({"images": [{"id": 1}]}))
    argv = ["coco", "--captions", captions, "--instances", instances, "--out", tmp_path / "out" / "c.jsonl"]
    assert message in one_line(capsys, prompts.main, *map(str, argv))
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [("caption\n" + "x" * 200_000 + "\n", "is not a readable csv file (field larger than field limit"),
     ("caption\n\xff\n", "is not UTF-8 text")],
)  # fmt: skip
def test_broken_caption_tables_are_one_line(tmp_path, capsys, text, message):
    captions = tmp_path / "laion.csv"
    captions.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    argv = ["laion", "--captions", str(captions), "--out", str(tmp_path / "out" / "l.jsonl")]
    assert message in one_line(capsys, prompts.main, *argv)


@pytest.mark.parametrize(
    ("text", "message"),
    [(DEEP, "run.json is not valid JSON (nested too deeply)"), ("[]", "is not a run record of format 1")],
)
def test_run_records_are_one_line(tmp_path, text, message):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        runs.read_run(tmp_path / "run.json", "delete it")
    assert evaluation_generate.recorded({"format": 1}, "vae_dtype") is None  # no KeyError on old records


@pytest.mark.parametrize(
    ("text", "message"),
    [(DEEP, "fid.json is not valid JSON (nested too deeply)"),
     ('{"metric": "clip", "clip_score": NaN}', "clip_score is nan, not a number")],
)  # fmt: skip
def test_metric_records_are_one_line(tmp_path, capsys, text, message):
    (tmp_path / "run.json").write_text(json.dumps({"format": 1, "method": "m", "nfe": 5, "guidance": 7.5}))
    (tmp_path / ("fid.json" if "fid" in message else "clip.json")).write_text(text)
    assert message in one_line(capsys, table.main, str(tmp_path))


# -- 5. caches -----------------------------------------------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["EXPLOIT_MARK"]),))


def damaged_caches(path: Path) -> dict:
    good = {
        "features": np.zeros((2, 4), np.float32),
        "mu": np.zeros(4),
        "sigma": np.eye(4),
        "fingerprint": "k",
    }
    np.savez(path, **good)
    whole = path.read_bytes()
    return {
        "truncated": lambda: path.write_bytes(whole[: len(whole) // 2]),
        "no fingerprint": lambda: np.savez(path, **{k: v for k, v in good.items() if k != "fingerprint"}),
        "a pickle": lambda: path.write_bytes(pickle.dumps(Exploit())),
        "mis-shaped": lambda: np.savez(path, **(good | {"sigma": np.eye(3)})),
    }  # fmt: skip


@pytest.mark.parametrize("damage", ["truncated", "no fingerprint", "a pickle", "mis-shaped"])
def test_a_damaged_feature_cache_is_ignored_with_a_warning_and_never_unpickled(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("EXPLOIT_MARK", str(tmp_path / "ran"))
    path = tmp_path / "cache.npz"
    damaged_caches(path)[damage]()
    with pytest.warns(UserWarning, match=f"ignoring the damaged feature cache {path}"):
        assert fid._read_cache(path, "k") is None
    assert not (tmp_path / "ran").exists()


def test_a_read_only_cache_parent_falls_back_before_any_feature_is_computed(tmp_path, monkeypatch):
    folder = tmp_path / "gen"
    folder.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if Path(path).parent == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.warns(UserWarning, match=f"{tmp_path} is not writable; feature caches go to"):
        assert fid.writable_cache_dir(folder, None) == tmp_path / "xdg" / "fewstep-sd" / "fid"
    with pytest.raises(OSError, match=f"cannot write the feature cache folder {tmp_path}"):
        fid.writable_cache_dir(folder, tmp_path)


# -- 6. files written in shared places -----------------------------------------------------------------


def test_prompts_never_follows_a_planted_temporary_and_a_refused_force_leaves_nothing(tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\n")
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "out.jsonl.tmp").symlink_to(target)  # where the old writer wrote, following the link
    code, _, _ = run_main(
        prompts.main, capsys, "laion", "--captions", str(captions), "--out", str(tmp_path / "out.jsonl")
    )
    assert code == 0 and target.read_text() == "keep me" and (tmp_path / "out.jsonl").is_file()
    folder = tmp_path / "folder"
    folder.mkdir()
    before = snapshot(tmp_path)
    argv = ["laion", "--captions", str(captions), "--out", str(folder), "--force"]
    assert f"{folder} is a folder" in one_line(capsys, prompts.main, *argv)
    assert snapshot(tmp_path) == before


def test_write_atomically_removes_its_temporary_on_failure_and_interrupt(tmp_path):
    for failure in (OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()):

        def write(file, failure=failure):
            file.write(b"half")
            raise failure

        with pytest.raises(type(failure)) as info:
            safeio.write_atomically(tmp_path / "x.json", write)
        assert list(tmp_path.iterdir()) == []
        if isinstance(failure, OSError):  # a full disk names the file being written
            assert info.value.filename == str(tmp_path / "x.json")


def test_stale_temporaries_of_dead_processes_are_removed_by_the_next_run(tmp_path):
    dead = tmp_path / ".42-a-cat.png.999999999-0123abcd.tmp"
    live = tmp_path / f".42-a-cat.png.{os.getpid()}-0123abcd.tmp"
    fresh = tmp_path / ".43-a-cat.png.999999998-0123abcd.tmp"
    for path in (dead, live, fresh):
        path.write_bytes(b"partial")
    old = time.time() - 3600
    for path in (dead, live):
        os.utime(path, (old, old))
    other = tmp_path / ".user-notes.tmp"
    other.write_text("not ours")
    pipeline.prepare_output(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([live, fresh, other])


# -- 7. signals and faults -----------------------------------------------------------------------------


def test_sigterm_ends_a_command_like_ctrl_c_with_one_line_and_status_130(capsys):
    def work(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    args = cli.Parser(prog="p").parse_args([])
    assert cli.run("p", work, args) == 130
    assert capsys.readouterr().err == "p: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def interrupting(monkeypatch, after: int, failure: BaseException) -> None:
    """pipeline.save_png writes `after` images, then raises `failure` (as pipeline.write_batch and a sweep's
    grid call it)."""
    real, calls = pipeline.save_png, []

    def save(*args, **kwargs):
        if len(calls) == after:
            raise failure
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "save_png", save)
    monkeypatch.setattr(sys.modules["pipeline.generate"], "save_png", save)


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (KeyboardInterrupt(), 130, "run_sample.py: interrupted; wrote 1 of 2 images to {out}/ (each one "
         "complete, the last 42-a-cat.png); to make the other 1, rerun with --seed 43 --num-images 1"),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "run_sample.py: error: {out}: No space left on "
         "device; wrote 1 of 2 images to {out}/ (each one complete, the last 42-a-cat.png); free space, then "
         "to "
         "make the other 1, rerun with --seed 43 --num-images 1"),
    ],
)  # fmt: skip
def test_an_interrupted_or_full_run_says_what_it_wrote_and_how_to_resume(
    checkpoints, tmp_path, capsys, monkeypatch, failure, status, message
):
    interrupting(monkeypatch, 1, failure)
    out = tmp_path / "out"
    argv = ["--weights", str(checkpoints["single"]), "--prompt", "a cat", "--seed", "42", "--num-images", "2",
            "--batch-size", "2", "--steps", "1", "--height", "64", "--width", "64",
            "--out", str(out)]  # fmt: skip
    assert one_line(capsys, run_sample.main, *argv, status=status) == message.format(out=out)
    assert [p.name for p in out.iterdir()] == ["42-a-cat.png"]  # no temporary left


def test_a_full_disk_is_refused_before_loading(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    argv = [
        "--weights",
        str(checkpoints["single"]),
        "--prompt",
        "a cat",
        "--out",
        str(tmp_path),
        *("--width", "64"),
    ]
    error = one_line(capsys, run_sample.main, *argv, "--height", "64")
    assert error.startswith(
        f"run_sample.py: error: {tmp_path}: No space left for even one 64x64 image (1000 bytes"
    )
    assert files_in(tmp_path) == []


# -- the shared JSON reader ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [(DEEP, "nested too deeply"), ("[" * 33 + "]" * 33, "nested more than 32 levels deep"),
     (DIGITS, "integer with too many digits"), (b"\xff\xfe\x00", "not valid JSON"), ("{", "Expecting")],
)  # fmt: skip
def test_parse_json_turns_every_malformed_text_into_the_callers_error(text, reason):
    with pytest.raises(PlanError, match=r"^the file is not valid JSON") as info:
        safeio.parse_json(text, "the file", "fix it", PlanError)
    assert reason in str(info.value) and str(info.value).endswith("; fix it")
    assert safeio.parse_json("[" * 32 + "]" * 32, "f", "") is not None


# -- 8. the schedule search: flags, denoiser, cache, output (issue 23) ---------------------------------

MIXTURE = "solvers.analytic:GaussianMixture.default"


def not_a_denoiser():
    return lambda x, sigma: x.sum()


def nan_denoiser():
    return lambda x, sigma: x * float("nan")


SEARCH_FLAGS = [
    (["--shape", "1000000000"], "--shape 1000000000 (1000000000 numbers) is over the maximum of 262144 "
     "numbers per sample (4 x 256 x 256 latents); pass --allow-large to lift the limits (see the README)"),
    (["--shape", "100000,100000"], "--shape 100000,100000 (10000000000 numbers) is over the maximum"),
    (["--shape", "16", "--samples", "1000000000"], "--samples 1000000000 is over the maximum of 65536"),
    (["--shape", "16", "--held-out", "100000"], "--held-out 100000 is over the maximum of 65536 held-out"),
    (["--shape", "16", "--grid", "10000000"], "--grid 10000000 is over the maximum of 1000 candidate"),
    (["--shape", "16", "--teacher", "dpmpp_2m", "--teacher-substeps", "5000"], "--teacher-substeps 5000 is"),
    (["--shape", "16", "--steps", "5000"], "--steps 5000 is over the maximum of 1000 steps"),
    (["--shape", "16", "--grid", "8", "--steps", "1000"], "no plan on a grid of 8 levels spends exactly 1000 "
     "NFE with dpmpp_2m; pass --grid 1000 or more, or fewer --steps"),
    (["--shape", "4,128,128", "--samples", "10000", "--held-out", "10000"], "the search would hold 800.8 GiB "
     "of teacher states, more than this machine's 1.0 GiB of memory; lower --samples, --held-out, --grid or "
     "--shape"),
]  # fmt: skip
DENOISERS = [
    ("json:loads", "--denoiser json:loads: loads() with no arguments fails (TypeError: "),
    ("solvers.analytic:GaussianMixture", "GaussianMixture() with no arguments fails (TypeError"),
    ("..:x", "--denoiser '..:x' is not MODULE:CALLABLE"),
    ("builtins:dict", "--denoiser builtins:dict: dict() returned dict, not a denoiser"),
    ("tests.commands.test_hostile_inputs:not_a_denoiser",
     "--denoiser tests.commands.test_hostile_inputs:not_a_denoiser returned a torch.float64 tensor of "
     "shape () for x of shape (2, 16); a denoiser returns"),
]  # fmt: skip


def search_command(capsys, *argv: str, status: int = 2) -> str:
    from solvers.search.__main__ import main

    return one_line(capsys, main, *argv, status=status)


@pytest.mark.parametrize(("flags", "message"), SEARCH_FLAGS)
def test_the_search_bounds_its_flags_and_memory_before_any_allocation(capsys, monkeypatch, flags, message):
    monkeypatch.setattr(pipeline.limits, "physical_memory", lambda: 2**30)
    allocated = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: allocated.append(a))  # nothing is drawn
    error = search_command(capsys, "--denoiser", MIXTURE, "--steps", "3", *flags)
    assert error.startswith("python -m solvers.search: error: ") and message in error
    assert allocated == []


@pytest.mark.parametrize(("spec", "message"), DENOISERS)
def test_a_denoiser_flag_that_names_no_denoiser_is_one_line(capsys, spec, message):
    assert message in search_command(capsys, "--denoiser", spec, "--shape", "16", "--steps", "3")


def test_the_budget_check_agrees_with_the_search_lattice():
    from schedule import DiscreteSchedule
    from solvers.search import candidate_grid, check_budget, rules
    from solvers.search.dp import Lattice

    for solver in ("dpmpp_2m", "heun", "dpmpp_2s", "heun,dpmpp_2s", "heun,dpmpp_2m", "auto"):
        for levels in range(2, 7):
            grid = candidate_grid(DiscreteSchedule.sd(), levels)
            for nfe in range(1, 12):
                reachable = any(n == nfe for n, _ in Lattice(grid, rules(solver), nfe).reach)
                try:
                    check_budget(levels, solver, nfe)
                except ValueError:
                    assert not reachable, (solver, levels, nfe)
                else:
                    assert reachable, (solver, levels, nfe)


SMALL_SEARCH = ["--denoiser", "tests.solvers.test_search:plain_denoiser", "--shape", "4", "--steps", "2",
                "--samples", "4", "--held-out", "4", "--grid", "4", "--stages", "dp", "--teacher-substeps",
                "1"]  # fmt: skip


def test_the_search_checks_its_out_file_before_the_work_and_prints_a_plan_it_cannot_write(
    tmp_path, capsys, monkeypatch
):
    link = tmp_path / "plan.json"
    link.symlink_to(tmp_path / "nowhere")  # dangling: found now, not after the search
    assert f"--out {link} exists" in search_command(capsys, *SMALL_SEARCH, "--out", str(link))
    full = shutil._ntuple_diskusage(10**9, 10**9, 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    error = search_command(capsys, *SMALL_SEARCH, "--out", str(tmp_path / "p.json"))
    assert "has 1000 bytes free, less than the 1048576 a plan may take" in error
    monkeypatch.undo()

    def disk_full(path, data, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(safeio, "write_atomically", disk_full)
    code, out, err = run_main(_search_main(), capsys, *SMALL_SEARCH, "--out", str(tmp_path / "p.json"))
    assert code == 2 and err.count("\n") == 1
    assert err.strip().endswith(
        f"--out {tmp_path / 'p.json'}: the plan is not written ({tmp_path / 'p.json'}: No space left on "
        "device); its JSON is on standard output: save it to a file"
    )
    assert Plan.from_json(out.strip().splitlines()[-1]).nfe == 2  # the whole plan, nothing lost


def _search_main():
    from solvers.search.__main__ import main

    return main


def test_a_teacher_of_non_finite_states_is_refused(capsys):
    error = search_command(capsys, "--denoiser", "tests.commands.test_hostile_inputs:nan_denoiser",
                           "--shape", "4", "--steps", "2", "--grid", "4", "--samples", "2",
                           "--held-out", "2")  # fmt: skip
    assert "the teacher's solve (dpmpp_2m) gave non-finite states, first of sample 0 at grid level 1" in error


def teacher_cache(tmp_path: Path):
    from pipeline.runs import Job as Sample
    from pipeline.search import TeacherCache

    cache = TeacherCache(tmp_path, {"grid": [2.0, 1.0, 0.0]}, (3, 4, 8, 8))
    return cache, Sample("a cat", 1)


TEACHER_FILES = {
    "truncated": lambda good: good[: len(good) // 2],
    "another key": lambda good: safetensors_bytes({"states": torch.zeros(3, 4, 8, 8)}, "other"),
    "mis-shaped": lambda good: safetensors_bytes({"states": torch.zeros(3, 4, 8, 9)}),
    "integer": lambda good: safetensors_bytes({"states": torch.zeros(3, 4, 8, 8, dtype=torch.int64)}),
    "not finite": lambda good: safetensors_bytes({"states": torch.full((3, 4, 8, 8), float("nan"))}),
    "two tensors": lambda good: safetensors_bytes({"states": torch.zeros(3, 4, 8, 8), "x": torch.zeros(1)}),
    "a pickle": lambda good: pickle.dumps(Exploit()),
}
TEACHER_REASONS = {
    "truncated": "unreadable", "another key": "it holds another trajectory",
    "mis-shaped": "its states have shape [3, 4, 8, 9], not [3, 4, 8, 8]",
    "integer": "its states are a torch.int64 tensor, not floating point", "not finite": "not all finite",
    "two tensors": "it holds ['states', 'x'], not one 'states' tensor", "a pickle": "unreadable",
}  # fmt: skip


def safetensors_bytes(tensors: dict, key: str | None = None) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"key": key or SAFETENSORS_KEY[0]})


SAFETENSORS_KEY = [""]


@pytest.mark.parametrize("damage", list(TEACHER_FILES))
def test_a_damaged_teacher_cache_file_is_ignored_with_a_warning_and_removed(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("EXPLOIT_MARK", str(tmp_path / "ran"))
    cache, row = teacher_cache(tmp_path)
    SAFETENSORS_KEY[0] = cache.key(row)
    good = torch.randn(3, 4, 8, 8)
    cache.save(row, good)
    assert torch.equal(cache.load(row), good)
    path = cache.path(row)
    path.write_bytes(TEACHER_FILES[damage](path.read_bytes()))
    with pytest.warns(
        UserWarning, match=re.escape(f"ignoring the damaged teacher cache file {path} (")
    ) as seen:
        assert cache.load(row) is None
    assert TEACHER_REASONS[damage] in str(seen[0].message) and "\n" not in str(seen[0].message)
    assert not path.exists() and not (tmp_path / "ran").exists()  # solved again next, never unpickled
    cache.save(row, good)
    assert torch.equal(cache.load(row), good)


def test_the_teacher_cache_folder_is_checked_for_writing_and_room(tmp_path, monkeypatch):
    from pipeline.search import check_cache_folder, check_cache_space

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match=f"cannot write the teacher cache folder {tmp_path / 'file'}: "):
        check_cache_folder(tmp_path / "file")
    cache, row = teacher_cache(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(
        OSError, match=r"No space left for the teacher cache \(1000 bytes free, up to 68608 needed"
    ):
        check_cache_space(cache, [row])


# -- 9. files that are not regular files (issue 23) ---------------------------------------------------


def special(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo.png")
        return tmp_path / "fifo.png"
    if kind == "folder":
        (tmp_path / "folder.png").mkdir()
        return tmp_path / "folder.png"
    return Path("/dev/zero")  # a device that never ends


READERS = [
    ("--init-image", pipeline.read_image, ValueError, "cannot read init_image {p} as an image: "),
    ("--plan", pipeline.read_plan_file, PlanError, "cannot read plan file {p}: "),
    ("--prompts", pipeline.read_prompts, ValueError, "cannot read prompts {p}: "),
    ("--replay", pipeline.read_replay, PlanError, "cannot read {p} as a PNG: "),
    ("manifest", prompts.read_manifest, ValueError, "cannot read the manifest {p}: "),
    ("metric image", images.load_rgb, ValueError, "cannot read the image {p}: "),
    ("JSON file", lambda p: safeio.read_json(p, "fix it"), ValueError, "cannot read {p}: "),
    ("weights", read_header, OSError, "it is "),
]  # fmt: skip
KINDS = {"fifo": "it is a FIFO (named pipe), not a file", "folder": "it is a folder, not a file",
         "device": "it is a character device, not a file"}  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("what", "read", "error", "message"), READERS, ids=[r[0] for r in READERS])
def test_files_that_are_not_regular_are_refused_before_they_are_read(
    tmp_path, kind, what, read, error, message
):
    path = special(tmp_path, kind)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"{what}: reading a {kind} blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(error) as info:
            read(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert message.format(p=path) in str(info.value) and KINDS[kind] in str(info.value)
    assert "\n" not in str(info.value)


def test_the_null_device_reads_as_an_empty_file():
    assert safeio.read_bytes(os.devnull) == b""  # `--prompts /dev/null` is "no prompt", not a device


def test_a_fifo_as_init_image_is_one_line_in_run_sample(tmp_path, capsys):
    fifo = special(tmp_path, "fifo")
    argv = [
        "--prompt",
        "a cat",
        "--init-image",
        str(fifo),
        "--strength",
        "0.5",
        "--out",
        str(tmp_path / "out"),
    ]
    error = one_line(capsys, run_sample.main, *argv)
    assert error.endswith(
        f"cannot read --init-image {fifo} as an image: {KINDS['fifo']}; pass a regular file"
    )


# -- 10. text that is not valid Unicode (issue 23) ---------------------------------------------------

BAD_TEXT = "\udcff\udcfe cat"  # how Python's argv holds the bytes ff fe, which are not UTF-8
UNICODE = "not valid Unicode (character 1 is U+DCFF, a lone surrogate: bytes that are not UTF-8)"


def test_prompts_that_are_not_valid_unicode_are_refused_where_they_enter(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    for flags in (["--prompt", BAD_TEXT], ["--prompt", "a cat", "--negative-prompt", BAD_TEXT]):
        error = one_line(capsys, run_sample.main, *flags, *out)
        assert f"argument {flags[-2]}: is {UNICODE}; write it in UTF-8" in error
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_bytes(b"a \xff\xfe cat\n")
    error = one_line(capsys, run_sample.main, "--prompts", str(prompts_file), *out)
    assert f"cannot read --prompts {prompts_file}: 'utf-8' codec can't decode byte 0xff" in error
    png = replay_png(tmp_path / "in", {"prompt": BAD_TEXT})
    error = one_line(capsys, run_sample.main, "--replay", str(png), *out)
    assert f"{png} cannot be replayed: the settings is not valid JSON (a string is {UNICODE}" in error
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(preset("paper-5").to_dict() | {"name": BAD_TEXT}))
    error = one_line(capsys, run_sample.main, "--prompt", "a cat", "--plan", str(plan), *out)
    assert f"{plan} is not a valid plan: the plan is not valid JSON (a string is {UNICODE}" in error
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"index": 0, "prompt": BAD_TEXT, "seed": 0, "reference": None}) + "\n")
    error = one_line(capsys, evaluation_generate.main, "--manifest", str(manifest), *out)
    assert f"{manifest} line 1 is not a manifest record (not JSON: a string is {UNICODE}" in error
    assert files_in(tmp_path / "out") == []


# -- 11. writes: never over an existing file without --force, never through a planted link (issue 23) -


def test_metrics_outputs_are_refused_before_the_work_when_they_exist(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "prd.png"
    link.symlink_to(target)
    folders = ["--generated", str(tmp_path), "--reference", str(tmp_path)]
    error = one_line(capsys, metrics.main, "prd", *folders, "--plot", str(link))
    assert error.endswith(f"--plot {link} exists; pass --force to replace it, or give another file name")
    (tmp_path / "fid.json").write_text("{}")
    error = one_line(capsys, metrics.main, "fid", *folders, "--json", str(tmp_path / "fid.json"))
    assert f"--json {tmp_path / 'fid.json'} exists; pass --force" in error
    assert target.read_text() == "keep me" and (tmp_path / "fid.json").read_text() == "{}"


def test_a_forced_plot_replaces_a_planted_link_never_the_file_it_points_to(tmp_path):
    from evaluation import prd

    pytest.importorskip("matplotlib")
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "prd.png"
    link.symlink_to(target)
    curve = (np.linspace(0, 1, 5), np.linspace(1, 0, 5))
    with pytest.raises(FileExistsError):
        prd.plot_prd({"a": curve}, link)
    prd.plot_prd({"a": curve}, link, replace=True)
    assert target.read_text() == "keep me" and not link.is_symlink()
    assert link.read_bytes().startswith(b"\x89PNG")


def test_analyze_refuses_an_existing_plot_before_the_work(tmp_path, capsys):
    from solvers import analyze

    pytest.importorskip("matplotlib")
    (tmp_path / "a.png").write_text("mine")
    error = one_line(capsys, analyze.main, "--samples", "1", "--plot", str(tmp_path / "a.png"))
    assert f"--plot {tmp_path / 'a.png'} exists; pass --force to replace it" in error


# -- 12. bounds and records by every way they arrive; advice that works (issue 23) -------------------


@pytest.mark.parametrize("name", ["karras-2m-100000", "paper-5000"])
def test_presets_meet_the_step_cap_in_run_sample_and_evaluation_generate(tmp_path, capsys, name):
    message = f"--preset {name}: steps {name.rsplit('-', 1)[1]} is over the maximum of 1000 steps"
    assert message in one_line(capsys, run_sample.main, "--preset", name, "--print-plan")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"index": 0, "prompt": "a cat", "seed": 0, "reference": null}\n')
    argv = ["--manifest", str(manifest), "--out", str(tmp_path / "out"), "--preset", name]
    assert message in one_line(capsys, evaluation_generate.main, *argv)


def test_a_discretization_record_that_does_not_reproduce_the_sigmas_is_dropped_with_a_note(tmp_path):
    plan = preset("karras-2m-5")
    path = tmp_path / "plan.json"
    path.write_text(
        plan.replace(sigmas=plan.sigmas, discretization=preset("paper-5").discretization).to_json()
    )
    with pytest.warns(
        UserWarning, match=re.escape(f"plan file {path}: dropping the plan's discretization record")
    ):
        read = pipeline.read_plan_file(path)
    assert read.discretization is None and read.sigmas == plan.sigmas
    path.write_text(plan.to_json())
    assert pipeline.read_plan_file(path) == plan  # a true record stays


def test_a_replay_with_another_init_image_expects_different_pixels():
    assert pipeline.replay_differences(SETTINGS, SETTINGS) is None
    changed = Settings(**{**SETTINGS.__dict__, "init_image_sha256": "1" * 64})
    assert pipeline.replay_differences(changed, SETTINGS).endswith("expect different pixels")
    changed = Settings(**{**SETTINGS.__dict__, "device": "cuda"})
    assert pipeline.replay_differences(changed, SETTINGS).endswith("expect close, not identical, pixels")


def test_force_replaces_an_unreadable_run_record_as_the_refusal_advises(tmp_path):
    from pipeline.sharding import Shard

    (tmp_path / "run.json").write_text(DEEP)
    record = {"format": 1, "method": "m"}
    with pytest.raises(ValueError, match="delete it, or pass --force to replace it"):
        evaluation_generate.claim_run(tmp_path, record, False, Shard())
    evaluation_generate.claim_run(tmp_path, record, True, Shard())
    assert json.loads((tmp_path / "run.json").read_text()) == record
