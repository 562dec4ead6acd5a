"""Reference U-Nets (diffusers `UNet2DConditionModel`) with random weights, the matching `UNetConfig`,
and an independent diffusers -> LDM key map for the U-Net written from docs/model-facts.md section 1.3.

Typical use in other tests:

    ref = diffusers_unet(sd15_config())                 # reduced SD 1.5 structure, random weights
    ldm = ldm_state_dict(ref, prefix="model.diffusion_model.")   # LDM single-file layout
    ours = UNet(unet_config(sd15_config())); ours.load_state_dict(ldm_state_dict(ref))
"""

from __future__ import annotations

import re

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from model.unet import UNetConfig
from weights.checkpoint import empty_modules

# block_out_channels of the reduced SD 1.5 test U-Net (same structure: four levels, two ResBlocks
# per level, attention on the first three, 32 norm groups, 8 heads; same channel ratios 1:2:4:4, so
# FreeU's channel-count placement picks the same blocks) and of the real one.
SMALL = (32, 64, 128, 128)
FULL = (320, 640, 1280, 1280)


def sd15_config(block_out_channels: tuple[int, ...] = SMALL, cross_attention_dim: int | None = None) -> dict:
    """diffusers config of SD 1.5's U-Net, exact for FULL; cross_attention_dim is 768 there, else 48."""
    if cross_attention_dim is None:
        cross_attention_dim = 768 if tuple(block_out_channels) == FULL else 48
    return {
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 2,
        "attention_head_dim": 8,  # the number of heads (a diffusers misnomer)
        "cross_attention_dim": cross_attention_dim,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "use_linear_projection": False,
    }


def sdxl_config(
    block_out_channels: tuple[int, ...] = (32, 64, 128),
    head_dim: int = 16,
    *,
    context: int = 40,
    pooled: int = 24,
    time_dim: int = 8,
    depths: tuple[int, int, int] = (1, 2, 3),
) -> dict:
    """A reduced SDXL-structured diffusers config: no attention at level 0, `depths` transformer
    blocks per level after it (the last one also in the middle block), linear projections, fixed head
    size, `text_time` added conditioning (y = pooled + 6 x time_dim; SDXL: 1280 + 6 x 256)."""
    return {
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 2,
        "transformer_layers_per_block": list(depths),
        "attention_head_dim": [max(c // head_dim, 1) for c in block_out_channels],  # heads again
        "cross_attention_dim": context,
        "norm_num_groups": 32,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": pooled + 6 * time_dim,
    }


@torch.no_grad()
def diffusers_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    """A float32 diffusers U-Net in eval mode with every parameter re-randomised: weights with
    std 1/sqrt(fan_in) (activations stay O(1) through the depth), norm scales around 1 and all
    biases non-zero, so a swapped, transposed or missing tensor changes the output. diffusers' own
    initialisation is skipped, and each parameter is drawn in place (full-size SDXL has 2.6e9)."""
    with empty_modules():
        unet = UNet2DConditionModel(**config)
    unet = unet.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)

    def draw(p: nn.Parameter) -> Tensor:  # the same numbers as torch.randn(p.shape, generator=g)
        return torch.randn(p.shape, generator=g, out=p.data)

    for module in unet.modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            draw(module.weight).mul_(0.2).add_(1)
            draw(module.bias).mul_(0.2)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            draw(module.weight).div_(module.weight[0].numel() ** 0.5)
            if module.bias is not None:
                draw(module.bias).mul_(0.1)
    return unet


def unet_config(config: dict) -> UNetConfig:
    """The UNetConfig describing the same network as a diffusers U-Net config."""
    channels = config["block_out_channels"]
    attention = ["CrossAttn" in kind for kind in config["down_block_types"]]
    layers = config.get("transformer_layers_per_block", 1)
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    heads = config.get("num_attention_heads") or config["attention_head_dim"]  # diffusers' misnomer
    if isinstance(heads, int):
        head_count, head_dim = heads, None
    else:
        sizes = {c // n for c, n, a in zip(channels, heads, attention, strict=True) if a}
        assert len(sizes) == 1, f"per-level heads {heads} do not share one head size"
        head_count, head_dim = None, sizes.pop()
    text_time = config.get("addition_embed_type") == "text_time"
    return UNetConfig(
        in_channels=config["in_channels"],
        out_channels=config["out_channels"],
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=config["layers_per_block"],
        transformer_depth=tuple(n if a else 0 for n, a in zip(layers, attention, strict=True)),
        middle_depth=layers[-1],
        num_heads=head_count,
        head_dim=head_dim,
        context_dim=config["cross_attention_dim"],
        linear_proj=config.get("use_linear_projection", False),
        adm_in_channels=config["projection_class_embeddings_input_dim"] if text_time else None,
        norm_groups=config.get("norm_num_groups", 32),
    )


_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _ldm_key(key: str, blocks: int, up_has_attention: list[bool]) -> str:
    """One diffusers U-Net key -> LDM (docs/model-facts.md section 1.3); `blocks` = layers_per_block + 1."""
    key = re.sub(r"^conv_in\.", "input_blocks.0.0.", key)
    key = re.sub(r"^time_embedding\.linear_([12])\.", lambda m: f"time_embed.{2 * int(m[1]) - 2}.", key)
    key = re.sub(r"^add_embedding\.linear_([12])\.", lambda m: f"label_emb.0.{2 * int(m[1]) - 2}.", key)
    key = re.sub(r"^conv_norm_out\.", "out.0.", key)
    key = re.sub(r"^conv_out\.", "out.2.", key)
    key = re.sub(
        r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.",
        lambda m: f"input_blocks.{blocks * int(m[1]) + int(m[3]) + 1}.{0 if m[2] == 'resnets' else 1}.",
        key,
    )
    key = re.sub(
        r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
        lambda m: f"input_blocks.{blocks * (int(m[1]) + 1)}.0.op.",
        key,
    )
    key = re.sub(
        r"^mid_block\.(resnets|attentions)\.(\d)\.",
        lambda m: f"middle_block.{1 if m[1] == 'attentions' else 2 * int(m[2])}.",
        key,
    )
    key = re.sub(
        r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.",
        lambda m: f"output_blocks.{blocks * int(m[1]) + int(m[3])}.{0 if m[2] == 'resnets' else 1}.",
        key,
    )
    key = re.sub(
        r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
        lambda m: (
            f"output_blocks.{blocks * int(m[1]) + blocks - 1}.{2 if up_has_attention[int(m[1])] else 1}.conv."
        ),
        key,
    )
    # ResBlock internals; resnets sit at `.0` of a block, and at middle_block.0 / .2.
    for diffusers_name, ldm_name in _RESNET.items():
        key = re.sub(
            rf"^((?:input_blocks\.\d+|middle_block|output_blocks\.\d+)\.[02])\.{diffusers_name}\.",
            rf"\1.{ldm_name}.",
            key,
        )
    return key


def ldm_state_dict(
    unet_or_state: nn.Module | dict[str, Tensor], config: dict | None = None, prefix: str = ""
) -> dict[str, Tensor]:
    """diffusers U-Net (module, or state dict plus its config) -> LDM keys, each with `prefix`
    (`"model.diffusion_model."` for an LDM single file). Tensors are shared, not copied."""
    if isinstance(unet_or_state, nn.Module):
        config, state = dict(unet_or_state.config), unet_or_state.state_dict()
    else:
        state = unet_or_state
    blocks = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    return {prefix + _ldm_key(k, blocks, up_has_attention): v for k, v in state.items()}
