"""`python -m evaluation.table`: run folders with run.json (as evaluation.generate writes it) and the metric
JSON files of `python -m evaluation.metrics ... --json RUN_DIR/{fid,clip,prd}.json` -> a Markdown table."""

import contextlib
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from evaluation import fid, metrics
from evaluation.generate import RUN_FILE, run_record
from evaluation.table import main
from pipeline import Settings
from solvers import preset

REPO = Path(__file__).resolve().parents[2]


def make_run(folder: Path, name: str, guidance: float | list[float] = 7.5) -> Path:
    """A run folder holding the run.json that `python -m evaluation.generate --preset NAME` writes."""
    plan = preset(name).replace(guidance=guidance)
    made = Settings(
        "", "", 0, 512, 512, "sd15.safetensors", "ab" * 32, "sd15", "float16", "cuda", False, 8, 0
    )
    folder.mkdir(parents=True)
    record = run_record(plan, name, made, "coco14.jsonl", 10_000, "cd" * 32)
    (folder / RUN_FILE).write_text(json.dumps(record))
    return folder


def write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record))


def fid_json(paper: float, clean: float | None = None) -> dict:
    """The shape `python -m evaluation.metrics fid --json` writes."""
    values = {"paper": paper} | ({} if clean is None else {"clean": clean})
    return {"metric": "fid", "generated": "g", "reference": "r", "count": {}, "fid": values, "protocols": {}}


def prd_json(f8: float, f1_8: float) -> dict:
    return {"metric": "prd", "prd": {"paper": {"f_8": f8, "f_1/8": f1_8}}, "curves": {}}


def table(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exited:  # argparse
            code = exited.code
    return code, out.getvalue(), err.getvalue()


def test_table_of_three_runs_with_a_missing_metric(tmp_path):
    p5 = make_run(tmp_path / "p5", "paper-5")
    write(p5 / "fid.json", fid_json(19.1849, 21.5))
    write(p5 / "clip.json", {"metric": "clip", "clip_score": 31.4567})
    p8 = make_run(tmp_path / "p8", "paper-8", guidance=5.5)
    write(p8 / "fid.json", fid_json(15.7))  # no CLIP score yet
    karras = make_run(tmp_path / "karras", "karras-2m-20")  # no metrics at all
    code, out, err = table(p5, p8, karras)
    assert (code, err) == (0, "")
    # FID and CLIP to 2 decimals (as the paper prints them); a missing metric is "-"
    assert out == (
        "| Method | NFE | Guidance | FID | CLIP |\n"
        "| :--- | ---: | ---: | ---: | ---: |\n"
        "| paper-5 | 5 | 7.5 | 19.18 | 31.46 |\n"
        "| paper-8 | 8 | 5.5 | 15.70 | - |\n"
        "| karras-2m-20 | 20 | 7.5 | - | - |\n"
    )


def test_prd_columns_appear_when_a_run_has_prd_json(tmp_path):
    p5 = make_run(tmp_path / "p5", "paper-5")
    write(p5 / "prd.json", prd_json(0.91234, 0.87651))
    p6 = make_run(tmp_path / "p6", "paper-6", guidance=[7.5, 7.5, 5.5, 5.5, 5.5, 5.5])
    code, out, _ = table(p5, p6)
    assert code == 0
    assert out == (
        "| Method | NFE | Guidance | FID | CLIP | F_8 | F_1/8 |\n"
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| paper-5 | 5 | 7.5 | - | - | 0.912 | 0.877 |\n"
        "| paper-6 | 6 | 7.5/7.5/5.5/5.5/5.5/5.5 | - | - | - | - |\n"
    )


def test_clean_protocol_and_a_file_without_the_asked_protocol(tmp_path):
    run = make_run(tmp_path / "run", "paper-5")
    write(run / "fid.json", fid_json(19.0, clean=20.134))
    assert table(run, "--protocol", "clean")[1].splitlines()[2] == "| paper-5 | 5 | 7.5 | 20.13 | - |"
    write(run / "fid.json", fid_json(19.0) | {"fid": {"clean": 20.0}})
    code, out, err = table(run)
    assert code == 0 and out.splitlines()[2] == "| paper-5 | 5 | 7.5 | - | - |"
    assert err == (
        f"python -m evaluation.table: note: {run / 'fid.json'} has no paper-protocol value (it has clean); "
        "rerun python -m evaluation.metrics fid with --protocol paper or both, and --force to replace it\n"
    )


def test_metrics_command_outputs_are_read_from_their_documented_places(tmp_path, monkeypatch):
    """The files `python -m evaluation.metrics fid|prd|clip --json RUN_DIR/...` write, with the Inception
    features and the CLIP score stubbed: means 5 apart and equal covariances give FID 25; identical
    features give a PRD curve through (1, 1), so F_8 = F_1/8 = 1."""
    run = make_run(tmp_path / "run", "paper-8")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 4))
    generated = fid.FolderStats(features, np.array([3.0, 4, 0, 0]), np.eye(4), "g", cached=True)
    reference = fid.FolderStats(features, np.zeros(4), np.eye(4), "r", cached=True)
    monkeypatch.setattr(metrics, "_folder_features", lambda args: ({"paper": (generated, reference)}, {}))
    clip_score = types.SimpleNamespace(score_folder=lambda *args, **kwargs: 31.25)
    monkeypatch.setitem(sys.modules, "evaluation.clip_score", clip_score)
    folders = ["--generated", run, "--reference", tmp_path]
    with contextlib.redirect_stdout(io.StringIO()):
        assert metrics.main([str(a) for a in ["fid", *folders, "--json", run / "fid.json"]]) == 0
        assert (
            metrics.main([str(a) for a in ["prd", *folders, "--clusters", "2", "--json", run / "prd.json"]])
            == 0
        )
        clip = [
            "clip",
            "--images",
            run,
            "--manifest",
            "m.jsonl",
            "--weights",
            "w",
            "--json",
            run / "clip.json",
        ]
        assert metrics.main([str(a) for a in clip]) == 0
    assert table(run)[1].splitlines()[2] == "| paper-8 | 8 | 7.5 | 25.00 | 31.25 | 1.000 | 1.000 |"


def test_method_names_with_a_pipe_are_escaped(tmp_path):
    run = make_run(tmp_path / "run", "paper-5")
    record = json.loads((run / RUN_FILE).read_text()) | {"method": "a|b"}
    write(run / RUN_FILE, record)
    assert table(run)[1].splitlines()[2] == "| a\\|b | 5 | 7.5 | - | - |"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda run: (run / RUN_FILE).unlink(), "{run} has no run.json; pass folders written by "
         "python -m evaluation.generate --out DIR"),
        (lambda run: (run / "fid.json").write_text("{oops"), "{run}/fid.json is not valid JSON (Expecting "
         "property name enclosed in double quotes: line 1 column 2 (char 1)); write it again with python -m "
         "evaluation.metrics fid --force --json"),
        (lambda run: write(run / "clip.json", fid_json(1.0)), "{run}/clip.json is not a clip record; "
         "write it with python -m evaluation.metrics clip --force --json"),
        (lambda run: write(run / "clip.json", {"metric": "clip", "clip_score": "high"}), "{run}/clip.json: "
         "clip_score is 'high', not a number; rewrite it with python -m evaluation.metrics (--force replaces "
         "the file)"),
        (lambda run: write(run / RUN_FILE, {"format": 7}), "{run}/run.json is not a run record of format 1; "
         "write it again with python -m evaluation.generate"),
    ],
)  # fmt: skip
def test_unusable_run_folders_are_one_line_errors_with_status_2(tmp_path, setup, message):
    run = make_run(tmp_path / "run", "paper-5")
    setup(run)
    code, out, err = table(run)
    assert (code, out) == (2, "")
    assert err == f"python -m evaluation.table: error: {message.format(run=run)}\n"


def test_runs_as_a_module(tmp_path):
    run = make_run(tmp_path / "run", "paper-5")
    done = subprocess.run(
        [sys.executable, "-m", "evaluation.table", str(run)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2] == "| paper-5 | 5 | 7.5 | - | - |"
    missing = subprocess.run(
        [sys.executable, "-m", "evaluation.table", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True
    )
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1


def test_a_comparison_with_distilled_runs_shows_each_rows_weights_loras_and_sampler(tmp_path):
    """The paper's comparison in one table: the base model's recipe beside a LoRA and a U-Net file."""
    base = make_run(tmp_path / "p8", "paper-8")
    flash = make_run(tmp_path / "flash", "flash-6", guidance=1.0)
    dmd2 = make_run(tmp_path / "dmd2", "dmd2-4-paper", guidance=1.0)
    for folder, changes in (
        (flash, {"loras": [{"lora": "flash-lora-sd15", "file": "pytorch_lora_weights.safetensors",
                            "sha256": "ef" * 32, "strength": 1.0}]}),
        (dmd2, {"model": "sd_xl_base_1.0", "unet": "dmd2-4step-unet", "unet_sha256": "12" * 32}),
    ):  # fmt: skip
        record = json.loads((folder / RUN_FILE).read_text())
        write(folder / RUN_FILE, record | changes)
    code, out, err = table(base, flash, dmd2)
    assert (code, err) == (0, "")
    assert out == (
        "| Method | Weights | LoRAs | Sampler | NFE | Guidance | FID | CLIP |\n"
        "| :--- | :--- | :--- | :--- | ---: | ---: | ---: | ---: |\n"
        "| paper-8 | sd15 | - | DPM++ 2M | 8 | 7.5 | - | - |\n"
        "| flash-6 | sd15 | pytorch_lora_weights.safetensors x1 | LCM | 6 | 1 | - | - |\n"
        "| dmd2-4-paper | sd_xl_base_1.0 + U-Net dmd2-4step-unet | - | LCM | 4 | 1 | - | - |\n"
    )


def test_a_run_json_written_before_the_model_columns_shows_dashes(tmp_path):
    old = make_run(tmp_path / "old", "paper-5")
    record = json.loads((old / RUN_FILE).read_text())
    write(old / RUN_FILE, {k: v for k, v in record.items() if k not in ("sampler", "unet", "loras")})
    lora = make_run(tmp_path / "lora", "paper-5")
    record = json.loads((lora / RUN_FILE).read_text())
    write(lora / RUN_FILE, record | {"loras": [{"lora": "x", "file": "x.safetensors", "sha256": "0" * 64,
                                               "strength": 0.5}]})  # fmt: skip
    code, out, _ = table(old, lora)
    assert code == 0
    assert "| paper-5 | sd15 | - | - | 5 |" in out
    assert "| paper-5 | sd15 | x.safetensors x0.5 | DPM++ 1S | 5 |" in out
