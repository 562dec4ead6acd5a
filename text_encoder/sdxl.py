"""SDXL's text conditioning from its two encoders (docs/model-facts.md sections 2.3 and 4; the
conditioner of sgm's `sd_xl_base.yaml`, diffusers' `StableDiffusionXLPipeline.encode_prompt`):

- context: CLIP ViT-L/14's and OpenCLIP ViT-bigG/14's penultimate hidden states, without the final
  LayerNorm, concatenated along the features (768 + 1280 = 2048 wide);
- pooled: bigG's final-LN state at the eos token through its projection (1280 wide).

Each encoder reads its own token ids: CLIP-L's tokenizer pads with eos (49407), bigG's with 0.
"""

from __future__ import annotations

import torch

from text_encoder.clip import CLIPTextModel

PENULTIMATE = -2  # hidden_states[-2]: sgm's layer "penultimate" / layer_idx 11 of CLIP-L's 12


def sdxl_text(
    clip_l: CLIPTextModel, bigg: CLIPTextModel, ids_l: torch.Tensor, ids_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [B, 77, D_l + D_g], pooled [B, P]) of the prompts tokenised as ids_l and ids_g."""
    context_l = clip_l(ids_l, layer=PENULTIMATE, final_norm=False)
    context_g, pooled = bigg.hidden_and_pooled(ids_g, PENULTIMATE)
    return torch.cat([context_l, context_g], dim=-1), pooled
