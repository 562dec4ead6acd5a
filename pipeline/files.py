"""A run's files: the prompt list it reads; the PNGs it writes, atomically and never over an existing
file, and the output folder checked (writable, room for an image) before minutes go into loading
weights."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

import safeio

# A PNG is at most its raw pixels plus zlib's and the chunks' overhead (stored blocks: 5 bytes per
# 64 KiB, a filter byte per row) and the metadata; twice the raw size bounds it with room to spare.
PNG_BOUND_FACTOR = 2
METADATA_BOUND = 1 << 20  # Pillow refuses text chunks over 1 MiB when reading them back


def read_prompts(path: str | os.PathLike) -> list[str]:
    """A prompts file: one prompt per line, blank lines skipped."""
    try:
        lines = safeio.read_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise safeio.InputError(
            "cannot read {prompts} {path}: {reason}", path=path, reason=safeio.reason(err)
        ) from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise safeio.InputError("{prompts} {path} holds no prompt; write one per line", path=path)
    return prompts


def save_png(image: torch.Tensor, directory: str | os.PathLike, stem: str, metadata: dict[str, str]) -> Path:
    """Write uint8 [3, H, W] as `directory/stem.png` with text chunks `metadata`, atomically and never
    over an existing file: the first free name of stem.png, stem-1.png, stem-2.png, ...
    (`safeio.write_atomically`)."""
    directory = Path(directory)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)  # Pillow writes iTXt (UTF-8) where latin-1 tEXt cannot hold the text
    pixels = Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8), "RGB")
    others = (directory / f"{stem}-{n}.png" for n in itertools.count(1))
    return safeio.write_atomically(
        directory / f"{stem}.png",
        lambda file: pixels.save(file, format="PNG", pnginfo=info),
        replace=False,
        alternatives=others,
    )


def image_stem(prompt: str, seed: int) -> str:
    """`{seed}-{prompt as a slug}`, e.g. 42-a-photo-of-a-cat."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].strip("-")
    return f"{seed}-{slug or 'image'}"


def prepare_output(directory: str | os.PathLike) -> Path:
    """Create the output folder and prove it writable, before minutes are spent loading weights; the
    temporary files an earlier, killed run left there are removed."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test.{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise safeio.NoRoom(
            "cannot write to the output folder {directory}: {reason}; give {out} a writable folder",
            directory=directory,
            reason=safeio.reason(err),
        ) from None
    safeio.remove_stale(directory)
    return directory


def png_bound(height: int, width: int) -> int:
    """Bytes one PNG of this size can take at most (pixels and metadata)."""
    return PNG_BOUND_FACTOR * 3 * height * width + METADATA_BOUND


def check_free_space(directory: Path, height: int, width: int, images: int = 1) -> None:
    """Refuse a folder whose disk has no room for one image (and say how many it takes)."""
    free = shutil.disk_usage(directory).free
    need = png_bound(height, width)
    if free < need:
        raise safeio.NoRoom(
            "{directory}: No space left for even one {width}x{height} image ({free} bytes free, up to "
            "{need} needed per image, {images} images to write); free space or give another {out}",
            directory=directory,
            width=width,
            height=height,
            free=free,
            need=need,
            images=images,
        )
