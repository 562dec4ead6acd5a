"""CLIP score with torchmetrics' semantics (docs/evaluation.md section 4): 100 * cos(image embedding, prompt
embedding) with openai/clip-vit-base-patch32, averaged over the image-prompt pairs, floored at 0.

torchmetrics' `CLIPScore.compute()` returns max(sum_i s_i / n, 0): the floor applies to the mean, not
to each image as its docstring formula max(100 cos, 0) reads. With real CLIP weights the scores of
generated images are far above 0 (the paper's tables report about 30-33), where the two readings
agree; this follows the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.clip import CLIPModel, load_clip, preprocess
from evaluation.images import load_rgb
from evaluation.prompts import read_manifest
from text_encoder import Tokenizer


def similarities(
    images: Sequence[Image.Image | torch.Tensor] | torch.Tensor,
    prompts: Sequence[str],
    model: CLIPModel,
    tokenizer: Tokenizer,
    batch_size: int = 32,
) -> torch.Tensor:
    """s_i = 100 * cos(E_image_i, E_prompt_i) for each pair, float64 [N] on the CPU."""
    if len(images) != len(prompts):
        raise ValueError(
            f"got {len(images)} images but {len(prompts)} prompts; CLIP score pairs them one to one"
        )
    param = next(model.parameters())
    scores = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            pixels = preprocess(images[start : start + batch_size], model.vision_config.image_size)
            ids = tokenizer(list(prompts[start : start + batch_size]))
            image = F.normalize(model.image_embeds(pixels.to(param.device, param.dtype)).double(), dim=-1)
            text = F.normalize(model.text_embeds(ids.to(param.device)).double(), dim=-1)
            scores.append(100 * (image * text).sum(-1).cpu())
    return torch.cat(scores)


def mean_score(scores: torch.Tensor) -> float:
    """torchmetrics' reduction: max(mean s_i, 0)."""
    return max(scores.double().mean().item(), 0.0)


def clip_score(
    images: Sequence[Image.Image | torch.Tensor] | torch.Tensor,
    prompts: Sequence[str],
    model: CLIPModel,
    tokenizer: Tokenizer,
    batch_size: int = 32,
) -> float:
    """CLIP score of images (PIL or uint8 [3, H, W]) against their prompts."""
    return mean_score(similarities(images, prompts, model, tokenizer, batch_size))


def score_folder(
    image_dir: str | Path,
    manifest_path: str | Path,
    weights_path: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> float:
    """CLIP score of the images `{index:05d}.png` in `image_dir` against the manifest's prompts, with the
    ViT-B/32 weights at `weights_path` (openai/clip-vit-base-patch32 `model.safetensors`)."""
    entries = read_manifest(manifest_path)
    paths = [Path(image_dir) / f"{entry.index:05d}.png" for entry in entries]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        listed = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images in {manifest_path} are missing "
            f"from {image_dir}: {listed}"
        )
    model, tokenizer = load_clip(weights_path, device), Tokenizer.sd1()
    scores = []
    for start in range(0, len(paths), batch_size):  # one batch of images in memory at a time
        images = [load_rgb(path) for path in paths[start : start + batch_size]]
        prompts = [entry.prompt for entry in entries[start : start + batch_size]]
        scores.append(similarities(images, prompts, model, tokenizer, batch_size))
    return mean_score(torch.cat(scores))
