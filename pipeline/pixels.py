"""Images as the VAE sees them ([-1, 1] floats) and as files hold them (uint8 RGB)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

import safeio

# [-1, 1] -> 0..255: diffusers rounds; the authors' code truncates (`.astype(uint8)`), and their FIDs
# were computed on truncated images (docs/recipe.md section 10): each pixel equal or one level darker.
QUANTIZATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "round": lambda x: (x / 2 + 0.5).clamp(0, 1).mul(255).round(),
    "truncate": lambda x: ((x + 1) / 2).clamp(0, 1).mul(255).floor(),
}


def quantize(x: torch.Tensor, quantization: str = "round") -> torch.Tensor:
    """Images in [-1, 1] -> uint8, by `quantization` (QUANTIZATIONS)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    return QUANTIZATIONS[quantization](x.float()).to(torch.uint8)


def unquantize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1], as diffusers' VaeImageProcessor: x / 255 * 2 - 1."""
    return pixels.float() / 255 * 2 - 1


def read_image(path: str | os.PathLike, what: str = "init_image") -> torch.Tensor:
    """An image file as uint8 [3, H, W] RGB (an alpha channel is dropped); `what` is the input that
    named it."""
    try:
        with safeio.open_regular(path) as file, Image.open(file) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise safeio.InputError(
            f"cannot read {{{what}}} {{path}} as an image: {{reason}}", path=path, reason=safeio.reason(err)
        ) from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
