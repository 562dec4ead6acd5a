"""The CLIP text transformer (docs/model-facts.md section 4), with the Hugging Face transformers parameter
names, so an HF or SD single-file state dict loads with no key map once its prefix is stripped:

    text_model.embeddings.{token_embedding, position_embedding}.weight
    text_model.encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}
    text_model.final_layer_norm
    text_projection.weight                  (only with a projection, as in CLIPTextModelWithProjection)

The encoder blocks are shared with the CLIP vision tower (evaluation/clip.py), which uses them unmasked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    max_positions: int = 77
    hidden_size: int = 768
    intermediate_size: int = 3072
    layers: int = 12
    heads: int = 12
    activation: str = "quick_gelu"  # "quick_gelu" (OpenAI CLIP) or "gelu" (exact, OpenCLIP bigG)
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")

    @classmethod
    def sd1(cls) -> CLIPTextConfig:
        """CLIP ViT-L/14's text tower: SD 1.x's text encoder and SDXL's first one."""
        return cls()

    @classmethod
    def vit_b32(cls) -> CLIPTextConfig:
        """The text tower of openai/clip-vit-base-patch32 (used for CLIP score)."""
        return cls(hidden_size=512, intermediate_size=2048, heads=8, projection_dim=512)

    @classmethod
    def bigg(cls) -> CLIPTextConfig:
        """OpenCLIP ViT-bigG/14's text tower (SDXL's second encoder) in the HF layout."""
        return cls(
            hidden_size=1280,
            intermediate_size=5120,
            layers=32,
            heads=20,
            activation="gelu",
            projection_dim=1280,
        )


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"quick_gelu": quick_gelu, "gelu": F.gelu}


def ignore_position_ids(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: older checkpoints carry an `embeddings.position_ids` buffer (always
    arange); positions here are computed, so the key is dropped instead of reported as unexpected."""
    state_dict.pop(prefix + "position_ids", None)


class Attention(nn.Module):
    """Multi-head self-attention, softmax(q k^T / sqrt(d_head)) v, with q/k/v/out projections (with bias)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        q, k, v = (
            rearrange(proj(x), "b n (h d) -> b h n d", h=self.heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        # causal: token i attends to tokens 0..i only (the text tower); the vision tower sees all patches
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, width: int, intermediate: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate)
        self.fc2 = nn.Linear(intermediate, width)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, intermediate: int, activation: str, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, intermediate, activation)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, intermediate: int, activation: str, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(width, heads, intermediate, activation, eps) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, causal: bool, depth: int | None = None) -> torch.Tensor:
        """The output of the first `depth` layers (all of them by default)."""
        for layer in self.layers[:depth]:
            x = layer(x, causal)
        return x


class TextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_positions, config.hidden_size)
        self.register_load_state_dict_pre_hook(ignore_position_ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class TextTransformer(nn.Module):
    """HF `CLIPTextTransformer`: embeddings, causal pre-LN encoder, final LayerNorm."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(
            config.layers,
            config.hidden_size,
            config.heads,
            config.intermediate_size,
            config.activation,
            config.layer_norm_eps,
        )
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, ids: torch.Tensor, layer: int = -1, final_norm: bool = True) -> torch.Tensor:
        """Hidden state `layer`, indexed like HF `hidden_states[layer]` (0 = embeddings, L = last layer,
        negative from the end), optionally through the final LayerNorm. [B, T] ids -> [B, T, D]."""
        self._check(ids)
        x = self.encoder(self.embeddings(ids), causal=True, depth=self._depth(layer))
        return self.final_layer_norm(x) if final_norm else x

    def hidden_and_pooled(self, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden state `layer` (no final LayerNorm) and the pooled state, in one pass. [B, T, D], [B, D]"""
        self._check(ids)
        depth = self._depth(layer)
        hidden = self.encoder(self.embeddings(ids), causal=True, depth=depth)
        last = hidden
        for block in self.encoder.layers[depth:]:
            last = block(last, causal=True)
        return hidden, self._at_eos(self.final_layer_norm(last), ids)

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        """The final-LN state at the eos token, the first occurrence of the largest id (eos, 49407). [B, D]"""
        return self._at_eos(self.forward(ids), ids)

    @staticmethod
    def _at_eos(states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return states[torch.arange(ids.shape[0], device=ids.device), ids.argmax(-1)]

    def _depth(self, layer: int) -> int:
        """How many encoder layers hidden state `layer` has passed through."""
        n = self.config.layers
        if not -(n + 1) <= layer <= n:
            raise ValueError(
                f"layer {layer} is out of range: hidden states are indexed {-(n + 1)}..{n} "
                f"(0 = embeddings, {n} or -1 = last layer)"
            )
        return layer % (n + 1)

    def _check(self, ids: torch.Tensor) -> None:
        if ids.dtype not in (torch.long, torch.int):
            raise TypeError(f"token ids must be an integer tensor (torch.long), got {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] > self.config.max_positions:
            raise ValueError(
                f"token ids must have shape [batch, <= {self.config.max_positions}], "
                f"got {list(ids.shape)}; the Tokenizer returns [batch, 77]"
            )


class CLIPTextModel(nn.Module):
    """`model(ids)` is SD 1.x's conditioning: the last layer after the final LayerNorm, [B, 77, D].
    `model(ids, layer=-2, final_norm=False)` is SDXL's (penultimate layer, no final LayerNorm).
    `model.pooled(ids)` is the eos state through `text_projection` when the model has one;
    `model.hidden_and_pooled(ids, -2)` gives SDXL's bigG conditioning in one pass."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config)
        self.text_projection = (
            nn.Linear(config.hidden_size, config.projection_dim, bias=False)
            if config.projection_dim is not None
            else nn.Identity()
        )

    def forward(self, ids: torch.Tensor, layer: int = -1, final_norm: bool = True) -> torch.Tensor:
        return self.text_model(ids, layer, final_norm)

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_model.pooled(ids))

    def hidden_and_pooled(self, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`model(ids, layer, final_norm=False)` and `model.pooled(ids)` from one pass (SDXL's bigG)."""
        hidden, pooled = self.text_model.hidden_and_pooled(ids, layer)
        return hidden, self.text_projection(pooled)
