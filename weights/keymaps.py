"""File keys -> this project's parameters, as data: every layout is a function from a file's keys to
`Rules`, one entry per key naming the parameter(s) it fills and how (`Target`). One loader reads
them all (weights/__init__.py), so a layout adds no code to it.

The parameter names are the LDM checkpoint keys without their prefix (U-Net, VAE) and the HF
transformers names (text encoders). An LDM single file only adds one prefix per model; a diffusers
folder names the U-Net and VAE tensors differently (docs/model-facts.md sections 1.3, 2.2 and 3) and
the text encoders the same; open_clip names bigG's tensors its own way, with q, k and v packed in one
tensor and the projection stored the other way round (section 4.2). Keys no rule applies to come
back under their own names, so they show up as unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

# Tensors of the training wrapper, not of any module (docs/model-facts.md section 8). alphas_cumprod is read
# separately into the schedule.
SCHEDULE_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    }
)
IGNORED_KEYS = SCHEDULE_BUFFERS | {"logvar", "denoiser.sigmas"}
IGNORED_PREFIXES = ("model_ema.",)  # EMA copies (full checkpoints) and their decay / num_updates
# CLIP's arange buffer (positions are computed); open_clip's CLIP-loss temperature, unused by SD.
IGNORED_SUFFIXES = (".position_ids", ".logit_scale")


@dataclass(frozen=True)
class Target:
    """One parameter that a file tensor fills, and how: rows part/parts of the tensor (open_clip's
    packed q, k, v: part 0, 1, 2 of 3), transposed (open_clip's `x @ P` projection for a Linear's
    [out, in]), or a Linear weight [out, in] filling a 1x1 conv [out, in, 1, 1] (the VAE's attention
    in diffusers files)."""

    name: str
    part: int = 0
    parts: int = 1
    transpose: bool = False
    conv: bool = False

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape the parameter receives from a file tensor of `shape`; None if it cannot be cut."""
        if self.parts > 1:
            if not shape or shape[0] % self.parts:
                return None
            shape = (shape[0] // self.parts, *shape[1:])
        if self.transpose:
            if len(shape) != 2:
                return None
            shape = shape[::-1]
        return (*shape, 1, 1) if self.conv and len(shape) == 2 else shape

    def how(self) -> str:
        """What the target does to the tensor, for messages."""
        done = [f"rows {self.part + 1}/{self.parts}"] if self.parts > 1 else []
        done += ["transposed"] if self.transpose else []
        return ", ".join(done) or "as it is"

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """The parameter's tensor: a view of `tensor` where one exists (row slices are), else a copy."""
        if self.parts > 1:
            tensor = tensor.chunk(self.parts)[self.part]
        if self.transpose:
            tensor = tensor.t().contiguous()
        return tensor[:, :, None, None] if self.conv and tensor.ndim == 2 else tensor


Rules = dict[str, tuple[Target, ...]]  # file key -> the parameters it fills


def ignored(key: str) -> bool:
    """Whether a file key is a known non-weight entry (schedule buffers, EMA copies, position ids)."""
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def _renamed(keys: Iterable[str], rename) -> Rules:
    """Rules of a layout that renames each key to one parameter (keys it does not know: unchanged)."""
    return {key: (Target(rename(key) or key),) for key in keys}


# --- U-Net --------------------------------------------------------------------------------------------

_RESNET = {  # diffusers ResnetBlock2D -> LDM ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "time_embedding.cond_proj": "time_cond_proj",  # LCM U-Nets' guidance embedding
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's added vector condition y
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def ldm_unet(keys: Iterable[str]) -> Rules:
    """The LDM / sgm U-Net: the parameters' own names."""
    return _renamed(keys, lambda key: key)


def _resnet(block: str, rest: str) -> str | None:
    layer, _, param = rest.partition(".")
    return f"{block}.{_RESNET[layer]}.{param}" if layer in _RESNET else None


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    return {int(m[1]) for key in keys if (m := re.match(pattern, key))}


def diffusers_unet(keys: Iterable[str]) -> Rules:
    """diffusers U-Net keys (docs/model-facts.md sections 1.3 and 2.2).

    With L ResBlocks per level, each level fills L + 1 input blocks (the last one its downsampler)
    and L + 1 output blocks; an up block's upsampler follows its transformer when it has one.
    """
    keys = list(keys)
    per_level = max(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."), default=0) + 2
    up_attention = _indices(keys, r"up_blocks\.(\d+)\.attentions\.")
    top = "|".join(re.escape(name) for name in _UNET_TOP)

    def rename(key: str) -> str | None:
        if m := re.fullmatch(rf"({top})\.(\w+)", key):
            return f"{_UNET_TOP[m[1]]}.{m[2]}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block = f"input_blocks.{per_level * int(m[1]) + int(m[3]) + 1}"
            return _resnet(f"{block}.0", m[4]) if m[2] == "resnets" else f"{block}.1.{m[4]}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            return f"input_blocks.{per_level * (int(m[1]) + 1)}.0.op.{m[2]}"
        if m := re.fullmatch(r"mid_block\.(resnets\.[01]|attentions\.0)\.(.+)", key):
            position = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[m[1]]
            return _resnet(f"middle_block.{position}", m[2]) if position != 1 else f"middle_block.1.{m[2]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block = f"output_blocks.{per_level * int(m[1]) + int(m[3])}"
            return _resnet(f"{block}.0", m[4]) if m[2] == "resnets" else f"{block}.1.{m[4]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            level = int(m[1])
            position = 2 if level in up_attention else 1
            return f"output_blocks.{per_level * level + per_level - 1}.{position}.conv.{m[2]}"
        return None

    return _renamed(keys, rename)


# --- VAE ----------------------------------------------------------------------------------------------

# diffusers VAE mid attention (current and pre-0.14 names) -> LDM AttnBlock
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
_VAE_CONV_ATTENTION = re.compile(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def _vae_target(name: str) -> tuple[Target]:
    # the attention projections are 1x1 convs here, Linear weights in diffusers files (same numbers)
    return (Target(name, conv=_VAE_CONV_ATTENTION.fullmatch(name) is not None),)


def ldm_vae(keys: Iterable[str]) -> Rules:
    """The LDM AutoencoderKL: the parameters' own names."""
    return {key: _vae_target(key) for key in keys}


def diffusers_vae(keys: Iterable[str]) -> Rules:
    """diffusers AutoencoderKL keys (docs/model-facts.md section 3). diffusers numbers the decoder's
    levels in execution order, LDM by resolution: up_blocks.k is up.(n - 1 - k)."""
    keys = list(keys)
    levels = max(_indices(keys, r"decoder\.up_blocks\.(\d+)\."), default=0) + 1

    def resnet(rest: str) -> str:
        return re.sub(r"^conv_shortcut\.", "nin_shortcut.", rest)

    def rename(key: str) -> str | None:
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
            return f"{m[1]}.norm_out.{m[2]}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}" if m[2] in _VAE_ATTENTION else None
        return None

    return {key: _vae_target(rename(key) or key) for key in keys}


def is_diffusers_vae(keys: Iterable[str]) -> bool:
    """Whether VAE keys (prefix stripped) are diffusers names rather than LDM ones."""
    return any(
        re.match(r"(encoder\.down_blocks|decoder\.up_blocks|(en|de)coder\.mid_block)\.", k) for k in keys
    )


# --- text encoders ------------------------------------------------------------------------------------


def hf_text(keys: Iterable[str]) -> Rules:
    """The HF transformers CLIP text model. Old SD 1.x files name it without `text_model.`
    (transformers < 4.22); both load."""
    prefixed = ("text_model.", "text_projection.")
    return _renamed(keys, lambda key: key if key.startswith(prefixed) else "text_model." + key)


_OPEN_CLIP_LAYER = {  # open_clip resblock -> HF CLIP encoder layer
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPEN_CLIP_PLAIN = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def open_clip_text(keys: Iterable[str]) -> Rules:
    """open_clip's text tower (OpenCLIP ViT-bigG/14, SDXL's second encoder; docs/model-facts.md
    section 4.2): `in_proj_*` holds q, k, v stacked in that order along dim 0; `text_projection` is
    applied as `x @ P`, so the Linear weight is P transposed."""
    rules: Rules = {}
    for key in keys:
        layer = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)
        packed = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        encoder = "text_model.encoder.layers"
        if packed:
            i, kind = packed[1], packed[2]
            rules[key] = tuple(
                Target(f"{encoder}.{i}.self_attn.{proj}.{kind}", part, 3) for part, proj in enumerate(_QKV)
            )
        elif layer and layer[2] in _OPEN_CLIP_LAYER:
            rules[key] = (Target(f"{encoder}.{layer[1]}.{_OPEN_CLIP_LAYER[layer[2]]}.{layer[3]}"),)
        elif key == "text_projection":
            rules[key] = (Target("text_projection.weight", transpose=True),)
        else:
            rules[key] = (Target(_OPEN_CLIP_PLAIN.get(key, key)),)
    return rules
