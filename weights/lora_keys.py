"""The names a LoRA file gives the layers it adapts, and the project parameter each one lands on, as data.

A LoRA names a layer by its module path in one of two trees (docs: ../shared/reference/
distilled-and-guidance.md section 4): the U-Net's diffusers names (kohya SD 1.x, DMD2's SDXL LoRA, every
PEFT / diffusers file) or its original LDM / sgm names (kohya SDXL); the text encoders' HF transformers
names. kohya writes the path with "_" for ".", PEFT / diffusers with the dots. The project's U-Net
parameters carry the LDM names and its text encoders the HF ones, so every spelling of every weight
of a model is listed here from the model's own parameter names, and a LoRA name either is in the list
or adapts nothing of that model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from weights import keymaps

UNET = "unet"
# kohya's prefix of each component's layer names; SD 1.x files say `te`, SDXL ones `te1` and `te2`.
KOHYA_PREFIXES = {
    "lora_unet_": UNET,
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
# The PEFT / diffusers prefixes; a name without one is a U-Net layer (peft's own U-Net files).
PEFT_PREFIXES = {"unet.": UNET, "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}

_DIFFUSERS_RESNET = {ldm: diffusers for diffusers, ldm in keymaps._RESNET.items()}
_DIFFUSERS_TOP = {ldm: diffusers for diffusers, ldm in keymaps._UNET_TOP.items()}


def diffusers_unet_module(module: str, num_res_blocks: int) -> str | None:
    """The diffusers name of an LDM U-Net module (docs/model-facts.md section 1.3, the inverse of
    keymaps.diffusers_unet); None for a module diffusers has no name for. With L ResBlocks per level,
    each level holds L + 1 input blocks (the last one its downsampler) and L + 1 output blocks."""
    per_level = num_res_blocks + 1
    if module in _DIFFUSERS_TOP:
        return _DIFFUSERS_TOP[module]

    def resnet(prefix: str, layer: str) -> str | None:
        return f"{prefix}.{_DIFFUSERS_RESNET[layer]}" if layer in _DIFFUSERS_RESNET else None

    if m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op", module):
        return f"down_blocks.{int(m[1]) // per_level - 1}.downsamplers.0.conv"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", module):
        level, index = divmod(int(m[1]) - 1, per_level)
        if m[2] == "0":
            return resnet(f"down_blocks.{level}.resnets.{index}", m[3])
        return f"down_blocks.{level}.attentions.{index}.{m[3]}"
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", module):
        if m[1] == "1":
            return f"mid_block.attentions.0.{m[2]}"
        return resnet(f"mid_block.resnets.{int(m[1]) // 2}", m[2])
    if m := re.fullmatch(r"output_blocks\.(\d+)\.([012])\.(.+)", module):
        level, index = divmod(int(m[1]), per_level)
        if m[3] == "conv":  # an upsampler: after the transformer where the level has one
            return f"up_blocks.{level}.upsamplers.0.conv"
        if m[2] == "0":
            return resnet(f"up_blocks.{level}.resnets.{index}", m[3])
        return f"up_blocks.{level}.attentions.{index}.{m[3]}"
    return None


def adaptable(parameters: Iterable[tuple[str, tuple[int, ...]]]) -> list[str]:
    """The modules whose `weight` a LoRA can adapt: Linear and Conv2d weights (2-D or 4-D)."""
    return [
        name.removesuffix(".weight")
        for name, shape in parameters
        if name.endswith(".weight") and len(shape) in (2, 4)
    ]


def spellings(component: str, modules: Iterable[str], num_res_blocks: int | None = None) -> dict[str, str]:
    """Every name a LoRA file may give a module of `component` -> the module's project name: the project
    name itself and, for the U-Net, its diffusers name; each dotted (PEFT) and with "_" (kohya)."""
    names: dict[str, str] = {}
    for module in modules:
        aliases = [module]
        if component == UNET:
            diffusers = diffusers_unet_module(module, num_res_blocks)
            aliases += [diffusers] if diffusers else []
        for alias in aliases:
            names[alias] = module
            names[alias.replace(".", "_")] = module
    return names
