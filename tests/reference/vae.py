"""Reference VAEs (diffusers `AutoencoderKL`) with random weights, the matching `VAEConfig`, and
an independent diffusers <-> LDM key map for the VAE written from docs/model-facts.md section 3.

Typical use in other tests:

    ref = diffusers_vae()                                   # reduced SD structure, random weights
    ldm = ldm_state_dict(ref, prefix="first_stage_model.")  # LDM single-file layout
    ours = AutoencoderKL(vae_config()); ours.load_state_dict(ldm_state_dict(ref))
    old = with_deprecated_attention_names(ref.state_dict())  # old diffusers uploads (query/key/...)
"""

from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from torch import Tensor, nn

from vae import VAEConfig

# block_out_channels of the reduced test VAE (same structure as SD's: four levels, 2 blocks per
# level, mid attention, 32 norm groups) and of the full SD / SDXL VAE.
SMALL = (32, 64, 64, 64)
FULL = (128, 256, 512, 512)

# diffusers attention names, current -> deprecated (diffusers renames the old ones on load).
DEPRECATED_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
LDM_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_config(block_out_channels: tuple[int, ...] = SMALL, scaling_factor: float = 0.18215) -> dict:
    n = len(block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": scaling_factor,
    }


def vae_config(block_out_channels: tuple[int, ...] = SMALL, scaling_factor: float = 0.18215) -> VAEConfig:
    """Our config of the same network: ch = first width, ch_mult = widths / ch."""
    ch = block_out_channels[0]
    return VAEConfig(ch=ch, ch_mult=tuple(c // ch for c in block_out_channels), scaling_factor=scaling_factor)


@torch.no_grad()
def diffusers_vae(
    block_out_channels: tuple[int, ...] = SMALL, scaling_factor: float = 0.18215, seed: int = 0
) -> DiffusersAutoencoderKL:
    """A float32 diffusers AutoencoderKL in eval mode with every parameter re-randomised (norm
    scales and all biases too, so a swapped or missing tensor changes the output)."""
    vae = DiffusersAutoencoderKL(**diffusers_config(block_out_channels, scaling_factor)).eval()
    g = torch.Generator().manual_seed(seed)
    for module in vae.modules():
        if isinstance(module, nn.GroupNorm):
            module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=g))
            module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) / fan_in**0.5)
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
    return vae


def _ldm_key(key: str, n_levels: int) -> str:
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    # diffusers numbers decoder levels in execution order, LDM by resolution: up_blocks.k = up.(n-1-k).
    key = re.sub(
        r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
        lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}.",
        key,
    )
    key = re.sub(r"\.mid_block\.resnets\.([01])\.", lambda m: f".mid.block_{int(m[1]) + 1}.", key)
    for current, deprecated in DEPRECATED_ATTENTION.items():
        key = key.replace(f".mid_block.attentions.0.{deprecated}.", f".mid_block.attentions.0.{current}.")
    for diffusers_name, ldm_name in LDM_ATTENTION.items():
        key = key.replace(f".mid_block.attentions.0.{diffusers_name}.", f".mid.attn_1.{ldm_name}.")
    return key.replace(".conv_shortcut.", ".nin_shortcut.")


def ldm_state_dict(vae_or_state: nn.Module | dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """diffusers VAE (module or state dict, current or deprecated attention names) -> LDM keys,
    with the attention projections unsqueezed from Linear [C, C] to 1x1 conv [C, C, 1, 1]."""
    state = vae_or_state.state_dict() if isinstance(vae_or_state, nn.Module) else vae_or_state
    n_levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    out = {}
    for key, tensor in state.items():
        new = _ldm_key(key, n_levels)
        if ".attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[prefix + new] = tensor.clone()
    return out


def diffusers_state_dict(ldm_state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The inverse of `ldm_state_dict`: LDM keys (after stripping `prefix`) -> current diffusers
    names, attention projections squeezed to [C, C]."""
    state = {k.removeprefix(prefix): v for k, v in ldm_state.items() if k.startswith(prefix)}
    n_levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k)))
    inverse = {}
    for key in state:
        new = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        new = re.sub(
            r"^decoder\.up\.(\d+)\.(block|upsample)\.",
            lambda m: (
                f"decoder.up_blocks.{n_levels - 1 - int(m[1])}."
                f"{'resnets' if m[2] == 'block' else 'upsamplers.0'}."
            ),
            new,
        )
        new = re.sub(r"\.mid\.block_([12])\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", new)
        for diffusers_name, ldm_name in LDM_ATTENTION.items():
            new = new.replace(f".mid.attn_1.{ldm_name}.", f".mid_block.attentions.0.{diffusers_name}.")
        inverse[key] = new.replace(".nin_shortcut.", ".conv_shortcut.")
    out = {}
    for key, new in inverse.items():
        tensor = state[key]
        if ".attentions.0." in new and new.endswith(".weight") and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        out[new] = tensor.clone()
    return out


def with_deprecated_attention_names(diffusers_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A current diffusers VAE state dict renamed to the old `query/key/value/proj_attn` names."""
    out = {}
    for key, tensor in diffusers_state.items():
        for current, deprecated in DEPRECATED_ATTENTION.items():
            key = key.replace(f".attentions.0.{current}.", f".attentions.0.{deprecated}.")
        out[key] = tensor
    return out
