"""SDXL's added vector condition y: the pooled text vector and the size micro-conditioning
(docs/model-facts.md section 2.3; sgm's `ConcatTimestepEmbedderND`, diffusers' `add_time_ids`).

    y = cat(pooled, e(orig_h), e(orig_w), e(crop_top), e(crop_left), e(target_h), e(target_w))

where e is the 256-d cos-first sinusoidal embedding of one number (the timestep embedding), so
y is 1280 + 6 x 256 = 2816 wide for SDXL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.unet import timestep_embedding

SIZE_EMBED_DIM = 256  # sgm: ConcatTimestepEmbedderND(outdim=256); diffusers: addition_time_embed_dim
SIZE_NUMBERS = 6  # (orig_h, orig_w), (crop_top, crop_left), (target_h, target_w)


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
