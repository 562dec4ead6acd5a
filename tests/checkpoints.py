"""Random-weight SD 1.x checkpoints in the official layouts, for the tests of weights/, run_sample.py and
evaluation/:

    path = write_checkpoint(tmp_path, "single")        # an LDM single file, tiny
    folder = write_checkpoint(tmp_path, "diffusers")   # a diffusers folder, tiny
    refs = reference_models()                          # the same weights in diffusers / transformers

The models are the reference implementations (tests/reference/) with re-randomised weights; the single
file is written with the tests' own key maps, independent of weights/keymaps.py, and carries
`alphas_cumprod` and a `...position_ids` key, which a loader must ignore. Every weight is rounded to
float16 once drawn, so float16 and float32 files hold the same numbers and either, loaded in float32,
gives the references' outputs.

"tiny" keeps SD 1.5's structure (four levels, two ResBlocks each, attention on the first three,
32 norm groups, 8 U-Net heads, 64-wide CLIP heads) at the smallest widths those rules allow: U-Net
and VAE 32/64, two CLIP layers of width 64 (one head). A whole 64 x 64-pixel run (prompt, 5 guided
steps, decode) took 3 s on 2 CPU cores that other jobs kept busy (load 4). "full" is SD 1.5 itself
(about 4.3 GB of float32 weights in the references).
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
from transformers import CLIPTextModel

from tests.reference import clip, unet, vae

Layout = Literal["single", "diffusers"]
Size = Literal["tiny", "full"]

TINY_TEXT = dict(
    clip.SMALL_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1
)
WIDTHS = {"tiny": (unet.SMALL, vae.SMALL, TINY_TEXT), "full": (unet.FULL, vae.FULL, clip.SD1_TEXT)}
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


class References(NamedTuple):
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel


def sd15_alphas_cumprod() -> Tensor:
    """SD's training schedule as LDM stores it in a checkpoint: betas linear in sqrt space, float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


@torch.no_grad()
def _round_to_half(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.copy_(p.half().float())
    return model


def _build(seed: int, size: Size) -> References:
    unet_widths, vae_widths, text = WIDTHS[size]
    return References(
        _round_to_half(unet.diffusers_unet(unet.sd15_config(unet_widths, text["hidden_size"]), seed)),
        _round_to_half(vae.diffusers_vae(vae_widths, seed=seed)),
        _round_to_half(clip.hf_text_model(text, seed=seed)),
    )


@cache
def _tiny(seed: int) -> References:
    return _build(seed, "tiny")


def reference_models(seed: int = 0, size: Size = "tiny") -> References:
    """The float32 reference modules (eval mode) holding the weights `write_checkpoint` writes for `seed`.
    Tiny ones are built once per process and shared: do not modify them. Full ones are built anew."""
    return _tiny(seed) if size == "tiny" else _build(seed, size)


def single_file_tensors(refs: References, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The LDM single-file state dict (prefixes model.diffusion_model., first_stage_model.,
    cond_stage_model.transformer.) plus alphas_cumprod and the text encoder's position_ids."""
    text = {"cond_stage_model.transformer." + k: v for k, v in refs.text_encoder.state_dict().items()}
    state = {
        **unet.ldm_state_dict(refs.unet, prefix="model.diffusion_model."),
        **vae.ldm_state_dict(refs.vae, prefix="first_stage_model."),
        **text,
    }
    tensors = {k: v.to(dtype).contiguous() for k, v in state.items()}
    positions = refs.text_encoder.config.max_position_embeddings
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    tensors["alphas_cumprod"] = sd15_alphas_cumprod()
    return tensors


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
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    size: Size = "tiny",
    references: References | None = None,
) -> Path:
    """Write a random-weight SD 1.5-layout checkpoint into `directory`; return the .safetensors file
    ("single") or the diffusers folder ("diffusers", `*.fp16.safetensors` weight files when dtype is
    float16, as the Hub's fp16 variant). `references` reuses already built reference models (they
    decide the weights; seed and size are then ignored)."""
    refs = references or reference_models(seed, size)
    name = f"sd15-{size}-seed{seed}-{DTYPE_NAMES[dtype]}"
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
    for part, module, stem in (
        ("unet", refs.unet, "diffusion_pytorch_model"),
        ("vae", refs.vae, "diffusion_pytorch_model"),
        ("text_encoder", refs.text_encoder, "model"),
    ):
        (folder / part).mkdir(parents=True, exist_ok=True)
        tensors = {k: v.to(dtype).contiguous() for k, v in module.state_dict().items()}
        _save(tensors, folder / part / f"{stem}{variant}.safetensors")
        del tensors
    refs.unet.save_config(folder / "unet")
    refs.vae.save_config(folder / "vae")
    text_config = refs.text_encoder.config.to_dict() | {"architectures": ["CLIPTextModel"]}
    (folder / "text_encoder" / "config.json").write_text(json.dumps(text_config, indent=2))
    (folder / "tokenizer").mkdir(exist_ok=True)
    clip.write_tokenizer_files(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder
