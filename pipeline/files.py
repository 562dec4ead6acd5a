"""Output files: PNGs written atomically and never over an existing file."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin


def save_png(image: torch.Tensor, directory: str | os.PathLike, stem: str, metadata: dict[str, str]) -> Path:
    """Write uint8 [3, H, W] as `directory/stem.png` with text chunks `metadata`, atomically and never
    over an existing file: into a temporary file in the same folder, then hard-linked to the first
    free name of stem.png, stem-1.png, stem-2.png, ... (a link, unlike a rename, fails if it exists)."""
    directory = Path(directory)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)  # Pillow writes iTXt (UTF-8) where latin-1 tEXt cannot hold the text
    temporary = directory / f".{stem}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never clobber; mode 0o666 under the umask, as any file the user creates
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8), "RGB").save(
                file, format="PNG", pnginfo=info
            )
            file.flush()
            os.fsync(file.fileno())
        n = 0
        while True:
            target = directory / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
            try:
                os.link(temporary, target)
                return target
            except FileExistsError:
                n += 1
    finally:
        temporary.unlink(missing_ok=True)


def image_stem(prompt: str, seed: int) -> str:
    """`{seed}-{prompt as a slug}`, e.g. 42-a-photo-of-a-cat."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].strip("-")
    return f"{seed}-{slug or 'image'}"


def prepare_output(directory: str | os.PathLike) -> Path:
    """Create the output folder and prove it writable, before minutes are spent loading weights."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test.{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        reason = err.strerror or " ".join(str(err).split())
        raise OSError(
            f"cannot write to the output folder {directory}: {reason}; pass --out DIR with a writable folder"
        ) from None
    return directory
