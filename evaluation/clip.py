"""CLIP ViT-B/32 (openai/clip-vit-base-patch32) for CLIP score: the vision tower, the joint model and
CLIPProcessor's image preprocessing.

Parameter names are those of transformers' `CLIPModel`, so the official `model.safetensors` loads as is:

    text_model.*, text_projection.weight                 (text_encoder.clip, causal)
    vision_model.embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}
    vision_model.pre_layrnorm (sic), vision_model.encoder.layers.{i}.*, vision_model.post_layernorm
    visual_projection.weight, logit_scale
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import nn

from text_encoder.clip import ACTIVATIONS, CLIPTextConfig, Encoder, TextTransformer, ignore_position_ids
from weights.checkpoint import read_header, read_tensors

# CLIP's training-set pixel statistics (CLIPImageProcessor's image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class CLIPVisionConfig:
    image_size: int = 224
    patch_size: int = 32
    hidden_size: int = 768
    intermediate_size: int = 3072
    layers: int = 12
    heads: int = 12
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @classmethod
    def vit_b32(cls) -> CLIPVisionConfig:
        """openai/clip-vit-base-patch32: 224 px in 32 px patches (7 x 7 + class token), width 768."""
        return cls()


class VisionEmbeddings(nn.Module):
    """[class token, patch_1, ..., patch_N] + learned positions; patches by a stride-P conv (no bias)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        p = config.patch_size
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, kernel_size=p, stride=p, bias=False)
        n_patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(n_patches + 1, config.hidden_size)
        self.register_load_state_dict_pre_hook(ignore_position_ids)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = rearrange(self.patch_embedding(pixels), "b d h w -> b (h w) d")
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class VisionTransformer(nn.Module):
    """HF `CLIPVisionTransformer`: LayerNorm before the encoder, unmasked attention, and the class
    token's final state through `post_layernorm` as the image's pooled output."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(
            config.layers,
            config.hidden_size,
            config.heads,
            config.intermediate_size,
            config.activation,
            config.layer_norm_eps,
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalized pixels -> pooled [B, D]."""
        size = self.config.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(
                f"pixels must have shape [batch, 3, {size}, {size}], got {list(pixels.shape)}; "
                f"use evaluation.clip.preprocess"
            )
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)), causal=False)
        return self.post_layernorm(x[:, 0])


class CLIPModel(nn.Module):
    """Text and image towers with their projections into the shared embedding space."""

    def __init__(self, text: CLIPTextConfig, vision: CLIPVisionConfig):
        super().__init__()
        if text.projection_dim != vision.projection_dim:
            raise ValueError(
                f"text projection_dim {text.projection_dim} != vision projection_dim "
                f"{vision.projection_dim}; both towers must project to the same space"
            )
        self.text_config, self.vision_config = text, vision
        self.text_model = TextTransformer(text)
        self.text_projection = nn.Linear(text.hidden_size, text.projection_dim, bias=False)
        self.vision_model = VisionTransformer(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, vision.projection_dim, bias=False)
        # the contrastive training temperature, log(1/0.07); CLIP score does not use it
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @classmethod
    def vit_b32(cls) -> CLIPModel:
        return cls(CLIPTextConfig.vit_b32(), CLIPVisionConfig.vit_b32())

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """HF `get_image_features`: [B, 3, 224, 224] -> [B, 512] (not normalized)."""
        return self.visual_projection(self.vision_model(pixels))

    def text_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        """HF `get_text_features`: [B, 77] token ids -> [B, 512] (not normalized)."""
        return self.text_projection(self.text_model.pooled(ids))


def load_clip(
    weights_path: str | Path,
    device: str | torch.device = "cpu",
    text: CLIPTextConfig | None = None,
    vision: CLIPVisionConfig | None = None,
) -> CLIPModel:
    """A CLIPModel (ViT-B/32 unless configs are given) from an HF-layout `model.safetensors`, in float32."""
    text, vision = text or CLIPTextConfig.vit_b32(), vision or CLIPVisionConfig.vit_b32()
    header = read_header(weights_path)  # checked whole, naming the file (WeightsError), before any tensor
    state = dict(read_tensors(header.path, header.tensors.items(), torch.float32, stamp=header.stamp))
    with torch.device("meta"):  # parameters come from the file; no random init, no second copy
        model = CLIPModel(text, vision)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not fit CLIP ({text.hidden_size}-wide text, "
            f"{vision.hidden_size}-wide vision) in the transformers CLIPModel layout: missing "
            f"{missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}); "
            f"pass openai/clip-vit-base-patch32's model.safetensors"
        )
    return model.float().to(device).eval()


def preprocess(images: Sequence[Image.Image | torch.Tensor] | torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIPProcessor's image pipeline: RGB, resize the shorter side to `size` (bicubic), center crop
    `size` x `size`, scale to [0, 1], normalize with CLIP's mean/std. Images are PIL images or uint8
    tensors [3, H, W] (a uint8 batch [B, 3, H, W] also works), as torchmetrics' CLIPScore takes them.

    Resize semantics: torchmetrics calls transformers' CLIPProcessor, whose default (slow)
    CLIPImageProcessor turns the uint8 image into a PIL image and resizes it with PIL's BICUBIC
    filter (antialiased when shrinking, rounded back to uint8), long side int(size * long / short).
    This does the same PIL call, so the pixels agree exactly.
    """
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    batch = []
    for image in images:
        pil = _to_pil(image)
        w, h = pil.size
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        x = torch.from_numpy(np.asarray(pil.resize((new_w, new_h), Image.Resampling.BICUBIC)).copy())
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = rearrange(x[top : top + size, left : left + size], "h w c -> c h w")
        batch.append(((x.double() / 255).float() - mean) / std)
    if not batch:
        raise ValueError("preprocess got no images")
    return torch.stack(batch)


def _to_pil(image: Image.Image | torch.Tensor) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"images must be PIL images or uint8 tensors [3, H, W], got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise TypeError(
            f"image tensors must be uint8 [3, H, W] with values 0..255 (as torchmetrics takes "
            f"them), got {image.dtype} {list(image.shape)}"
        )
    return Image.fromarray(rearrange(image, "c h w -> h w c").cpu().numpy())
