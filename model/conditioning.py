"""The U-Net's conditioning of prompts, one conditioner per family (docs/model-facts.md sections 2.3
and 4; the conditioners of sgm's configs, diffusers' `encode_prompt`):

- SD 1.x: the context [B, 77, 768], CLIP ViT-L's last layer after its final LayerNorm;
- SDXL: the context [B, 77, 2048], CLIP ViT-L's and OpenCLIP ViT-bigG's penultimate hidden states
  without the final LayerNorm side by side, and the added vector y [B, 2816] (sgm's
  `ConcatTimestepEmbedderND`, diffusers' `add_time_ids`):

    y = cat(pooled, e(orig_h), e(orig_w), e(crop_top), e(crop_left), e(target_h), e(target_w))

  where pooled is bigG's final-LN state at the eos token through its projection (1280 wide) and e
  the 256-d cos-first sinusoidal embedding of one number (the timestep embedding).

Each encoder reads its own token ids (CLIP-L's tokenizer pads with eos, 49407; bigG's with 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from model.unet import timestep_embedding

SIZE_EMBED_DIM = 256  # sgm: ConcatTimestepEmbedderND(outdim=256); diffusers: addition_time_embed_dim
SIZE_NUMBERS = 6  # (orig_h, orig_w), (crop_top, crop_left), (target_h, target_w)
PENULTIMATE = -2  # hidden_states[-2]: sgm's layer "penultimate" / layer_idx 11 of CLIP-L's 12
Cond = torch.Tensor | dict[str, torch.Tensor]


@dataclass(frozen=True)
class SizeConditioning:
    """What SDXL was told about an image in training: its original size, the top-left corner of the
    crop taken from it and the size asked for, each (height, width) / (top, left) in pixels. The
    defaults are the paper's code's, (1024, 1024, 0, 0, 1024, 1024) for every image and both halves
    of guidance (docs/recipe.md section 6)."""

    original: tuple[int, int] = (1024, 1024)
    crop: tuple[int, int] = (0, 0)
    target: tuple[int, int] = (1024, 1024)

    def __post_init__(self) -> None:
        for name in ("original", "crop", "target"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
                raise ValueError(f"size conditioning {name} must be two integers >= 0, got {value!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_numbers(cls, numbers: list[int] | tuple[int, ...]) -> SizeConditioning:
        """From the six numbers in y's order (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
        if len(numbers) != SIZE_NUMBERS:
            raise ValueError(f"size conditioning needs {SIZE_NUMBERS} numbers, got {list(numbers)}")
        return cls(tuple(numbers[0:2]), tuple(numbers[2:4]), tuple(numbers[4:6]))

    def numbers(self) -> tuple[int, ...]:
        return (*self.original, *self.crop, *self.target)


def added_vector(pooled: torch.Tensor, size: SizeConditioning, dim: int = SIZE_EMBED_DIM) -> torch.Tensor:
    """y for the U-Net's label_emb: [B, P] pooled text -> [B, P + 6 dim], in pooled's dtype. The
    embeddings are computed in float32 (exact for sizes up to 2^24), as sgm and diffusers do."""
    numbers = torch.tensor(size.numbers(), dtype=torch.float32, device=pooled.device)
    sizes = timestep_embedding(numbers, dim).reshape(1, -1).to(pooled.dtype)  # [1, 6 dim]
    return torch.cat([pooled, sizes.expand(pooled.shape[0], -1)], dim=1)


@dataclass(frozen=True)
class Conditioner:
    """Prompts -> the U-Net's conditioning, from a family's tokenizers and text encoders (one each for
    SD 1.x; CLIP ViT-L's and OpenCLIP bigG's for SDXL, which also takes the size conditioning)."""

    tokenizers: Sequence[Callable[[list[str]], torch.Tensor]]
    encoders: Sequence[nn.Module]

    def __call__(self, prompts: str | list[str], size: SizeConditioning | None = None) -> Cond:
        with torch.no_grad():
            ids = [tokenizer(prompts).to(self._weight().device) for tokenizer in self.tokenizers]
            return self.encode(ids, size)

    def encode(self, ids: list[torch.Tensor], size: SizeConditioning | None) -> Cond:
        raise NotImplementedError

    def null(self, batch: int = 1, size: SizeConditioning | None = None) -> Cond:
        """The conditioning of no text at all: zero text features (and, with size conditioning, a zero
        pooled vector beside the size embeddings, which stay). SDXL pipelines use it for an empty
        negative prompt (`force_zeros_for_empty_prompt`, docs/model-facts.md sections 2.3 and 10.2)."""
        weight = self._weight()
        width = sum(encoder.config.hidden_size for encoder in self.encoders)
        zeros = torch.zeros(batch, self.tokenizers[0].length, width, dtype=weight.dtype)
        return self.zero(zeros.to(weight.device), size)

    def zero(self, context: torch.Tensor, size: SizeConditioning | None) -> Cond:
        raise NotImplementedError

    def _weight(self) -> torch.Tensor:
        return next(self.encoders[0].parameters())


class TextConditioner(Conditioner):
    """SD 1.x: the context alone, the text encoder's last layer after its final LayerNorm."""

    def encode(self, ids: list[torch.Tensor], size: SizeConditioning | None) -> Cond:
        _refuse(size)
        return self.encoders[0](ids[0])

    def zero(self, context: torch.Tensor, size: SizeConditioning | None) -> Cond:
        _refuse(size)
        return context


class SizedConditioner(Conditioner):
    """SDXL: {"context": both encoders' penultimate states side by side, "y": the added vector},
    with `size` (default (1024, 1024, 0, 0, 1024, 1024))."""

    def encode(self, ids: list[torch.Tensor], size: SizeConditioning | None) -> Cond:
        clip_l, bigg = self.encoders
        context_l = clip_l(ids[0], layer=PENULTIMATE, final_norm=False)
        context_g, pooled = bigg.hidden_and_pooled(ids[1], PENULTIMATE)
        context = torch.cat([context_l, context_g], dim=-1)
        return {"context": context, "y": added_vector(pooled, size or SizeConditioning())}

    def zero(self, context: torch.Tensor, size: SizeConditioning | None) -> Cond:
        pooled = torch.zeros(context.shape[0], self.encoders[-1].config.projection_dim, dtype=context.dtype)
        return {"context": context, "y": added_vector(pooled.to(context.device), size or SizeConditioning())}


def _refuse(size: SizeConditioning | None) -> None:
    if size is not None:
        raise ValueError("this model takes no size conditioning; pass size=None")
