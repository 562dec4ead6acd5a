"""Official SD 1.x and SDXL checkpoints into this project's models: `weights.load(path)` (the loader:
weights/load.py; the families it reads: weights/families.py)."""

from weights.errors import WeightsError
from weights.families import FAMILIES, Family
from weights.hub import hub_file
from weights.load import (
    Checkpoint,
    StableDiffusion,
    fetch_folder,
    folder_files,
    kind,
    load,
    read_checkpoint,
)

__all__ = [
    "FAMILIES",
    "Checkpoint",
    "Family",
    "StableDiffusion",
    "WeightsError",
    "fetch_folder",
    "folder_files",
    "hub_file",
    "kind",
    "load",
    "read_checkpoint",
]
