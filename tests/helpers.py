"""Helpers the tests share: the error measure of the parity checks, reading back PNGs, checking
weights.load's refusals and key layouts, running a command's main(), one CPU thread."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import weights
from model import UNet, UNetConfig


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|, computed in float64 (the measure every parity tolerance is stated in)."""
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def text_chunks(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


def snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def refused(path: Path, match: str, **kwargs) -> str:
    """weights.load(path) raises WeightsError with a one-line message matching `match` and changes
    nothing on disk."""
    before = snapshot(path.parent)
    with pytest.raises(weights.WeightsError, match=match) as info:
        weights.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert snapshot(path.parent) == before
    return message


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in module.state_dict().items()}


def mapped_shapes(layout, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The parameter shapes a layout's rules (weights/keymaps.py) make of a file's tensor shapes."""
    rules = layout(shapes)
    return {target.name: target.shape(shapes[key]) for key, targets in rules.items() for target in targets}


def run_main(main, capsys, *argv: str) -> tuple[int, str, str]:
    """A command's main() as the shell sees it: exit status (argparse exits by SystemExit), stdout, stderr."""
    try:
        code = main([*argv])
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread inside the block: many small float64 ops run faster so on a shared
    machine, and float sums round the same in every process (torchrun's children get one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_unet(context_dim: int = 8) -> UNet:
    """The U-Net the tracing tests compile: three levels so both FreeU stages (4x and 2x model
    channels) occur; one ResBlock per level and attention only at level 0 and in the middle, to keep
    tracing cheap (about 6 s a dynamo trace on one core, a fifth of the checkpoint models')."""
    config = UNetConfig(
        model_channels=16,
        channel_mult=(1, 2, 4),
        num_res_blocks=1,
        transformer_depth=(1, 0, 0),
        num_heads=2,
        context_dim=context_dim,
        norm_groups=8,
    )
    return UNet(config).eval()
