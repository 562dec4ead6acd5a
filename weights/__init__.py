"""Official SD 1.x checkpoints into this project's models: `weights.load(path)`.

Two layouts are read (docs/model-facts.md sections 1, 3, 4, 7, 8):

- an LDM single file `*.safetensors`: `model.diffusion_model.*` (U-Net), `first_stage_model.*` (VAE),
  `cond_stage_model.transformer.*` (CLIP text, HF names), plus schedule buffers such as `alphas_cumprod`;
- a diffusers folder: `unet/`, `vae/`, `text_encoder/` (weights and config.json each), optionally
  `tokenizer/` (vocab.json + merges.txt) and `scheduler/scheduler_config.json`.

Everything that can be checked from the headers and configs is checked before a tensor is read:
file integrity, model kind, missing, unexpected and mis-shaped tensors. Then the modules, built on
the `meta` device, receive the file's tensors one at a time (weights/checkpoint.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.unet import UNet
from schedule import DiscreteSchedule
from text_encoder import CLIPTextModel, Tokenizer
from vae import AutoencoderKL
from weights import detect, keymaps
from weights.checkpoint import (
    Header,
    assign,
    empty_modules,
    read_header,
    read_tensors,
    refuse_pickle,
    unloaded,
)
from weights.errors import WeightsError
from weights.hub import hub_file, is_local_path

__all__ = ["StableDiffusion", "WeightsError", "hub_file", "load"]

COMPONENTS = ("unet", "vae", "text_encoder")
LABELS = {"unet": "U-Net", "vae": "VAE", "text_encoder": "text encoder"}
WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
HALF = (torch.float16, torch.bfloat16)
SHOWN = 5  # key names quoted in an error message


@dataclass
class StableDiffusion:
    """A loaded SD model: every module in eval mode, frozen, on one device in one dtype."""

    kind: str  # "sd1"
    tokenizer: Tokenizer
    text_encoder: CLIPTextModel
    unet: UNet
    vae: AutoencoderKL
    schedule: DiscreteSchedule
    source: Path

    def encode_prompt(self, prompts: str | list[str]) -> torch.Tensor:
        """Prompts -> the U-Net's context [B, 77, 768]: the text encoder's last layer after its final LN."""
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(prompts).to(device)
        with torch.no_grad():
            return self.text_encoder(ids)


@dataclass
class _Part:
    """One model of the checkpoint: the file holding it and which file key fills each tensor name."""

    component: str
    header: Header
    names: dict[str, str]  # LDM-style tensor name -> key in the file
    shown_prefix: str  # how key names are quoted in messages


def load(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusion:
    """Load an SD 1.x checkpoint: a single LDM `.safetensors` file or a diffusers folder.

    Floating tensors are converted to `dtype` one at a time as they are read; on the CPU, tensors
    already in `dtype` are mapped from the file instead (copy-on-write), so replace a loaded file by
    renaming a new one into place, never by overwriting it while the model is in use.

    In a diffusers folder with both `*.safetensors` and `*.fp16.safetensors` weights, float32 (or
    float64) loads the full-precision files and float16/bfloat16 the `.fp16` ones; when only one of
    them exists, it is used.
    Raises WeightsError with a one-line message when the path is missing, not a safetensors SD 1.x
    checkpoint, corrupt, or does not match the architecture inferred from its shapes.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float16, got {dtype!r}")
    source = Path(path).expanduser()
    if not source.exists():
        hint = "" if is_local_path(str(path)) else "; for a Hub id, fetch it first with weights.hub_file"
        raise WeightsError(f"{source} does not exist: pass a .safetensors file or a diffusers folder{hint}")
    if source.is_dir():
        parts, configs, tokenizer, schedule = _diffusers_folder(source, dtype)
    else:
        parts, configs, tokenizer, schedule = _single_file(source)

    with empty_modules():
        modules = {
            "unet": UNet(configs["unet"]),
            "vae": AutoencoderKL(configs["vae"]),
            "text_encoder": CLIPTextModel(configs["text_encoder"]),
        }
    for part in parts:
        _check_tensors(part, modules[part.component])
    _fill(parts, modules, dtype, torch.device(device))
    return StableDiffusion(
        "sd1", tokenizer, modules["text_encoder"], modules["unet"], modules["vae"], schedule, source
    )


def _single_file(path: Path) -> tuple[list[_Part], dict, Tokenizer, DiscreteSchedule]:
    header = read_header(path)
    detect.refuse_other_single_files(header.shapes(), path)
    names: dict[str, dict[str, str]] = {component: {} for component in COMPONENTS}
    stray = []
    for key in header.tensors:
        if keymaps.ignored(key):
            continue
        found = keymaps.split_single_file(key)
        if found is None:
            stray.append(key)
        else:
            names[found[0]][found[1]] = key
    if stray:
        raise WeightsError(
            f"{path} has {_count(stray, 'unexpected key')} outside the U-Net, VAE and text "
            f"encoder: {_first(stray)}; it is not a plain SD 1.x checkpoint"
        )
    for component, prefix in keymaps.PREFIXES.items():
        if not names[component]:
            raise WeightsError(
                f"{path} has no {LABELS[component]} (no key starts with {prefix}); "
                "pass a complete SD 1.x checkpoint"
            )
    parts = [_Part(c, header, names[c], keymaps.PREFIXES[c]) for c in COMPONENTS]
    shapes = {part.component: _shapes(part) for part in parts}
    detect.refuse_other_unets(shapes["unet"], path)
    with _naming(path):
        configs = {
            "unet": detect.unet_config(shapes["unet"]),
            "vae": detect.vae_config(shapes["vae"]),
            "text_encoder": detect.clip_config(shapes["text_encoder"]),
        }
    return parts, _checked(configs, path), Tokenizer.sd1(), _file_schedule(header)


def _file_schedule(header: Header) -> DiscreteSchedule:
    """The file's `alphas_cumprod` buffer when it has one, else SD's standard schedule."""
    info = header.tensors.get("alphas_cumprod")
    if info is None:
        return DiscreteSchedule.sd()
    [(_, alphas_cumprod)] = read_tensors(header.path, [("alphas_cumprod", info)], torch.float64)
    try:
        return DiscreteSchedule(alphas_cumprod)
    except ValueError as error:
        raise WeightsError(f"{header.path}: its alphas_cumprod is not a noise schedule ({error})") from None


def _diffusers_folder(
    folder: Path, dtype: torch.dtype
) -> tuple[list[_Part], dict, Tokenizer, DiscreteSchedule]:
    configs_json = {c: _json(folder / c / "config.json") for c in COMPONENTS if (folder / c).is_dir()}
    detect.refuse_other_folders(configs_json, (folder / "text_encoder_2").is_dir(), folder)
    files = {c: _weights_file(folder, c, dtype) for c in COMPONENTS}
    headers = {c: read_header(files[c]) for c in COMPONENTS}
    renames = {
        "unet": keymaps.diffusers_unet(headers["unet"].tensors),
        "vae": keymaps.diffusers_vae(headers["vae"].tensors),
        "text_encoder": {key: key for key in headers["text_encoder"].tensors},
    }
    parts = [
        _Part(c, headers[c], {name: key for key, name in renames[c].items() if not keymaps.ignored(key)}, "")
        for c in COMPONENTS
    ]
    shapes = {part.component: _shapes(part) for part in parts}
    detect.refuse_other_unets(shapes["unet"], folder)
    text = configs_json["text_encoder"]
    with _naming(folder):
        configs = {
            "unet": detect.unet_config(shapes["unet"], detect.unet_heads(configs_json["unet"])),
            "vae": detect.vae_config(
                shapes["vae"], configs_json["vae"].get("scaling_factor", detect.SD1_LATENT_SCALE)
            ),
            "text_encoder": detect.clip_config(
                shapes["text_encoder"],
                text.get("num_attention_heads"),
                text.get("hidden_act", "quick_gelu"),
                text.get("layer_norm_eps", 1e-5),
            ),
        }
    scheduler = folder / "scheduler" / "scheduler_config.json"
    schedule = DiscreteSchedule.sd()
    if scheduler.exists():
        schedule = detect.schedule_from_config(_json(scheduler), scheduler)
    return parts, _checked(configs, folder), _folder_tokenizer(folder), schedule


def _weights_file(folder: Path, component: str, dtype: torch.dtype) -> Path:
    """`{component}/{stem}.safetensors` or `.fp16.safetensors`, the one matching dtype first."""
    stem = folder / component / WEIGHT_STEMS[component]
    full, half = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".fp16.safetensors")
    for candidate in (half, full) if dtype in HALF else (full, half):
        if candidate.is_file():
            return candidate
    for pickle in (stem.with_name(stem.name + ".bin"), stem.with_name(stem.name + ".fp16.bin")):
        if pickle.is_file():
            refuse_pickle(pickle)
    singles = sorted(folder.glob("*.safetensors"))
    hint = f"; to load the single file in it, pass {singles[0]}" if len(singles) == 1 else ""
    raise WeightsError(f"{folder} is not a complete diffusers folder: {_missing(folder, full)}{hint}")


def _folder_tokenizer(folder: Path) -> Tokenizer:
    """tokenizer/vocab.json + merges.txt; without a tokenizer/ folder, the vendored CLIP vocabulary."""
    vocab, merges = folder / "tokenizer" / "vocab.json", folder / "tokenizer" / "merges.txt"
    if vocab.is_file() and merges.is_file():
        try:
            return Tokenizer.from_files(vocab, merges)
        except (ValueError, json.JSONDecodeError) as error:
            raise WeightsError(f"{folder / 'tokenizer'} holds no CLIP vocabulary ({error})") from None
    if vocab.is_file() or merges.is_file():
        missing = merges if vocab.is_file() else vocab
        raise WeightsError(f"{missing} is missing (its partner is there); restore it or delete tokenizer/")
    return Tokenizer.sd1()


@contextmanager
def _naming(source: Path) -> Iterator[None]:
    """Prefix the errors of config inference with the file or folder they are about."""
    try:
        yield
    except WeightsError as error:
        raise WeightsError(f"{source}: {error}") from None


def _missing(folder: Path, path: Path) -> str:
    return f"{path.relative_to(folder)} is missing"


def _json(path: Path) -> dict:
    """A config file; a missing one means an incomplete folder."""
    if not path.is_file():
        raise WeightsError(
            f"{path.parent.parent} is not a complete diffusers folder: {_missing(path.parent.parent, path)}"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not valid JSON ({error}); re-download it") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} is not a JSON object; re-download it")
    return config


def _shapes(part: _Part) -> dict[str, tuple[int, ...]]:
    return {name: part.header.tensors[key].shape for name, key in part.names.items()}


def _checked(configs: dict, source: Path) -> dict:
    """The U-Net must attend to features as wide as the text encoder's."""
    context, width = configs["unet"].context_dim, configs["text_encoder"].hidden_size
    if context != width:
        raise WeightsError(
            f"{source} mixes models: the U-Net attends to {context}-wide text features but the text "
            f"encoder is {width} wide"
        )
    return configs


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _first(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def _check_tensors(part: _Part, module: nn.Module) -> None:
    """Missing, unexpected and mis-shaped tensors, from the header alone."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    source, label = part.header.path, LABELS[part.component]
    missing = sorted(part.shown_prefix + name for name in expected.keys() - part.names.keys())
    unexpected = sorted(key for name, key in part.names.items() if name not in expected)
    if missing or unexpected:
        found = [f"{_count(missing, 'missing key')} ({_first(missing)})"] if missing else []
        found += [f"{_count(unexpected, 'unexpected key')} ({_first(unexpected)})"] if unexpected else []
        raise WeightsError(
            f"{source} does not match the SD 1.x {label} inferred from its shapes: "
            f"{' and '.join(found)}; the file is incomplete or holds another model"
        )
    for name, shape in expected.items():
        key = part.names[name]
        got = part.header.tensors[key].shape
        if got != shape and not (keymaps.linear_as_conv(name) and (*got, 1, 1) == shape):
            raise WeightsError(
                f"{source}: {key} has shape {list(got)} but the SD 1.x {label} inferred from the file "
                f"needs {list(shape)}; the file is corrupt or mixes models"
            )


def _fill(
    parts: list[_Part], modules: dict[str, nn.Module], dtype: torch.dtype, device: torch.device
) -> None:
    """Read each file once, in file order, placing every tensor as soon as it is converted."""
    by_file: dict[Path, list[_Part]] = {}
    for part in parts:
        by_file.setdefault(part.header.path, []).append(part)
    for path, file_parts in by_file.items():
        targets = {key: (modules[p.component], name) for p in file_parts for name, key in p.names.items()}
        tensors = file_parts[0].header.tensors
        for key, tensor in read_tensors(path, [(key, tensors[key]) for key in targets], dtype, device):
            assign(*targets[key], tensor)
    for component, module in modules.items():
        left = unloaded(module)
        if left:
            raise RuntimeError(
                f"the {LABELS[component]} has tensors outside its state dict, never loaded: {_first(left)}"
            )
        module.eval()
