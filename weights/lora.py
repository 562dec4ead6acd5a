"""LoRA (low-rank adapter) files merged into a loaded model's weights:

    lora = weights.lora.read(path)                    # parsed and checked, values included
    weights.lora.merge(sd, [(lora, 1.0), (other, 0.5)])   # into sd.unet / sd.text_encoder(_2), in place
    weights.lora.record(lora, 1.0)                    # {"file", "sha256", "strength"}, for the PNG
    weights.lora.check(modules, "sd1", [(lora, 1.0)])  # merge's refusals, on modules still on meta

Formats (../shared/reference/distilled-and-guidance.md section 4): kohya / A1111 (`lora_unet_*`,
`lora_te_*`, `lora_te1_*`, `lora_te2_*` with `.lora_down.weight`, `.lora_up.weight`, optional `.alpha`
and `.lora_mid.weight`), U-Net names in the diffusers tree (SD 1.x, DMD2's SDXL LoRA) or the LDM one
(SDXL); PEFT (`unet.*`, `text_encoder.*`, `text_encoder_2.*` or no prefix, `.lora_A.weight` /
`.lora_B.weight`, alpha in the header's `lora_adapter_metadata`) and the older diffusers
`.lora.down.weight` / `.lora.up.weight` (text encoders: `.lora_linear_layer.down/up`). Linear and
conv layers alike (LoCon: down [r, in, kh, kw], up [out, r, 1, 1]).

The merge: W <- W + strength * scale * (up.flatten(1) @ down.flatten(1)).reshape(W.shape), with
scale = alpha / r (r the rows of down; 1 without alpha; alpha / sqrt(r) for rsLoRA), computed in
float32 (one GEMM accumulating into W, or into a float32 copy of it that is cast back) one layer at a
time, as the LoRA's tensors stream from the file: no cost per step, and the extra memory is the
largest weight in float32 and one layer's LoRA tensors. With a `lora_mid` [r, r, kh, kw]
(Tucker), down [r, in, 1, 1] is contracted with it first. Several LoRAs add up, each in turn.

Everything that can be wrong is refused (WeightsError, one line naming the file and the key) before
any weight changes: a key no format knows, a layer without its down or up, ranks that disagree,
non-finite values (`read`); a layer the model does not have, one of the other family, a shape that
does not fit, a non-finite strength (`merge`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from weights import lora_keys
from weights.checkpoint import Header, empty_modules, read_header, read_tensors
from weights.errors import WeightsError
from weights.families import FAMILIES
from weights.fingerprint import file_sha256

if TYPE_CHECKING:
    from weights import StableDiffusion

_KOHYA = re.compile(
    r"(lora_unet_|lora_te1_|lora_te2_|lora_te_)(\w+)\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha)"
)
_PEFT = re.compile(
    r"(?:(unet|text_encoder_2|text_encoder)\.)?(.+?)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight"
    r"|lora\.up\.weight|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)"
)
ROLES = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_mid.weight": "mid",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down",
    "lora_linear_layer.up.weight": "up",
    "alpha": "alpha",
}
FORMATS = {"lora_A.weight": "peft", "lora_B.weight": "peft"} | dict.fromkeys(
    ("lora_down.weight", "lora_up.weight", "lora_mid.weight"), "kohya"
)  # else "diffusers"
METADATA_KEY = "lora_adapter_metadata"  # PEFT's LoraConfig, keys prefixed by the component
EXPECTED = (
    "expected kohya (lora_unet_*.lora_down.weight), PEFT (*.lora_A.weight) or diffusers "
    "(*.lora.down.weight) keys"
)


@dataclass(frozen=True)
class Layer:
    """One adapted layer: its file keys (`mid` optional), its name as the file spells it (component
    prefix removed), the rank r (rows of down) and alpha (None: scale 1)."""

    component: str  # "unet", "text_encoder" or "text_encoder_2"
    name: str
    down: str
    up: str
    mid: str | None
    rank: int
    alpha: float | None
    rslora: bool = False  # PEFT's rank-stabilised LoRA: scale alpha / sqrt(r)

    @property
    def scale(self) -> float:
        if self.alpha is None:
            return 1.0
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclass(frozen=True)
class LoRA:
    path: Path
    header: Header
    layers: tuple[Layer, ...]
    formats: tuple[str, ...]  # "kohya", "peft", "diffusers" (the older lora.down / lora.up)


def read(path: str | Path) -> LoRA:
    """Parse a LoRA `.safetensors` file and check it whole, values included (WeightsError otherwise)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: pass a LoRA .safetensors file")
    header = read_header(path)
    if not header.tensors:
        raise WeightsError(f"{path} holds no tensors, so it is not a LoRA; {EXPECTED}")
    groups: dict[tuple[str, str], dict[str, str]] = {}
    formats = set()
    for key in sorted(header.tensors):
        component, name, suffix = _parse(path, key)
        roles = groups.setdefault((component, name), {})
        role = ROLES[suffix]
        if role in roles:
            raise WeightsError(
                f"{path}: {key} and {roles[role]} are both the {role} of {name}; the file mixes formats"
            )
        roles[role] = key
        if role != "alpha":
            formats.add(FORMATS.get(suffix, "diffusers"))
    metadata = _peft_metadata(header)
    alphas = _values(header)
    layers = tuple(
        _layer(header, component, name, roles, alphas, metadata)
        for (component, name), roles in groups.items()
    )
    return LoRA(path, header, layers, tuple(sorted(formats)))


def _parse(path: Path, key: str) -> tuple[str, str, str]:
    """A key's component, layer name and suffix."""
    if "dora_scale" in key or "lora_magnitude_vector" in key:
        raise WeightsError(f"{path}: {key} belongs to a DoRA, which is not supported; pass a plain LoRA")
    if m := _KOHYA.fullmatch(key):
        return lora_keys.KOHYA_PREFIXES[m[1]], m[2], m[3]
    if m := _PEFT.fullmatch(key):
        return lora_keys.PEFT_PREFIXES[m[1] + "."] if m[1] else lora_keys.UNET, m[2], m[3]
    raise WeightsError(f"{path}: {key} is not a LoRA tensor ({EXPECTED}); the file is not a LoRA")


def _peft_metadata(header: Header) -> dict:
    raw = header.metadata.get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise WeightsError(f"{header.path}: its {METADATA_KEY} is not a JSON object; re-download the file")
    for key, value in metadata.items():
        if key.endswith(".use_dora") and value:
            raise WeightsError(
                f"{header.path}: its {METADATA_KEY} says {key}, a DoRA, which is not supported"
            )
    return metadata


def _values(header: Header) -> dict[str, float]:
    """Read every tensor once: refuse non-finite values; return the alphas by key."""
    alphas = {}
    for key, tensor in read_tensors(header.path, header.tensors.items(), stamp=header.stamp):
        if not torch.isfinite(tensor).all():
            raise WeightsError(f"{header.path}: {key} holds NaN or infinite values; the file is corrupt")
        if key.endswith(".alpha"):
            if tensor.numel() != 1:
                raise WeightsError(
                    f"{header.path}: {key} has shape {list(tensor.shape)}, not one number (alpha)"
                )
            alphas[key] = float(tensor.item())
    return alphas


def _metadata_alpha(metadata: dict, component: str, name: str) -> tuple[float | None, bool]:
    """PEFT's lora_alpha for a layer: its alpha_pattern entry (peft's rule: the pattern matches the end of
    the name at a dot), else the component's lora_alpha; and whether it is rsLoRA."""
    prefix = f"{component}."
    alpha = metadata.get(prefix + "lora_alpha")
    patterns = metadata.get(prefix + "alpha_pattern") or {}
    for pattern, value in patterns.items() if isinstance(patterns, dict) else ():
        if re.match(rf"(.*\.)?({pattern})$", name):
            alpha = value
            break
    return alpha, bool(metadata.get(prefix + "use_rslora"))


def _layer(
    header: Header, component: str, name: str, roles: dict[str, str], alphas: dict[str, float], metadata: dict
) -> Layer:
    path, tensors = header.path, header.tensors
    for role in ("down", "up"):
        if role not in roles:
            other = next(iter(roles.values()))
            raise WeightsError(f"{path}: {other} has no {role} weight beside it; the file is incomplete")
    down, up = tensors[roles["down"]], tensors[roles["up"]]
    for key in roles.values():
        if not tensors[key].dtype.is_floating_point:
            raise WeightsError(
                f"{path}: {key} is stored as {tensors[key].dtype}, not floating point; the file is corrupt"
            )
    if len(down.shape) not in (2, 4) or len(up.shape) != len(down.shape):
        raise WeightsError(
            f"{path}: {roles['down']} has shape {list(down.shape)} and {roles['up']} "
            f"{list(up.shape)}; a LoRA layer is two matrices (Linear) or two conv kernels"
        )
    rank = down.shape[0]
    inner = rank
    if "mid" in roles:
        mid = tensors[roles["mid"]].shape
        if len(mid) != 4 or mid[1] != rank or down.shape[2:] != (1, 1):
            raise WeightsError(
                f"{path}: {roles['mid']} has shape {list(mid)}, which does not fit {roles['down']} "
                f"{list(down.shape)} (a Tucker LoRA has down [r, in, 1, 1] and mid [r, r, kh, kw])"
            )
        inner = mid[0]
    if up.shape[1] != inner or up.shape[2:] not in ((), (1, 1)):
        raise WeightsError(
            f"{path}: {roles['up']} has shape {list(up.shape)} but {roles['down']} has rank {inner} "
            f"({list(down.shape)}); up must be [out, {inner}] or [out, {inner}, 1, 1]"
        )
    alpha, rslora = _metadata_alpha(metadata, component, name)
    if "alpha" in roles:
        alpha = alphas[roles["alpha"]]
    if alpha is not None and not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise WeightsError(f"{path}: the alpha of {roles['down']} is {alpha!r}, not a finite number")
    return Layer(component, name, roles["down"], roles["up"], roles.get("mid"), rank, alpha, rslora)


# --- merging ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Merge:
    layer: Layer
    parameter: nn.Parameter
    factor: float  # strength * scale


def components(model: StableDiffusion) -> dict[str, nn.Module]:
    """The modules of a loaded model a LoRA can adapt, by component."""
    found = {"unet": model.unet, "text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}
    return {name: module for name, module in found.items() if module is not None}


def merge(model: StableDiffusion, loras: Sequence[tuple[LoRA, float]]) -> None:
    """Add each LoRA, times its strength, into the weights of `model` (in place, see the module
    docstring). Every LoRA is checked against the model before any weight changes."""
    modules = components(model)
    plans = [_plan(lora, strength, modules, model.kind) for lora, strength in loras]
    with torch.no_grad():
        for lora, plan in zip((lora for lora, _ in loras), plans, strict=True):
            _merge(lora, plan)


def check(modules: Mapping[str, nn.Module], kind: str, loras: Sequence[tuple[LoRA, float]]) -> None:
    """Refuse what `merge` would refuse, against a model's modules by component (those of weights'
    Checkpoint, still on the meta device, do: only names and shapes are read)."""
    names = ("unet", "text_encoder", "text_encoder_2")
    adaptable = {name: modules[name] for name in names if name in modules}
    for lora, strength in loras:
        _plan(lora, strength, adaptable, kind)


def _plan(lora: LoRA, strength: float, modules: dict[str, nn.Module], kind: str) -> list[_Merge]:
    """Where each layer of the LoRA lands, checked; WeightsError for the first that does not."""
    path = lora.path
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise WeightsError(
            f"{path}: strength {strength!r} is not a finite number; give one such as 1.0 or 0.5"
        )
    targets = {c: _targets(c, m) for c, m in modules.items()}
    missing = [layer for layer in lora.layers if targets.get(layer.component, {}).get(layer.name) is None]
    if missing:
        raise WeightsError(_unmatched(lora, missing, kind))
    plan, seen = [], {}
    for layer in lora.layers:
        name = targets[layer.component][layer.name]
        parameter = modules[layer.component].get_parameter(name + ".weight")
        if (layer.component, name) in seen:
            raise WeightsError(
                f"{path}: {layer.down} and {seen[layer.component, name]} both adapt {name}; "
                "the file mixes two layouts"
            )
        seen[layer.component, name] = layer.down
        problem = _misfit(lora.header, layer, tuple(parameter.shape))
        if problem:
            label = FAMILIES[kind].label
            raise WeightsError(
                f"{path}: {layer.down} {problem} of the {label} model's {name}; "
                "the LoRA is made for another model"
            )
        plan.append(_Merge(layer, parameter, strength * layer.scale))
    return plan


@cache
def _family_names(kind: str) -> dict[str, frozenset[str]]:
    """Every spelling of every adaptable layer of the full-size model of a family (built on meta)."""
    from model.unet import UNet, UNetConfig
    from text_encoder import CLIPTextConfig, CLIPTextModel

    with empty_modules():
        found = {
            "unet": UNet(UNetConfig.sd1() if kind == "sd1" else UNetConfig.sdxl()),
            "text_encoder": CLIPTextModel(CLIPTextConfig.sd1()),
        }
        if kind == "sdxl":
            found["text_encoder_2"] = CLIPTextModel(CLIPTextConfig.bigg())
    return {c: frozenset(_targets(c, m)) for c, m in found.items()}


def _unmatched(lora: LoRA, missing: list[Layer], kind: str) -> str:
    """The message for layers the model has none of: the LoRA's family when it is the other one."""
    here = FAMILIES[kind]
    for other in FAMILIES.values():
        if other is here:
            continue
        names = _family_names(other.name)
        if all(layer.name in names.get(layer.component, ()) for layer in lora.layers):
            return (
                f"{lora.path}: {missing[0].down} adapts a layer of {other.label}, which this "
                f"{here.label} model does not have; the LoRA is made for {other.label}: load it on an "
                f"{other.label} model"
            )
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return (
        f"{lora.path}: {missing[0].down}{more} adapts a layer ({missing[0].name}) this "
        f"{here.label} model does not have; the LoRA is made for another model"
    )


def _targets(component: str, module: nn.Module) -> dict[str, str]:
    """Every spelling of each adaptable layer of `module` -> the layer's project name."""
    modules = lora_keys.adaptable((name, tuple(p.shape)) for name, p in module.named_parameters())
    blocks = module.config.num_res_blocks if component == lora_keys.UNET else None
    return lora_keys.spellings(component, modules, blocks)


def _misfit(header: Header, layer: Layer, weight: tuple[int, ...]) -> str | None:
    """Why the layer's product cannot be added to a weight of shape `weight`, or None."""
    down, up = header.tensors[layer.down].shape, header.tensors[layer.up].shape
    kernel = header.tensors[layer.mid].shape[2:] if layer.mid else down[2:]
    product = (up[0], down[1], *kernel)
    fits = product[0] == weight[0] and math.prod(product[1:]) == math.prod(weight[1:])
    if fits and len(weight) == 4 and kernel not in ((), (1, 1), weight[2:]):
        fits = False
    return None if fits else f"makes a {list(product)} update, which does not fit the {list(weight)} weight"


def factors(
    down: torch.Tensor, up: torch.Tensor, mid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's update as a product of two float32 matrices, up [out, r] @ down [r, in * kh * kw],
    after contracting a Tucker mid [r, r', kh, kw] with down [r', in, 1, 1] into [r, in, kh, kw]."""
    down = down.float()
    if mid is not None:
        down = torch.einsum("ijkl,jc->ickl", mid.float(), down.flatten(1))
    return up.float().flatten(1), down.flatten(1)


def _add(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, factor: float, workspace) -> None:
    """weight += factor * up @ down in float32: one GEMM accumulating into the weight when it is float32,
    else into its float32 copy in `workspace(numel, device)`, cast back once."""
    up, down = up.to(weight.device), down.to(weight.device)
    if weight.dtype == torch.float32 and weight.is_contiguous():
        weight.view(weight.shape[0], -1).addmm_(up, down, alpha=factor)
        return
    work = workspace(weight.numel(), weight.device).view(weight.shape[0], -1)
    work.copy_(weight.reshape(weight.shape[0], -1))
    work.addmm_(up, down, alpha=factor)
    weight.copy_(work.view(weight.shape))


def _merge(lora: LoRA, plan: list[_Merge]) -> None:
    """Stream the LoRA's tensors in file order and merge each layer once it is complete. Weights that
    are not float32 share one float32 workspace, the size of the largest: a fresh buffer per layer
    would cost the OS's page faults on every one of them (as much time as the GEMMs on a CPU)."""
    by_key = {}
    for merge in plan:
        for key in (merge.layer.down, merge.layer.up, merge.layer.mid):
            if key is not None:
                by_key[key] = merge
    largest = max((merge.parameter.numel() for merge in plan), default=0)
    buffers: dict[torch.device, torch.Tensor] = {}

    def workspace(numel: int, device: torch.device) -> torch.Tensor:
        if device not in buffers:
            buffers[device] = torch.empty(largest, dtype=torch.float32, device=device)
        return buffers[device][:numel]

    pending: dict[int, dict[str, torch.Tensor]] = {}
    infos = [(key, lora.header.tensors[key]) for key in by_key]
    for key, tensor in read_tensors(lora.path, infos, stamp=lora.header.stamp):
        merge = by_key[key]
        got = pending.setdefault(id(merge), {})
        got[key] = tensor
        layer = merge.layer
        if len(got) == 2 + (layer.mid is not None):
            del pending[id(merge)]
            up, down = factors(got[layer.down], got[layer.up], got.get(layer.mid))
            _add(merge.parameter, up, down, merge.factor, workspace)


def record(lora: LoRA, strength: float) -> dict:
    """What a run records of one merged LoRA: its file name, sha256 and strength."""
    return {"file": lora.path.name, "sha256": file_sha256(lora.path), "strength": float(strength)}
