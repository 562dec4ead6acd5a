"""Reference CLIP models and tokenizer files from transformers, for parity tests only.

Models are built at a reduced size (or the full official one) with every parameter re-randomised,
layer norms included, so that no parameter can be silently ignored by the code under test. The
tokenizer files (`vocab.json`, `merges.txt`) are derived here from the vendored gz independently of
`text_encoder/tokenizer.py`, from the facts in docs/model-facts.md section 5.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
import transformers
from torch import nn

VOCAB_GZ = Path(__file__).resolve().parents[2] / "text_encoder" / "bpe_simple_vocab_16e6.txt.gz"

# A small text tower in the official layout: full vocabulary and 77 positions, tiny width and depth.
SMALL_TEXT = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# CLIP ViT-L/14 text (SD 1.5 `text_encoder/config.json`).
SD1_TEXT = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# OpenCLIP ViT-bigG/14 text (SDXL `text_encoder_2/config.json`, with projection_dim 1280).
BIGG_TEXT = dict(
    SD1_TEXT,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
)
# openai/clip-vit-base-patch32 `config.json`.
B32_TEXT = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
B32_VISION = dict(
    image_size=224,
    patch_size=32,
    num_channels=3,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# A small vision tower that still takes 224-pixel images in 32-pixel patches (7 x 7 + 1 tokens).
SMALL_VISION = dict(
    B32_VISION, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2
)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every parameter so each one matters: weights ~ N(0, 1/fan_in) (activations stay O(1)
    and attention logits are far from uniform), embedding tables and vectors ~ N(0, 1), norm scales
    ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.endswith(("token_embedding.weight", "position_embedding.weight")) or p.ndim < 2:
                p.copy_(noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return model


def hf_text_model(
    config: dict,
    projection_dim: int | None = None,
    eos_token_id: int = 2,
    seed: int = 0,
    randomize: bool = True,
):
    """transformers `CLIPTextModel` (or `CLIPTextModelWithProjection` with a projection), eager
    attention, random weights. eos_token_id 2 is the legacy value of the SD configs (eos found by
    argmax); 49407 makes transformers search for the first eos id instead."""
    extra = {"projection_dim": projection_dim} if projection_dim else {}
    cfg = transformers.CLIPTextConfig(
        **config, **extra, eos_token_id=eos_token_id, attn_implementation="eager"
    )
    cls = transformers.CLIPTextModelWithProjection if projection_dim else transformers.CLIPTextModel
    model = cls(cfg)
    return randomize_(model, seed).eval() if randomize else model


def hf_clip_model(text: dict, vision: dict, projection_dim: int = 512, seed: int = 0):
    """transformers `CLIPModel` (text + vision towers, projections, logit_scale), random weights."""
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    cfg._attn_implementation = "eager"
    return randomize_(transformers.CLIPModel(cfg), seed).eval()


def clip_vocab() -> tuple[list[str], list[str]]:
    """(vocabulary in id order, merge lines) from the gz, following the facts: line 0 is a header,
    the next 48,894 lines are the merges; the vocabulary is the 256 byte characters in GPT-2 order,
    the same with '</w>', the merged pairs, then the two special tokens."""
    lines = gzip.decompress(VOCAB_GZ.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + 48894]
    kept = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    # GPT-2 order: the printable bytes first (as themselves), then the rest as chr(256), chr(257), ...
    order = sorted(range(256), key=lambda b: (b not in kept, b))
    shifted = {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in kept)}
    chars = [chr(b) if b in kept else shifted[b] for b in order]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    return [*vocab, "<|startoftext|>", "<|endoftext|>"], merges


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A diffusers-style `tokenizer/` folder's `vocab.json` and `merges.txt`."""
    vocab, merges = clip_vocab()
    vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
    ids = {t: i for i, t in enumerate(vocab)}
    vocab_json.write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_json, merges_txt


def hf_slow_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> transformers.CLIPTokenizer:
    """transformers' pure-Python CLIPTokenizer: SD 1.5 pipelines' tokenizer (SDXL's second one pads
    with "!", id 0). It must have ftfy, or it falls back to a different (BERT) text cleaning."""
    files = map(str, write_tokenizer_files(folder))
    tok = transformers.CLIPTokenizer(*files, pad_token=pad_token, model_max_length=77)
    assert tok.fix_text is not None, "ftfy is not installed; the reference tokenizer would not use it"
    return tok


def open_clip_state_dict(model: transformers.CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """The open_clip layout of a text tower with projection (SDXL's bigG in `sd_xl_base_1.0`, keys
    under `conditioner.embedders.1.model.`), written from the table of docs/model-facts.md section 4.2
    independently of weights/keymaps.py: q, k, v stacked into `in_proj_*`, the projection stored as
    P with `x @ P` (the Linear weight transposed), and open_clip's `logit_scale`, which SD never uses."""
    state = model.state_dict()
    hf = "text_model."
    out = {
        "token_embedding.weight": state[hf + "embeddings.token_embedding.weight"],
        "positional_embedding": state[hf + "embeddings.position_embedding.weight"],
        "ln_final.weight": state[hf + "final_layer_norm.weight"],
        "ln_final.bias": state[hf + "final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].t(),
        "logit_scale": torch.tensor(2.6592),  # ln(1 / 0.07), open_clip's initial value
    }
    renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    renames["attn.out_proj"] = "self_attn.out_proj"
    for i in range(model.config.num_hidden_layers):
        layer, block = f"{hf}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for ours, theirs in renames.items():
            for kind in ("weight", "bias"):
                out[f"{block}{ours}.{kind}"] = state[f"{layer}{theirs}.{kind}"]
        for kind in ("weight", "bias"):
            packed = [state[f"{layer}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(packed)
    return {key: tensor.contiguous() for key, tensor in out.items()}
