"""`python -m evaluation.metrics`: output lines, JSON, the feature cache, and one-line errors.

Tiny random images and a random-weight FID Inception checkpoint. Every image costs a full 299 x 299
Inception pass on the CPU, so the folders hold 2 and 3 images and the tests share their caches.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.fid import WEIGHTS_ENV, WEIGHTS_URL, FIDInception, cache_path
from evaluation.metrics import main


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}{suffix}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """FID Inception state dict with He-scaled random convolutions (activations stay O(1))."""
    generator = torch.Generator().manual_seed(0)
    model = FIDInception()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
                )
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """2 generated 64 px PNGs and 3 reference 96 x 72 JPEGs (not square: resize and crop matter)."""
    root = tmp_path_factory.mktemp("images")
    write_images(root / "generated", 2, (64, 64), seed=1)
    write_images(root / "reference", 3, (96, 72), seed=2, suffix=".jpg")
    return root / "generated", root / "reference"


@pytest.fixture(scope="module")
def fid_both(folders, weights, tmp_path_factory):
    generated, reference = folders
    out_json = tmp_path_factory.mktemp("json") / "fid.json"
    argv = ["fid", "--generated", generated, "--reference", reference, "--protocol", "both"]
    status, out, err = run([*argv, "--inception", weights, "--json", out_json])
    return status, out, err, json.loads(out_json.read_text())


def test_fid_prints_one_line_per_protocol_and_writes_json(fid_both):
    status, out, err, record = fid_both
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line, protocol in zip(lines, ["paper", "clean"], strict=True):
        match = re.match(
            rf"FID \({protocol} protocol\) = (\d+\.\d{{4}})   \[2 generated vs 3 reference; ", line
        )
        assert match, line
        assert float(match.group(1)) == pytest.approx(record["fid"][protocol], abs=5e-5)
    assert record["metric"] == "fid" and record["count"] == {"generated": 2, "reference": 3}
    assert set(record["protocols"]) == {"paper", "clean"}
    assert record["fid"]["paper"] != record["fid"]["clean"]


def test_fid_of_a_folder_against_itself_is_zero(folders, weights, tmp_path):
    """Identical statistics leave Tr(S + S - 2 S) = 0 up to float64 rounding: 1e-12 of Tr S."""
    generated, _ = folders
    out_json = tmp_path / "self.json"
    argv = ["fid", "--generated", generated, "--reference", generated, "--inception", weights]
    status, _, err = run([*argv, "--json", out_json])
    assert status == 0, err
    with np.load(cache_path(generated, "paper")) as cached:
        trace = np.trace(cached["sigma"])
    assert trace > 0
    assert abs(json.loads(out_json.read_text())["fid"]["paper"]) <= 1e-12 * trace


def test_feature_cache_is_reused_until_a_file_changes(tmp_path, weights, monkeypatch):
    """fid writes the caches; prd (which needs the same features) then runs no Inception pass, and
    after one image changes only its folder is recomputed. (prd here: it skips the 2048 x 2048
    eigen-decompositions of FID, the slow part once features are cached.)"""
    write_images(tmp_path / "gen", 2, (64, 64), seed=3)
    write_images(tmp_path / "ref", 2, (64, 64), seed=4)
    images_seen = []
    forward = FIDInception.forward

    def counting_forward(self, images):
        images_seen.append(len(images))
        return forward(self, images)

    monkeypatch.setattr(FIDInception, "forward", counting_forward)
    folders = ["--generated", tmp_path / "gen", "--reference", tmp_path / "ref", "--inception", weights]

    def prd() -> str:
        status, _, err = run(["prd", *folders, "--clusters", "2", "--runs", "1"])
        assert status == 0, err
        return err

    def cached_features() -> np.ndarray:
        with np.load(cache_path(tmp_path / "gen", "paper")) as cached:
            return cached["features"]

    status, _, err = run(["fid", *folders])
    assert status == 0, err
    assert sum(images_seen) == 4 and err.count("features computed") == 2
    assert cache_path(tmp_path / "ref", "paper").is_file()
    before = cached_features()
    assert prd().count("features cached") == 2
    assert sum(images_seen) == 4  # no Inception pass

    write_images(tmp_path / "gen", 1, (48, 48), seed=5)  # replaces 00000.png
    assert prd().count("features cached") == 1
    assert sum(images_seen) == 6  # the changed folder's 2 images, not the reference's
    after = cached_features()
    assert not np.array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])  # same file, same features


def test_missing_weights_is_one_line_with_the_download_url_and_exit_status_2(folders, tmp_path):
    generated, reference = folders
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ENV}
    command = [sys.executable, "-m", "evaluation.metrics", "fid", "--generated", str(generated)]
    result = subprocess.run(
        [*command, "--reference", str(reference)],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert WEIGHTS_URL in lines[0] and "give its path as --inception," in lines[0] and WEIGHTS_ENV in lines[0]


def test_bad_inputs_are_one_line_errors_with_exit_status_2(folders, weights, tmp_path, monkeypatch):
    generated, reference = folders
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    status, _, err = run(["fid", "--generated", generated, "--reference", reference])
    assert status == 2 and len(err.strip().splitlines()) == 1 and "nowhere.pth does not exist" in err

    status, _, err = run(
        ["fid", "--generated", tmp_path / "missing", "--reference", reference, "--inception", weights]
    )
    assert status == 2 and len(err.strip().splitlines()) == 1 and "missing does not exist" in err

    not_weights = tmp_path / "not_weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, not_weights)
    status, _, err = run(
        ["fid", "--generated", generated, "--reference", reference, "--inception", not_weights]
    )
    assert status == 2 and len(err.strip().splitlines()) == 1 and "does not fit the FID Inception" in err


def test_prd_prints_f_scores_and_writes_the_plot(folders, weights, tmp_path):
    """2 generated vs 3 reference images: PRD draws 2 reference images (seeded) to match counts."""
    generated, reference = folders
    plot, out_json = tmp_path / "prd.png", tmp_path / "prd.json"
    argv = ["prd", "--generated", generated, "--reference", reference, "--inception", weights]
    status, out, err = run([*argv, "--clusters", "2", "--runs", "2", "--plot", plot, "--json", out_json])
    assert status == 0, err
    assert "PRD on 2 images of each set" in err
    (line,) = out.strip().splitlines()
    assert re.match(r"PRD \(paper protocol\) F_8 = \d\.\d{4}  F_1/8 = \d\.\d{4}   \[", line), line
    record = json.loads(out_json.read_text())
    assert 0 <= record["prd"]["paper"]["f_8"] <= 1 and 0 <= record["prd"]["paper"]["f_1/8"] <= 1
    assert len(record["curves"]["paper"]["precision"]) == 1001
    with Image.open(plot) as image:
        assert image.format == "PNG"


def test_prd_plot_without_matplotlib_fails_before_any_work(folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    generated, reference = folders
    argv = ["prd", "--generated", generated, "--reference", reference, "--inception", tmp_path / "none.pth"]
    status, out, err = run([*argv, "--plot", tmp_path / "prd.png"])
    assert status == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "--plot needs matplotlib" in line


def test_clip_calls_score_folder_and_prints_one_line(tmp_path, monkeypatch):
    calls = []

    def score_folder(image_dir, manifest_path, weights_path, device="cpu", batch_size=32):
        calls.append((image_dir, manifest_path, weights_path, device, batch_size))
        return 31.25

    monkeypatch.setitem(
        sys.modules, "evaluation.clip_score", types.SimpleNamespace(score_folder=score_folder)
    )
    argv = ["clip", "--images", tmp_path, "--manifest", tmp_path / "m.jsonl", "--weights", tmp_path / "w"]
    status, out, err = run([*argv, "--batch-size", "8", "--json", tmp_path / "clip.json"])
    assert status == 0, err
    assert calls == [(tmp_path, tmp_path / "m.jsonl", tmp_path / "w", "cpu", 8)]
    (line,) = out.strip().splitlines()
    assert line.startswith("CLIP score = 31.2500")
    assert json.loads((tmp_path / "clip.json").read_text())["clip_score"] == 31.25
