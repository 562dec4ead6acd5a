"""Which model to run: weights by path or Hub id, the device and dtype, and the model families the
pipeline knows (what differs between them: default size, the paper's rows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import weights
from weights.errors import WeightsError
from weights.hub import SD15_FILE, SD15_REPO, hub_file, is_local_path, parse_hub_spec

DEFAULT_WEIGHTS = SD15_REPO  # its file SD15_FILE: the pruned EMA-only fp32 release, 4.27 GB
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Family:
    """A kind of model `weights.load` reads, as generation sees it."""

    kind: str  # sd.kind
    label: str
    size: int  # default image side in pixels


FAMILIES = {"sd1": Family("sd1", "SD 1.x", 512)}


def family(sd: weights.StableDiffusion) -> Family:
    if sd.kind not in FAMILIES:
        raise WeightsError(
            f"{sd.source} holds an {sd.kind} model; generation runs {', '.join(FAMILIES)} models only"
        )
    return FAMILIES[sd.kind]


def resolve_weights(spec: str) -> Path:
    """A local file or folder as it is; a Hub id (org/name[@rev][/file]) through the Hugging Face cache.
    The SD 1.5 repo without a file name means its v1-5-pruned-emaonly.safetensors."""
    if is_local_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise WeightsError(
                f"weights {spec} not found: pass --weights PATH to a .safetensors file or diffusers folder, "
                f"or a Hub id such as {SD15_REPO}"
            )
        return path
    repo_id, filename, revision = parse_hub_spec(spec)
    if filename is None:
        if repo_id != SD15_REPO:
            raise WeightsError(f"{spec} names a Hub repo but no file in it: write {repo_id}/FILE.safetensors")
        filename = SD15_FILE
    return hub_file(repo_id, filename, revision)


def model_name(path: Path) -> str:
    """The display name of a set of weights: the file's stem or the folder's name."""
    return path.resolve().name if path.is_dir() else path.stem


def load_model(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, compile: bool = False
) -> tuple[weights.StableDiffusion, Path]:
    """(model, path) for a local path or Hub id; refuses a kind generation does not run. `compile`
    applies torch.compile to the U-Net in place."""
    path = resolve_weights(spec)
    sd = weights.load(path, device=device, dtype=dtype)
    family(sd)
    if compile:
        sd.unet.compile()
    return sd, path


def parse_device(spec: str | None) -> torch.device:
    """--device as a torch.device (default cuda if there is one), refused if this machine lacks it."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"--device {spec} is not a torch device ({reason}); use e.g. cpu or cuda") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise ValueError(f"--device {spec} is not available on this machine; use --device cpu")
    return device


def default_dtype(device: torch.device) -> str:
    """float16 on a GPU, float32 on the CPU."""
    return "float32" if device.type == "cpu" else "float16"
