"""What a checkpoint is, and the configurations of its models read off the tensor shapes.

Shapes fix everything but the heads (a [C, C] attention projection splits into any number of them)
and the activations: SD 1.x has 8 U-Net heads, SDXL 64-wide ones, CLIP 64-wide heads
(docs/model-facts.md sections 1.1, 2.1, 4), and a diffusers folder states them in its config.json
files; the family (weights/families.py) supplies them for single files. Shapes here use the parameter
names (see keymaps).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

import safeio
from model.unet import UNetConfig
from schedule import DiscreteSchedule
from text_encoder import CLIPTextConfig
from vae import VAEConfig
from weights.errors import WeightsError
from weights.families import SD1, SDXL, UNET_PREFIX, Family

Shapes = Mapping[str, tuple[int, ...]]

CLIP_HEAD_DIM = 64
SD2_CONTEXT = 1024  # OpenCLIP ViT-H text width: SD 2.x cross-attention keys/values are 1024 wide
IN_CHANNEL_KINDS = {
    9: "an inpainting model (9 U-Net input channels: latent, mask and masked image)",
    8: "an InstructPix2Pix-style image-editing model (8 U-Net input channels: latent and image)",
    5: "a depth-conditioned model (5 U-Net input channels)",
}
SUPPORTED = "only SD 1.x and SDXL are supported"
SCHEDULER_KEYS = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")
# SD 1.x and SDXL were trained on a 1000-level DDPM table; the U-Net's timestep input spans it
# (docs/model-facts.md section 6), so a table of another length is another model or a broken file.
TRAINING_STEPS = 1000
MAX_HEADS = 1024  # far above any SD model's (SDXL: 20 per level); guards the division by the head count


def _sample(keys, count: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def single_file_kind(shapes: Shapes, source: object) -> Family:
    """The family of an LDM / sgm single file, from its keys; refuse SD 2.x, a lone model, or no SD."""
    keys = list(shapes)
    if any(k.startswith(("conditioner.embedders.", UNET_PREFIX + "label_emb.")) for k in keys):
        return SDXL
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise WeightsError(
            f"{source} looks like Stable Diffusion 2.x (OpenCLIP text encoder, keys "
            f"cond_stage_model.model.*); {SUPPORTED}"
        )
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return SD1
    for looks_like, what in (
        (any("lora" in k.lower() for k in keys), "a LoRA (low-rank adapter); load its base model instead"),
        (
            "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys),
            "a diffusers U-Net file; pass the diffusers folder that holds unet/, vae/ and text_encoder/",
        ),
        (
            any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys),
            "a standalone VAE; give a full checkpoint as the weights, and this file as the separate VAE",
        ),
    ):
        if looks_like:
            raise WeightsError(f"{source} looks like {what}")
    raise WeightsError(
        f"{source} does not look like a Stable Diffusion checkpoint (found keys like {_sample(keys)}); "
        f"expected {UNET_PREFIX}*, first_stage_model.* and cond_stage_model.transformer.* (SD 1.x) or "
        "conditioner.embedders.* (SDXL)"
    )


def refuse_other_unets(unet: Shapes, source: object) -> None:
    """Refuse U-Nets of other SD families by their shapes (either layout, LDM names)."""
    wide = sorted(k for k, s in unet.items() if k.endswith("attn2.to_k.weight") and s[-1] == SD2_CONTEXT)
    if wide:
        raise WeightsError(
            f"{source} looks like Stable Diffusion 2.x ({SD2_CONTEXT}-wide cross-attention, e.g. {wide[0]}); "
            f"{SUPPORTED}"
        )
    conv_in = unet.get("input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        kind = IN_CHANNEL_KINDS.get(conv_in[1], f"a model with {conv_in[1]} U-Net input channels")
        raise WeightsError(
            f"{source} looks like {kind}; only text-to-image models (4 input channels) are supported"
        )


def folder_kind(configs: Mapping[str, dict], has_second_text_encoder: bool, source: object) -> Family:
    """The family of a diffusers folder, from its config files (read before any weights)."""
    unet = configs.get("unet", {})
    if has_second_text_encoder or unet.get("addition_embed_type") == "text_time":
        return SDXL
    if unet.get("cross_attention_dim") == SD2_CONTEXT:
        raise WeightsError(
            f"{source} looks like Stable Diffusion 2.x (cross_attention_dim {SD2_CONTEXT} in "
            f"unet/config.json); {SUPPORTED}"
        )
    return SD1


def _need(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise WeightsError(f"cannot infer the {what}'s configuration: its tensor {key} is missing")
    return shapes[key]


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    return sorted({int(m[1]) for key in shapes if (m := re.match(pattern, key))})


def unet_config(shapes: Shapes, heads: Mapping[str, int] = SD1.unet_heads) -> UNetConfig:
    """UNetConfig from LDM-named U-Net shapes (docs/model-facts.md sections 1.2, 2.2): widths from the
    ResBlock convs, a level ends at each downsampler (`input_blocks.i.0.op`), depths from the
    transformer block indices, y's width from `label_emb`. `heads`: {"num_heads": n} or {"head_dim": d}."""
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
            num_heads=heads.get("num_heads"),
            head_dim=heads.get("head_dim"),
            context_dim=context_dim,
            linear_proj=len(_need(shapes, "middle_block.1.proj_in.weight", "U-Net")) == 2,
            adm_in_channels=shapes["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in shapes else None,
            time_cond_proj_dim=shapes["time_cond_proj.weight"][1]
            if "time_cond_proj.weight" in shapes
            else None,
        )
    except ValueError as error:
        raise WeightsError(f"the U-Net's shapes give no valid configuration: {error}") from None


def vae_config(shapes: Shapes, scaling_factor: float = SD1.latent_scale) -> VAEConfig:
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
    """CLIPTextConfig from HF-named text encoder shapes; heads default to width / 64 (CLIP's head size),
    the projection's width comes from `text_projection.weight` when there is one."""
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
            projection_dim=shapes["text_projection.weight"][0]
            if "text_projection.weight" in shapes
            else None,
        )
    except ValueError as error:
        raise WeightsError(f"the text encoder's shapes give no valid configuration: {error}") from None


def unet_heads(config: Mapping) -> dict[str, int]:
    """The heads from a diffusers unet/config.json: `num_attention_heads` when set, else the misnamed
    `attention_head_dim`, which holds head COUNTS (docs/model-facts.md section 9, item 1): one count
    (SD 1.x: 8), or one per level whose attention levels share one head size (SDXL: [5, 10, 20] at
    [320, 640, 1280] channels, 64-wide heads)."""
    key = "num_attention_heads" if config.get("num_attention_heads") is not None else "attention_head_dim"
    heads = config.get(key, SD1.unet_heads["num_heads"])
    for count in heads if isinstance(heads, list) and heads else [heads]:
        try:
            safeio.integer(count, 1, MAX_HEADS)
        except ValueError as error:
            raise WeightsError(f"unet/config.json: {key} {error} (a head count, or one per level)") from None
    if not isinstance(heads, list):
        return {"num_heads": heads}
    if len(set(heads)) == 1:
        return {"num_heads": heads[0]}
    channels, blocks = config.get("block_out_channels", []), config.get("down_block_types", [])
    if not (isinstance(channels, list) and all(type(c) is int and c > 0 for c in channels)) or not (
        isinstance(blocks, list) and all(isinstance(b, str) for b in blocks)
    ):
        raise WeightsError(
            "unet/config.json: block_out_channels must be a list of widths and down_block_types a list of "
            f"names, got {safeio.short(channels)} and {safeio.short(blocks)}; re-download it"
        )
    levels = [(c, h) for c, h, block in zip(channels, heads, blocks, strict=False) if "CrossAttn" in block]
    sizes = {c // h for c, h in levels if h and c % h == 0}
    if len(sizes) != 1 or len(levels) != sum(1 for c, h in levels if h and c % h == 0):
        raise WeightsError(
            f"unet/config.json gives per-level head counts {heads}, which share no head size; {SUPPORTED}"
        )
    return {"head_dim": sizes.pop()}


def schedule_from_config(config: Mapping, source: object) -> DiscreteSchedule:
    """The training schedule from a diffusers scheduler_config.json (betas, docs/model-facts.md section 6)."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise WeightsError(
            f"{source} says the model predicts {prediction!r}; only eps-prediction models are supported"
        )
    missing = [k for k in SCHEDULER_KEYS if k not in config]
    if missing:
        raise WeightsError(
            f"{source} lacks {', '.join(missing)}; add them, or delete the file to use SD's schedule"
        )
    start, end, steps = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    for key, check in (
        ("beta_start", lambda v: safeio.number(v, 0, strict=True)),
        ("beta_end", lambda v: safeio.number(v, 0, strict=True)),
        ("num_train_timesteps", lambda v: safeio.integer(v, TRAINING_STEPS, TRAINING_STEPS)),
    ):
        try:
            check(config[key])
        except ValueError as error:
            raise WeightsError(
                f"{source}: {key} {error}; fix it, or delete the file to use SD's schedule"
            ) from None
    if not start < end < 1:
        raise WeightsError(
            f"{source}: beta_start {start} and beta_end {end} must satisfy 0 < beta_start < beta_end < 1; "
            "fix them, or delete the file to use SD's schedule"
        )
    if config["beta_schedule"] == "scaled_linear":  # linear in sqrt(beta): LDM's "linear"
        return DiscreteSchedule.sd(start, end, steps)
    if config["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
        return DiscreteSchedule(torch.cumprod(1 - betas, dim=0))
    raise WeightsError(
        f"{source} has beta_schedule {config['beta_schedule']!r}; supported are 'scaled_linear' and 'linear'"
    )
