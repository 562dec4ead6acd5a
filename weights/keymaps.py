"""File keys -> this project's parameter names, which are the LDM checkpoint keys without their prefix.

An LDM single file only adds one prefix per model. A diffusers folder names the U-Net and VAE tensors
differently (docs/model-facts.md sections 1.3 and 3) and the text encoder the same (HF `text_model.*`).
Keys no rule applies to come back unchanged, so they show up as unexpected under their own names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}

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
IGNORED_SUFFIXES = (".position_ids",)  # CLIP's arange buffer; positions are computed

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
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
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


def ignored(key: str) -> bool:
    """Whether a file key is a known non-weight entry (schedule buffers, EMA copies, position ids)."""
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def split_single_file(key: str) -> tuple[str, str] | None:
    """An LDM single-file key -> (component, parameter name), or None when under no model's prefix.
    Old SD 1.x files name the text encoder without `text_model.` (transformers < 4.22); both load."""
    for component, prefix in PREFIXES.items():
        if key.startswith(prefix):
            name = key.removeprefix(prefix)
            if component == "text_encoder" and not name.startswith("text_model."):
                name = "text_model." + name
            return component, name
    return None


def _resnet(block: str, rest: str) -> str | None:
    layer, _, param = rest.partition(".")
    return f"{block}.{_RESNET[layer]}.{param}" if layer in _RESNET else None


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    return {int(m[1]) for key in keys if (m := re.match(pattern, key))}


def diffusers_unet(keys: Iterable[str]) -> dict[str, str]:
    """diffusers U-Net key -> LDM name, for every key (docs/model-facts.md section 1.3).

    With L ResBlocks per level, each level fills L + 1 input blocks (the last one its downsampler)
    and L + 1 output blocks; an up block's upsampler follows its transformer when it has one.
    """
    keys = list(keys)
    per_level = max(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."), default=0) + 2
    up_attention = _indices(keys, r"up_blocks\.(\d+)\.attentions\.")

    def rename(key: str) -> str | None:
        if m := re.fullmatch(r"(conv_in|time_embedding\.linear_[12]|conv_norm_out|conv_out)\.(\w+)", key):
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

    return {key: rename(key) or key for key in keys}


def diffusers_vae(keys: Iterable[str]) -> dict[str, str]:
    """diffusers AutoencoderKL key -> LDM name, for every key (docs/model-facts.md section 3). diffusers
    numbers the decoder's levels in execution order, LDM by resolution: up_blocks.k is up.(n - 1 - k)."""
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

    return {key: rename(key) or key for key in keys}


def linear_as_conv(name: str) -> bool:
    """Whether a [C, C] tensor may fill this [C, C, 1, 1] parameter: diffusers stores the VAE's mid
    attention projections as Linear weights, LDM as 1x1 convs (the same numbers)."""
    return _VAE_CONV_ATTENTION.fullmatch(name) is not None
