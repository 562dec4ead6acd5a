"""The model families `weights.load` reads, as data (docs/model-facts.md sections 1-4, 9): where each
one's text encoders sit in a single file and in which key layout, what their configs are when no
config.json says, the latent scale, how its U-Net's heads are given, and the rule its widths obey.
A new family is one more `Kind` here (and its detection in weights/detect.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from model import SIZE_EMBED_DIM
from model.conditioning import SIZE_NUMBERS
from text_encoder.tokenizer import EOS
from weights import keymaps

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
LABELS = {"unet": "U-Net", "vae": "VAE"}


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a family."""

    component: str  # its attribute of StableDiffusion and its folder in a diffusers layout
    label: str
    prefix: str  # its keys' prefix in a single file
    layout: Callable[[Iterable[str]], keymaps.Rules]  # its key layout there
    activation: str  # when no config.json says
    pad_id: int  # its tokenizer pads with this id
    tokenizer: str  # its vocabulary's folder in a diffusers layout


@dataclass(frozen=True)
class Kind:
    name: str  # sd.kind
    label: str
    text_encoders: tuple[TextEncoder, ...]
    latent_scale: float  # the VAE's scaling_factor when no config.json says
    unet_heads: Mapping[str, int]  # UNetConfig's num_heads or head_dim when no config.json says
    added_vector: bool  # whether the U-Net takes y = pooled text + size embeddings

    def label_of(self, component: str) -> str:
        return LABELS.get(component) or next(t.label for t in self.text_encoders if t.component == component)

    def prefixes(self) -> dict[str, str]:
        """component -> its prefix in a single file."""
        return {"unet": UNET_PREFIX, "vae": VAE_PREFIX, **{t.component: t.prefix for t in self.text_encoders}}

    def widths_problem(self, configs: Mapping) -> str | None:
        """Why the inferred configs cannot be one model of this kind, or None. The U-Net attends to the
        text encoders' features side by side; SDXL's y is the last encoder's pooled vector and six
        256-d size embeddings (docs/model-facts.md section 2.3)."""
        unet = configs["unet"]
        widths = [configs[t.component].hidden_size for t in self.text_encoders]
        if unet.context_dim != sum(widths):
            texts = " + ".join(map(str, widths))
            return (
                f"the U-Net attends to {unet.context_dim}-wide text features but the text encoders are "
                f"{texts} wide"
            )
        pooled = configs[self.text_encoders[-1].component].projection_dim
        added = pooled + SIZE_NUMBERS * SIZE_EMBED_DIM if self.added_vector else None
        if unet.adm_in_channels != added:
            needs = (
                f"the pooled text ({pooled}) + {SIZE_NUMBERS} x {SIZE_EMBED_DIM} = {added}"
                if added
                else "none"
            )
            return (
                f"the U-Net's added condition y is {unet.adm_in_channels} wide but {self.label} needs {needs}"
            )
        return None


SD1 = Kind(
    "sd1",
    "SD 1.x",
    (
        TextEncoder(
            "text_encoder",
            "text encoder",
            "cond_stage_model.transformer.",
            keymaps.hf_text,
            "quick_gelu",
            EOS,
            "tokenizer",
        ),
    ),
    latent_scale=0.18215,
    unet_heads={"num_heads": 8},
    added_vector=False,
)
SDXL = Kind(
    "sdxl",
    "SDXL",
    (
        TextEncoder(
            "text_encoder",
            "CLIP ViT-L text encoder",
            "conditioner.embedders.0.transformer.",
            keymaps.hf_text,
            "quick_gelu",
            EOS,
            "tokenizer",
        ),
        TextEncoder(
            "text_encoder_2",
            "OpenCLIP bigG text encoder",
            "conditioner.embedders.1.model.",
            keymaps.open_clip_text,
            "gelu",
            0,
            "tokenizer_2",
        ),
    ),
    latent_scale=0.13025,
    unet_heads={"head_dim": 64},
    added_vector=True,
)
KINDS = {kind.name: kind for kind in (SD1, SDXL)}
