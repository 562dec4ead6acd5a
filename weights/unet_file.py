"""A U-Net file that replaces a checkpoint's U-Net (SDXL-Lightning's `*_unet.safetensors`, DMD2's
`*_unet_fp16.bin`): `weights.unet_file.load(path, "sdxl", dtype)` -> a UNet.

Read: a U-Net state dict in the diffusers layout or the original LDM / sgm one (with or without
`model.diffusion_model.`), as `.safetensors`, or as a PyTorch pickle (`.bin`, `.pt`, `.pth`) that
loads only through PyTorch's weights-only unpickler, memory-mapped
(`torch.load(path, weights_only=True, mmap=True)`): it rebuilds tensors, dicts and plain values and
calls nothing else, so no code in the file runs; a file holding anything but named tensors is refused.
The U-Net must be of the model's family (an SDXL U-Net has the added condition `label_emb`) and
complete; its configuration comes from its shapes (weights/detect.py), the heads from the family.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from model.unet import UNet, UNetConfig
from weights import detect, keymaps
from weights.checkpoint import PICKLE_SUFFIXES, assign, empty_modules, read_header, read_tensors, unloaded
from weights.errors import WeightsError
from weights.families import FAMILIES, UNET_PREFIX
from weights.fingerprint import file_sha256

SHOWN = 3  # key names quoted in a message
DIFFUSERS_STARTS = ("conv_in.", "down_blocks.", "mid_block.", "up_blocks.", "time_embedding.")


def load(
    path: str | Path, kind: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> UNet:
    """The U-Net of a U-Net file, for a model of family `kind` ("sd1" or "sdxl"), in `dtype` on `device`,
    frozen and in eval mode. WeightsError (one line, naming the file) for anything else."""
    config, state = read(path, kind, dtype, device)
    with empty_modules():
        unet = UNet(config)
    for name, tensor in state.items():
        assign(unet, name, tensor)
    left = unloaded(unet)
    if left:
        raise RuntimeError(f"the U-Net has tensors outside its state dict, never loaded: {left[:SHOWN]}")
    return unet.eval()


def read(
    path: str | Path, kind: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """The configuration and the state dict, in the project's (LDM) names, of a U-Net file, checked
    for the family `kind`, in `dtype` (None: the file's) on `device`. As weights.load does, tensors
    already in their dtype on the CPU are mapped from the file, the others converted one at a time."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: pass a U-Net .safetensors (or weights-only .bin) file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        tensors = _unpickled(path)
        shapes = {key: tuple(t.shape) for key, t in tensors.items()}
    else:
        header = read_header(path)
        tensors, shapes = None, header.shapes()
    keys = [key for key in shapes if not keymaps.ignored(key)]
    prefixed = [key for key in keys if key.startswith(UNET_PREFIX)]
    if prefixed and len(prefixed) != len(keys):
        other = next(key for key in keys if not key.startswith(UNET_PREFIX))
        raise WeightsError(
            f"{path} holds more than a U-Net ({other}); pass a full checkpoint as the model, not as the U-Net"
        )
    dtypes = {key: (tensors[key] if tensors is not None else header.tensors[key]).dtype for key in keys}
    stored = next((key for key in keys if not dtypes[key].is_floating_point), None)
    if stored is not None:
        raise WeightsError(
            f"{path}: {stored} is stored as {str(dtypes[stored]).removeprefix('torch.')}, but a U-Net's "
            "weights are floating point; the file is corrupt or was converted wrongly"
        )
    names = {key: key.removeprefix(UNET_PREFIX) for key in keys}
    diffusers = any(name.startswith(DIFFUSERS_STARTS) for name in names.values())
    rules = (keymaps.diffusers_unet if diffusers else keymaps.ldm_unet)(names.values())
    targets = {key: rules[names[key]][0].name for key in keys}
    parameters = {name: shapes[key] for key, name in targets.items()}
    detect.refuse_other_unets(parameters, path)
    has_label_emb = "label_emb.0.0.weight" in parameters
    family = FAMILIES["sdxl" if has_label_emb else "sd1"]
    if family.name != kind:
        raise WeightsError(
            f"{path} holds an {family.label} U-Net ({'with' if has_label_emb else 'without'} the added "
            f"condition label_emb) but the model is {FAMILIES[kind].label}; pass a U-Net made for it"
        )
    try:
        config = detect.unet_config(parameters, family.unet_heads)
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None
    _check(path, config, parameters)
    if tensors is None:
        infos = [(key, header.tensors[key]) for key in keys]
        read_back = read_tensors(path, infos, dtype, device, header.stamp)
        return config, {targets[key]: tensor for key, tensor in read_back}
    return config, {targets[key]: tensors[key].to(device=device, dtype=dtype) for key in keys}


def _unpickled(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict through the weights-only unpickler, memory-mapped: names -> tensors only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as error:
        reason = " ".join(str(error).split())[:200]
        raise WeightsError(
            f"{path} is not a weights-only PyTorch zip file of tensors ({reason}); it is not opened further: "
            "use the model's .safetensors release or convert the file in an environment you trust"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
    for key, value in state.items():
        if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
            raise WeightsError(
                f"{path}: its entry {key!r} is a {type(value).__name__}, not a tensor; a U-Net file "
                "holds only named tensors"
            )
    return state


def _check(path: Path, config: UNetConfig, parameters: dict[str, tuple[int, ...]]) -> None:
    """Missing, unexpected and mis-shaped tensors against the U-Net the shapes describe."""
    with empty_modules():
        expected = {name: tuple(t.shape) for name, t in UNet(config).state_dict().items()}
    missing = sorted(expected.keys() - parameters.keys())
    unexpected = sorted(parameters.keys() - expected.keys())
    if missing or unexpected:
        found = [
            f"{len(names)} {what} ({', '.join(names[:SHOWN])})"
            for names, what in ((missing, "missing"), (unexpected, "unexpected"))
            if names
        ]
        raise WeightsError(
            f"{path} is not a complete U-Net: {' and '.join(found)} tensors; the file is incomplete or holds "
            "another model"
        )
    for name, shape in parameters.items():
        if shape != expected[name]:
            raise WeightsError(
                f"{path}: {name} has shape {list(shape)} but the U-Net inferred from the file needs "
                f"{list(expected[name])}; the file is corrupt or mixes models"
            )


def record(path: str | Path) -> dict:
    """What a run records of the U-Net file it used: its name and sha256."""
    return {"file": Path(path).name, "sha256": file_sha256(path)}
