"""Image folders -> batches in the FID Inception's input convention, under one of two protocols.

`paper`: the paper's evaluation protocol (pytorch-fid semantics). Every image is brought to 512 x 512
    with PIL bicubic and no crop (a no-op for the 512 px generations; the real COCO images are
    squashed, not cropped), kept as uint8, scaled to [0, 1]; the network resizes bilinearly to 299.
`clean`: clean-fid's "clean" mode (Parmar et al. 2022) after the preparation GigaGAN's COCO
    evaluation applies to both sets: center crop to the short side's square, PIL Lanczos to
    256 x 256 (uint8), then per channel in float32 ("F" mode) PIL bicubic to 299 x 299, clipped to
    [0, 255]. clean-fid feeds the network (x - 128) / 128; passing x / 256 to a network that computes
    2 x - 1 is the same map, and its bilinear resize from 299 to 299 is the identity.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import safeio

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")  # pytorch-fid's set
PAPER_SIZE = 512
CLEAN_CROP_SIZE = 256
CLEAN_SIZE = 299


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist; pass a folder of PNG/JPEG images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"no images ({', '.join(SUFFIXES)}) in {folder}")
    return paths


def load_rgb(path: Path) -> Image.Image:
    """An image file as RGB; ValueError naming the file for one that cannot be read (not an image,
    truncated, or over Pillow's decompression-bomb limit of ~179 million pixels)."""
    try:
        with safeio.open_regular(path) as file, Image.open(file) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        reason = (
            error.strerror if isinstance(error, OSError) and error.strerror else " ".join(str(error).split())
        )
        raise ValueError(f"cannot read the image {path}: {reason}; remove or replace it") from None


def center_crop_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left = (image.width - side) // 2
    top = (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def paper_view(image: Image.Image) -> np.ndarray:
    """[512, 512, 3] float32 in [0, 1]: PIL bicubic to 512 x 512, no crop, uint8 as PIL rounds it."""
    if image.size != (PAPER_SIZE, PAPER_SIZE):
        image = image.resize((PAPER_SIZE, PAPER_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255


def clean_view(image: Image.Image) -> np.ndarray:
    """[299, 299, 3] float32, x / 256 of clean-fid's [0, 255] float image (see the module docstring)."""
    square = center_crop_square(image).resize((CLEAN_CROP_SIZE, CLEAN_CROP_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(square, dtype=np.float32)
    # a 2-D float32 array becomes a PIL "F" (32-bit float) image: no quantisation before resizing
    channels = [
        np.asarray(
            Image.fromarray(pixels[:, :, c]).resize((CLEAN_SIZE, CLEAN_SIZE), Image.Resampling.BICUBIC)
        )
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255) / 256


VIEWS: dict[str, Callable[[Image.Image], np.ndarray]] = {"paper": paper_view, "clean": clean_view}


def image_batches(
    paths: list[Path], protocol: str, batch_size: int, workers: int = 4
) -> Iterator[torch.Tensor]:
    """Float32 batches [B, 3, H, W] for FIDInception, in the order of `paths`.

    Decoding and resizing run in threads (PIL releases the GIL); one batch is held at a time.
    """
    if protocol not in VIEWS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(VIEWS)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    view = VIEWS[protocol]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            arrays = list(pool.map(lambda p: view(load_rgb(p)), paths[start : start + batch_size]))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
