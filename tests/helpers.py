"""Helpers the tests share: the error measure of the parity checks, reading back PNGs, one CPU thread."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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
