"""Random-weight SD 1.x and SDXL checkpoints in the official layouts, for the tests of weights/,
pipeline/, run_sample.py and evaluation/:

    path = write_checkpoint(tmp_path, "single")                  # an SD 1.5 LDM single file, tiny
    folder = write_checkpoint(tmp_path, "diffusers")             # an SD 1.5 diffusers folder, tiny
    xl = write_checkpoint(tmp_path, "single", kind="sdxl")       # sd_xl_base_1.0's layout, tiny
    refs = reference_models()                                    # the same weights in diffusers /
    xl_refs = reference_models(kind="sdxl")                      # transformers

The models are the reference implementations (tests/reference/) with re-randomised weights; single
files are written with the tests' own key maps, independent of weights/keymaps.py (SDXL's bigG in
open_clip's layout, q/k/v packed and the projection transposed), and carry keys a loader must
ignore (`alphas_cumprod`, `...position_ids`, open_clip's `logit_scale`). Every weight is rounded to
float16 once drawn, so float16 and float32 files hold the same numbers and either, loaded in float32,
gives the references' outputs.

"tiny" SD 1.5 keeps its structure (four levels, two ResBlocks each, attention on the first three,
32 norm groups, 8 U-Net heads, 64-wide CLIP heads) at the smallest widths those rules allow: U-Net
and VAE 32/64, two CLIP layers of width 64 (one head). A whole 64 x 64-pixel run (prompt, 5 guided
steps, decode) took 3 s on 2 CPU cores that other jobs kept busy (load 4). "full" is SD 1.5 itself
(about 4.3 GB of float32 weights in the references).

"tiny" SDXL keeps SDXL's rules: three levels, no attention at the first, linear projections,
64-wide heads, context = CLIP-L width + bigG width (64 + 128), y = bigG's pooled width + 6 x 256
(the real size embedding), bigG with exact GELU and a projection; the VAE has SDXL's latent scale.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from tests.reference import clip, unet, vae

Layout = Literal["single", "diffusers"]
Size = Literal["tiny", "full"]
Kind = Literal["sd1", "sdxl"]

TINY_TEXT = dict(
    clip.SMALL_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1
)
WIDTHS = {"tiny": (unet.SMALL, vae.SMALL, TINY_TEXT), "full": (unet.FULL, vae.FULL, clip.SD1_TEXT)}
TINY_BIGG = dict(
    clip.BIGG_TEXT, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2
)
BIGG_PROJECTION = {"tiny": 128, "full": 1280}
SDXL_UNET = {
    "tiny": unet.sdxl_config((32, 64, 128), 64, context=64 + 128, pooled=128, time_dim=256, depths=(1, 1, 1)),
    "full": unet.sdxl_config(
        (320, 640, 1280), 64, context=768 + 1280, pooled=1280, time_dim=256, depths=(1, 2, 10)
    ),
}
SDXL_LATENT_SCALE = 0.13025
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# SD 1.5's scheduler/scheduler_config.json (docs/model-facts.md section 6).
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}


# SDXL base's scheduler/scheduler_config.json and a DreamShaper-XL-like model_index.json
# (docs/model-facts.md sections 6 and 10.3).
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
}
SDXL_SCHEDULER_CONFIG_ARGS = {k: v for k, v in SDXL_SCHEDULER_CONFIG.items() if not k.startswith("_")}
SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


class References(NamedTuple):
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's bigG


def sd15_alphas_cumprod() -> Tensor:
    """SD's training schedule as LDM stores it in a checkpoint: betas linear in sqrt space, float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


@torch.no_grad()
def _round_to_half(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.copy_(p.half().float())
    return model


def _build(seed: int, size: Size, kind: Kind) -> References:
    unet_widths, vae_widths, text = WIDTHS[size]
    if kind == "sd1":
        return References(
            _round_to_half(unet.diffusers_unet(unet.sd15_config(unet_widths, text["hidden_size"]), seed)),
            _round_to_half(vae.diffusers_vae(vae_widths, seed=seed)),
            _round_to_half(clip.hf_text_model(text, seed=seed)),
        )
    bigg = TINY_BIGG if size == "tiny" else clip.BIGG_TEXT
    return References(
        _round_to_half(unet.diffusers_unet(SDXL_UNET[size], seed)),
        _round_to_half(vae.diffusers_vae(vae_widths, SDXL_LATENT_SCALE, seed=seed)),
        _round_to_half(clip.hf_text_model(text, seed=seed)),
        _round_to_half(clip.hf_text_model(bigg, BIGG_PROJECTION[size], seed=seed + 1)),
    )


@cache
def _tiny(seed: int, kind: Kind) -> References:
    return _build(seed, "tiny", kind)


def reference_models(seed: int = 0, size: Size = "tiny", kind: Kind = "sd1") -> References:
    """The float32 reference modules (eval mode) holding the weights `write_checkpoint` writes for `seed`.
    Tiny ones are built once per process and shared: do not modify them. Full ones are built anew."""
    return _tiny(seed, kind) if size == "tiny" else _build(seed, size, kind)


def single_file_tensors(refs: References, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The LDM (SD 1.x) or sgm (SDXL) single-file state dict: prefixes model.diffusion_model.,
    first_stage_model., and cond_stage_model.transformer. (SD 1.x) or conditioner.embedders.0.transformer.
    and conditioner.embedders.1.model. (SDXL, bigG in open_clip's layout); plus the keys a loader
    ignores: CLIP-L's position_ids, and SD 1.x's alphas_cumprod or bigG's logit_scale."""
    positions = refs.text_encoder.config.max_position_embeddings
    if refs.text_encoder_2 is None:
        text_prefix, extras = "cond_stage_model.transformer.", {"alphas_cumprod": sd15_alphas_cumprod()}
        text = {}
    else:
        text_prefix, extras = "conditioner.embedders.0.transformer.", {}
        bigg = clip.open_clip_state_dict(refs.text_encoder_2)
        text = {"conditioner.embedders.1.model." + k: v for k, v in bigg.items()}
    text |= {text_prefix + k: v for k, v in refs.text_encoder.state_dict().items()}
    state = {
        **unet.ldm_state_dict(refs.unet, prefix="model.diffusion_model."),
        **vae.ldm_state_dict(refs.vae, prefix="first_stage_model."),
        **text,
    }
    tensors = {k: v.to(dtype).contiguous() for k, v in state.items()}
    tensors[text_prefix + "text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return tensors | extras


def save_variant(directory: Path, refs: References, changes: dict[str, Tensor | None]) -> Path:
    """The references' single file with some tensors replaced (None: removed), as variant.safetensors."""
    tensors = single_file_tensors(refs)
    for key, value in changes.items():
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    path = Path(directory) / "variant.safetensors"
    save_file(tensors, path)
    return path


def _save(tensors: dict[str, Tensor], path: Path) -> None:
    """Write to a new file and rename it into place: a model loaded from an earlier file at `path` maps
    that file's pages, which an in-place overwrite would pull from under it."""
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, partial, metadata={"format": "pt"})
    partial.replace(path)


def write_checkpoint(
    directory: Path,
    layout: Layout,
    *,
    kind: Kind = "sd1",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    size: Size = "tiny",
    references: References | None = None,
) -> Path:
    """Write a random-weight SD 1.5- or SDXL-layout checkpoint into `directory`; return the .safetensors
    file ("single") or the diffusers folder ("diffusers", `*.fp16.safetensors` weight files when dtype
    is float16, as the Hub's fp16 variant). `references` reuses already built reference models (they
    decide the weights and the kind; seed, size and kind are then ignored)."""
    refs = references or reference_models(seed, size, kind)
    xl = refs.text_encoder_2 is not None
    name = f"{'sdxl' if xl else 'sd15'}-{size}-seed{seed}-{DTYPE_NAMES[dtype]}"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "single":
        path = directory / f"{name}.safetensors"
        _save(single_file_tensors(refs, dtype), path)
        return path
    if layout != "diffusers":
        raise ValueError(f"layout must be 'single' or 'diffusers', got {layout!r}")
    folder = directory / name
    variant = ".fp16" if dtype == torch.float16 else ""
    parts = [
        ("unet", refs.unet, "diffusion_pytorch_model"),
        ("vae", refs.vae, "diffusion_pytorch_model"),
        ("text_encoder", refs.text_encoder, "model"),
    ]
    if xl:
        parts.append(("text_encoder_2", refs.text_encoder_2, "model"))
    for part, module, stem in parts:
        (folder / part).mkdir(parents=True, exist_ok=True)
        tensors = {k: v.to(dtype).contiguous() for k, v in module.state_dict().items()}
        _save(tensors, folder / part / f"{stem}{variant}.safetensors")
        del tensors
    refs.unet.save_config(folder / "unet")
    refs.vae.save_config(folder / "vae")
    for part, module, _ in parts[2:]:
        config = module.config.to_dict() | {"architectures": [type(module).__name__]}
        (folder / part / "config.json").write_text(json.dumps(config, indent=2))
    for tokenizer, pad in [("tokenizer", "<|endoftext|>"), *([("tokenizer_2", "!")] if xl else [])]:
        (folder / tokenizer).mkdir(exist_ok=True)
        clip.write_tokenizer_files(folder / tokenizer)
        (folder / tokenizer / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = SDXL_SCHEDULER_CONFIG if xl else SCHEDULER_CONFIG
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    (folder / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX if xl else MODEL_INDEX, indent=2))
    return folder


def diffusers_pipeline(refs: References, folder: Path, cls=None, scheduler=None):
    """A diffusers pipeline over the reference models: `cls` (default StableDiffusionPipeline, or
    StableDiffusionXLPipeline for SDXL references) with transformers' CLIPTokenizer on the vendored
    vocabulary, no safety checker and, for SDXL, no watermark (it alters pixels) and zeros for an
    empty negative prompt (DreamShaper XL's model_index.json). `scheduler` defaults to Euler."""
    import diffusers

    scheduler = scheduler or diffusers.EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG_ARGS)
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    tokenizer = clip.hf_slow_tokenizer(folder / "tokenizer")
    if refs.text_encoder_2 is None:
        cls = cls or diffusers.StableDiffusionPipeline
        # SD pipelines read the U-Net's sample_size (SD 1.5's: 64) even when the size is given
        refs.unet.register_to_config(sample_size=refs.unet.config.sample_size or 64)
        return cls(
            refs.vae,
            refs.text_encoder,
            tokenizer,
            refs.unet,
            scheduler,
            None,
            None,
            requires_safety_checker=False,
        )
    (folder / "tokenizer_2").mkdir(exist_ok=True)
    cls = cls or diffusers.StableDiffusionXLPipeline
    return cls(
        vae=refs.vae,
        text_encoder=refs.text_encoder,
        text_encoder_2=refs.text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=clip.hf_slow_tokenizer(folder / "tokenizer_2", pad_token="!"),
        unet=refs.unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
