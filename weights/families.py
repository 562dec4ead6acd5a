"""The model families, as data, read by the loader, the pipeline and the presets alike
(docs/model-facts.md sections 1-4, 9).

For the loader: where each family's text encoders sit in a single file and in which key layout, what
their configs are when no config.json says, the latent scale, how its U-Net's heads are given, and the
rule its widths obey. For generation: the default image size, the paper's tuned presets by step count,
how an empty negative prompt is conditioned, whether the U-Net takes SDXL's size conditioning, and
the VAE's default dtype.

A new family is one more `Family` here, its detection in weights/detect.py and its conditioner in
model/conditioning.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from model import SIZE_EMBED_DIM
from model.conditioning import SIZE_NUMBERS, Conditioner, SizedConditioner, TextConditioner
from text_encoder.tokenizer import EOS
from weights import keymaps

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
LABELS = {"unet": "U-Net", "vae": "VAE"}
EMPTY_NEGATIVE = ("encode", "zeros")  # an empty negative prompt: the encoded "" or zero embeddings


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
class Family:
    """A kind of model: how its files are laid out and read, and how generation runs it."""

    name: str  # sd.kind
    label: str
    text_encoders: tuple[TextEncoder, ...]
    latent_scale: float  # the VAE's scaling_factor when no config.json says
    unet_heads: Mapping[str, int]  # UNetConfig's num_heads or head_dim when no config.json says
    size_conditioning: bool  # whether the U-Net takes y = pooled text + SDXL's size embeddings
    size: int  # default image side in pixels
    tuned_presets: Mapping[int, str]  # the paper's presets tuned for this family, by step count
    default_steps: int
    empty_negative: str  # how an empty negative prompt is conditioned by default (EMPTY_NEGATIVE)
    vae_dtypes: Mapping[str, str]  # the VAE's default dtype for a model dtype, where not the same
    conditioner: type[Conditioner]  # prompts -> the U-Net's conditioning, from the text encoders

    def vae_dtype(self, dtype: str) -> str:
        return self.vae_dtypes.get(dtype, dtype)

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
        added = pooled + SIZE_NUMBERS * SIZE_EMBED_DIM if self.size_conditioning else None
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


SD1 = Family(
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
    size_conditioning=False,
    size=512,
    tuned_presets={5: "paper-5", 6: "paper-6", 8: "paper-8"},
    default_steps=5,
    empty_negative="encode",
    vae_dtypes={},
    conditioner=TextConditioner,
)
# The paper's SDXL code passes no negative prompt, so the unconditional half is zero embeddings
# (docs/recipe.md section 6); the SDXL VAE overflows in float16 (docs/model-facts.md section 3), so
# it decodes in float32 unless a float16 VAE is asked for (the fp16-fix VAE).
SDXL = Family(
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
    size_conditioning=True,
    size=1024,
    tuned_presets={6: "paper-xl-6", 8: "paper-xl-8"},
    default_steps=6,
    empty_negative="zeros",
    vae_dtypes={"float16": "float32"},
    conditioner=SizedConditioner,
)
FAMILIES = {family.name: family for family in (SD1, SDXL)}
