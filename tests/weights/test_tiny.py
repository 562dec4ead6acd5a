"""`python -m weights.tiny`: the random-weight checkpoint that checks an install runs the whole
command line as an official SD 1.5 file does."""

import torch

import weights
from run_sample import main as run_sample
from tests.helpers import pixels
from weights import tiny


def test_the_tiny_file_loads_as_sd15_with_the_declared_architecture(tmp_path):
    path = tiny.write_tiny(tmp_path)
    sd = weights.load(path)
    assert (sd.kind, sd.unet.config, sd.vae.config, sd.text_encoder.config) == (
        "sd1",
        tiny.UNET,
        tiny.VAE,
        tiny.TEXT,
    )
    made = tiny.tiny_modules()["unet"].state_dict()
    assert all(torch.equal(made[k], v) for k, v in sd.unet.state_dict().items())  # the seed's weights


def test_the_command_writes_a_file_that_run_sample_runs(tmp_path, capsys):
    assert tiny.main([str(tmp_path)]) == 0
    path = tmp_path / "sd15-tiny-random-seed0.safetensors"
    assert f"wrote {path} (" in capsys.readouterr().out
    out = tmp_path / "out"
    argv = ["--weights", str(path), "--steps", "2", "--height", "64", "--width", "64", "--seed", "1"]
    assert run_sample([*argv, "--prompt", "a cat", "--out", str(out)]) == 0
    assert pixels(out / "1-a-cat.png").shape == (64, 64, 3)


def test_an_existing_file_is_never_replaced(tmp_path, capsys):
    tiny.write_tiny(tmp_path)
    before = (tmp_path / "sd15-tiny-random-seed0.safetensors").read_bytes()
    assert tiny.main([str(tmp_path)]) == 2
    assert "exists; pass another folder" in capsys.readouterr().err
    assert (tmp_path / "sd15-tiny-random-seed0.safetensors").read_bytes() == before
