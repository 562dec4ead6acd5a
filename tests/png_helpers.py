"""Reading back the PNGs the commands write: pixels and text chunks."""

from pathlib import Path

import numpy as np
from PIL import Image


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def text_chunks(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)
