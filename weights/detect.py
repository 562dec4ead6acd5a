"""What a checkpoint is, and the configurations of its models read off the tensor shapes.

Shapes fix everything but the head counts (a [C, C] attention projection splits into any number of
heads): SD 1.x has 8 U-Net heads and 64-wide CLIP heads (docs/model-facts.md sections 1.1, 4.1), and
a diffusers folder states them in its config.json files. Shapes here use the LDM names (see keymaps).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from model.unet import UNetConfig
from schedule import DiscreteSchedule
from text_encoder import CLIPTextConfig
from vae import VAEConfig
from weights.errors import WeightsError

Shapes = Mapping[str, tuple[int, ...]]

SD1_UNET_HEADS = 8
CLIP_HEAD_DIM = 64
SD1_LATENT_SCALE = 0.18215
SD2_CONTEXT = 1024  # OpenCLIP ViT-H text width: SD 2.x cross-attention keys/values are 1024 wide
IN_CHANNEL_KINDS = {
    9: "an inpainting model (9 U-Net input channels: latent, mask and masked image)",
    8: "an InstructPix2Pix-style image-editing model (8 U-Net input channels: latent and image)",
    5: "a depth-conditioned model (5 U-Net input channels)",
}
ONLY_SD1 = "only SD 1.x is supported"
SCHEDULER_KEYS = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")


def _sample(keys, count: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def refuse_other_single_files(shapes: Shapes, source: object) -> None:
    """Refuse an LDM single file that is not SD 1.x: SDXL, SD 2.x, a lone model, or no SD at all."""
    keys = list(shapes)
    sdxl = [k for k in keys if k.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb."))]
    if sdxl:
        raise WeightsError(
            f"{source} looks like SDXL (keys like {_sample(sdxl, 2)}); SDXL support is not implemented yet: "
            f"{ONLY_SD1}"
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise WeightsError(
            f"{source} looks like Stable Diffusion 2.x (OpenCLIP text encoder, keys "
            f"cond_stage_model.model.*); {ONLY_SD1}"
        )
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return
    for looks_like, what in (
        (any("lora" in k.lower() for k in keys), "a LoRA (low-rank adapter); load its base model instead"),
        (
            "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys),
            "a diffusers U-Net file; pass the diffusers folder that holds unet/, vae/ and text_encoder/",
        ),
        (
            any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys),
            "a standalone VAE; pass a full SD 1.x checkpoint",
        ),
    ):
        if looks_like:
            raise WeightsError(f"{source} looks like {what}")
    raise WeightsError(
        f"{source} does not look like a Stable Diffusion checkpoint (found keys like {_sample(keys)}); "
        "expected model.diffusion_model.*, first_stage_model.* and cond_stage_model.transformer.*"
    )


def refuse_other_unets(unet: Shapes, source: object) -> None:
    """Refuse U-Nets of other SD families by their shapes (either layout, LDM names)."""
    wide = sorted(k for k, s in unet.items() if k.endswith("attn2.to_k.weight") and s[-1] == SD2_CONTEXT)
    if wide:
        raise WeightsError(
            f"{source} looks like Stable Diffusion 2.x ({SD2_CONTEXT}-wide cross-attention, e.g. {wide[0]}); "
            f"{ONLY_SD1}"
        )
    conv_in = unet.get("input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        kind = IN_CHANNEL_KINDS.get(conv_in[1], f"a model with {conv_in[1]} U-Net input channels")
        raise WeightsError(
            f"{source} looks like {kind}; only text-to-image SD 1.x models (4 input channels) are supported"
        )


def refuse_other_folders(configs: Mapping[str, dict], has_second_text_encoder: bool, source: object) -> None:
    """Refuse diffusers folders of other SD families by their config files (read before any weights)."""
    unet = configs.get("unet", {})
    if has_second_text_encoder or unet.get("addition_embed_type") == "text_time":
        raise WeightsError(
            f"{source} looks like SDXL (text_encoder_2/ or text_time conditioning in unet/config.json); "
            f"SDXL support is not implemented yet: {ONLY_SD1}"
        )
    if unet.get("cross_attention_dim") == SD2_CONTEXT:
        raise WeightsError(
            f"{source} looks like Stable Diffusion 2.x (cross_attention_dim {SD2_CONTEXT} in "
            f"unet/config.json); {ONLY_SD1}"
        )


def _need(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise WeightsError(f"cannot infer the {what}'s configuration: its tensor {key} is missing")
    return shapes[key]


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    return sorted({int(m[1]) for key in shapes if (m := re.match(pattern, key))})


def unet_config(shapes: Shapes, num_heads: int = SD1_UNET_HEADS) -> UNetConfig:
    """UNetConfig from LDM-named U-Net shapes (docs/model-facts.md section 1.2): widths from the ResBlock
    convs, a level ends at each downsampler (`input_blocks.i.0.op`), depths from the transformer block
    indices."""
    conv_in = _need(shapes, "input_blocks.0.0.weight", "U-Net")
    model_channels, in_channels = conv_in[0], conv_in[1]
    levels: list[list[int]] = []  # the input block indices of each level's ResBlocks
    level, block = [], 1
    while True:
        if f"input_blocks.{block}.0.op.weight" in shapes:  # a downsampler ends the level
            levels.append(level)
            level = []
        elif f"input_blocks.{block}.0.in_layers.2.weight" in shapes:
            level.append(block)
        else:
            break
        block += 1
    levels.append(level)
    if not all(levels):
        raise WeightsError(
            f"cannot infer the U-Net's levels: input_blocks.1-{block - 1} hold a level without ResBlocks"
        )
    widths = [shapes[f"input_blocks.{blocks[0]}.0.in_layers.2.weight"][0] for blocks in levels]
    if any(w % model_channels for w in widths):
        raise WeightsError(
            f"cannot infer the U-Net's levels: ResBlock widths {widths} are not multiples of {model_channels}"
        )
    to_k = sorted(k for k in shapes if k.endswith(".attn2.to_k.weight"))
    context_dim = _need(
        shapes, to_k[0] if to_k else "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "U-Net"
    )[1]
    try:
        return UNetConfig(
            in_channels=in_channels,
            out_channels=_need(shapes, "out.2.weight", "U-Net")[0],
            model_channels=model_channels,
            channel_mult=tuple(w // model_channels for w in widths),
            num_res_blocks=len(levels[0]),
            transformer_depth=tuple(
                len(_indices(shapes, rf"input_blocks\.{blocks[0]}\.1\.transformer_blocks\.(\d+)\."))
                for blocks in levels
            ),
            middle_depth=len(_indices(shapes, r"middle_block\.1\.transformer_blocks\.(\d+)\.")),
            num_heads=num_heads,
            context_dim=context_dim,
            linear_proj=len(_need(shapes, "middle_block.1.proj_in.weight", "U-Net")) == 2,
        )
    except ValueError as error:
        raise WeightsError(f"the U-Net's shapes give no valid configuration: {error}") from None


def vae_config(shapes: Shapes, scaling_factor: float = SD1_LATENT_SCALE) -> VAEConfig:
    """VAEConfig from LDM-named VAE shapes (docs/model-facts.md section 3)."""
    conv_in = _need(shapes, "encoder.conv_in.weight", "VAE")
    levels = _indices(shapes, r"encoder\.down\.(\d+)\.")
    widths = [_need(shapes, f"encoder.down.{i}.block.0.conv1.weight", "VAE")[0] for i in levels]
    ch = conv_in[0]
    if not widths or any(w % ch for w in widths):
        raise WeightsError(f"cannot infer the VAE's levels: widths {widths} do not fit {ch} base channels")
    return VAEConfig(
        in_channels=conv_in[1],
        out_channels=_need(shapes, "decoder.conv_out.weight", "VAE")[0],
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=len(_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\.")),
        z_channels=_need(shapes, "decoder.conv_in.weight", "VAE")[1],
        scaling_factor=scaling_factor,
    )


def clip_config(
    shapes: Shapes, heads: int | None = None, activation: str = "quick_gelu", layer_norm_eps: float = 1e-5
) -> CLIPTextConfig:
    """CLIPTextConfig from HF-named text encoder shapes; heads default to width / 64 (CLIP's head size)."""
    vocab, width = _need(shapes, "text_model.embeddings.token_embedding.weight", "text encoder")
    if heads is None:
        if width % CLIP_HEAD_DIM:
            raise WeightsError(
                f"the text encoder is {width} wide, not a multiple of CLIP's head size {CLIP_HEAD_DIM}"
            )
        heads = width // CLIP_HEAD_DIM
    try:
        return CLIPTextConfig(
            vocab_size=vocab,
            max_positions=_need(shapes, "text_model.embeddings.position_embedding.weight", "text encoder")[0],
            hidden_size=width,
            intermediate_size=_need(shapes, "text_model.encoder.layers.0.mlp.fc1.weight", "text encoder")[0],
            layers=len(_indices(shapes, r"text_model\.encoder\.layers\.(\d+)\.")),
            heads=heads,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
        )
    except ValueError as error:
        raise WeightsError(f"the text encoder's shapes give no valid configuration: {error}") from None


def unet_heads(config: Mapping) -> int:
    """Head count from a diffusers unet/config.json: `num_attention_heads` when set, else the misnamed
    `attention_head_dim`, which SD 1.x configs use for the head COUNT (docs/model-facts.md section 9,
    item 1)."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", SD1_UNET_HEADS)
    if isinstance(heads, list):
        if len(set(heads)) != 1:
            raise WeightsError(f"unet/config.json gives per-level head counts {heads}; {ONLY_SD1}")
        heads = heads[0]
    return int(heads)


def schedule_from_config(config: Mapping, source: object) -> DiscreteSchedule:
    """The training schedule from a diffusers scheduler_config.json (betas, docs/model-facts.md section 6)."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise WeightsError(
            f"{source} says the model predicts {prediction!r}; only eps-prediction SD 1.x is supported"
        )
    missing = [k for k in SCHEDULER_KEYS if k not in config]
    if missing:
        raise WeightsError(
            f"{source} lacks {', '.join(missing)}; add them, or delete the file to use SD 1.x's schedule"
        )
    start, end, steps = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    if config["beta_schedule"] == "scaled_linear":  # linear in sqrt(beta): LDM's "linear"
        return DiscreteSchedule.sd(start, end, steps)
    if config["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
        return DiscreteSchedule(torch.cumprod(1 - betas, dim=0))
    raise WeightsError(
        f"{source} has beta_schedule {config['beta_schedule']!r}; supported are 'scaled_linear' and 'linear'"
    )
