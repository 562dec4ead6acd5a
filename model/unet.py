"""The latent-diffusion U-Net of Stable Diffusion 1.x (and SDXL), eps-prediction.

Module names follow the official LDM checkpoints (`model.diffusion_model.` stripped), so an official
state dict loads with `unet.load_state_dict(...)` and no key map:

    time_embed.{0,2}                   timestep MLP
    time_cond_proj                     LCM only: the guidance embedding, added to t's before the MLP
    label_emb.0.{0,2}                  SDXL only: MLP for the added vector condition y
    input_blocks.{i}.{0,1}             encoder: conv_in, then per level ResBlock (+ SpatialTransformer),
                                       then a Downsample (`.0.op`) between levels
    middle_block.{0,1,2}               ResBlock, SpatialTransformer, ResBlock
    output_blocks.{i}.{0,1,2}          decoder: ResBlock on cat([h, skip]) (+ SpatialTransformer)
                                       (+ Upsample `.conv` at the end of a level)
    out.{0,2}                          GroupNorm, SiLU, conv_out

Shapes in comments use B batch, C channels, H x W latent size, N = H * W tokens, L context tokens.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.freeu import FreeU, stages


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters, named as in the LDM / sgm yaml configs.

    `transformer_depth[level]` is the number of transformer blocks in each SpatialTransformer at
    that level (0: the level has no attention). Attention heads are given either as a count
    (`num_heads`, SD 1.x) or as a size (`head_dim`, SDXL); exactly one of them is set.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    middle_depth: int = 1
    num_heads: int | None = 8
    head_dim: int | None = None
    context_dim: int = 768
    linear_proj: bool = False  # proj_in / proj_out: Linear (SDXL) or 1x1 conv (SD 1.x)
    adm_in_channels: int | None = None  # SDXL's added vector condition y
    time_cond_proj_dim: int | None = None  # LCM: width of the guidance scale's embedding, added to t's
    norm_groups: int = 32

    def __post_init__(self):
        # Tuples even if lists were given (JSON, yaml), so configs stay hashable and compare equal.
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "transformer_depth", tuple(self.transformer_depth))
        if len(self.transformer_depth) != len(self.channel_mult):
            raise ValueError(
                f"transformer_depth has {len(self.transformer_depth)} entries but channel_mult has "
                f"{len(self.channel_mult)}; give one depth per level (0 = no attention)"
            )
        if (self.num_heads is None) == (self.head_dim is None):
            raise ValueError("set exactly one of num_heads (SD 1.x: 8) and head_dim (SDXL: 64)")
        if self.middle_depth < 1:
            raise ValueError(
                f"middle_depth must be >= 1 (the middle block has attention), got {self.middle_depth}"
            )
        if self.model_channels % 2:
            raise ValueError(
                f"model_channels must be even (timestep embedding size), got {self.model_channels}"
            )
        for mult, depth in zip(self.channel_mult, self.transformer_depth, strict=True):
            channels = mult * self.model_channels
            if channels % self.norm_groups:
                raise ValueError(
                    f"{channels} channels cannot be split into {self.norm_groups} GroupNorm groups"
                )
            if depth:
                self.heads(channels)
        self.heads(self.channel_mult[-1] * self.model_channels)  # the middle block's transformer

    @classmethod
    def sd1(cls) -> UNetConfig:
        """SD 1.x (v1-inference.yaml): attention at levels 0-2, 8 heads, 1x1-conv projections."""
        return cls()

    @classmethod
    def sdxl(cls) -> UNetConfig:
        """SDXL base (sd_xl_base.yaml): 3 levels, depths (0, 2, 10), 64-dim heads, linear projections."""
        return cls(
            channel_mult=(1, 2, 4),
            transformer_depth=(0, 2, 10),
            middle_depth=10,
            num_heads=None,
            head_dim=64,
            context_dim=2048,
            linear_proj=True,
            adm_in_channels=2816,
        )

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def heads(self, channels: int) -> int:
        """Number of attention heads of a transformer with `channels` channels."""
        if self.head_dim is not None:
            if channels % self.head_dim:
                raise ValueError(f"{channels} channels do not split into attention heads of {self.head_dim}")
            return channels // self.head_dim
        if self.num_heads < 1 or channels % self.num_heads:
            raise ValueError(f"{channels} channels do not split into {self.num_heads} attention heads")
        return self.num_heads


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B] -> [B, dim] in float32: [cos(t f_k), sin(t f_k)], k < dim / 2.

    f_k = max_period^(-k / (dim / 2)); cos first, as LDM. Computed in float32 whatever the model's
    dtype, so a fractional t such as 999.37 is not rounded.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # [B, dim/2]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's embedding of the guidance value w [B] -> [B, dim] in float32: [sin(1000 w f_k), cos(1000 w f_k)],
    f_k = 10000^(-k / (dim / 2 - 1)), sin first, zero-padded to an odd dim (VDM's, as diffusers'
    `get_guidance_scale_embedding`). LCM pipelines pass w = guidance scale - 1."""
    # diffusers' float32 operations in its order: the arguments reach 1000 w radians, where one float32
    # ulp of a frequency moves sin by ~5e-4, so any other rounding would not reproduce its embedding.
    half = dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -step).to(w.device)
    args = (w.float() * 1000.0)[:, None] * freqs[None, :]
    return F.pad(torch.cat([torch.sin(args), torch.cos(args)], dim=-1), (0, dim % 2))


def layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format x is stored in: channels-last (NHWC) or the default NCHW."""
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


class ResBlock(nn.Module):
    """out = skip_connection(x) + conv(SiLU(GN(conv(SiLU(GN(x))) + W emb))), use_scale_shift_norm=False."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int):
        super().__init__()
        # SiLU in place: it overwrites the GroupNorm output, a temporary (one allocation fewer).
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, in_channels),
            nn.SiLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        # Index 2 is LDM's Dropout (p = 0 at inference); kept so the conv's key stays `out_layers.3`.
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(inplace=True),
            nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # The adds go in place into fresh conv outputs; x itself is also a skip feature, left alone.
        h = self.in_layers(x)  # [B, C_out, H, W]
        h += self.emb_layers(emb)[:, :, None, None]  # emb [B, 4 C_model] -> [B, C_out, 1, 1]
        return self.out_layers(h).add_(self.skip_connection(x))


class CrossAttention(nn.Module):
    """Multi-head attention softmax(q k^T / sqrt(d)) v; keys and values from `context` (or x itself)."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context  # [B, N, C] or [B, L, C_ctx]
        q, k, v = (
            rearrange(proj(inp), "b n (h d) -> b h n d", h=self.heads)
            for proj, inp in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d]
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """value * GELU(gate), with [value, gate] = proj(x): value is the first half, the gate the second."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(value)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # Index 1 is LDM's Dropout (p = 0 at inference); kept so the output key stays `net.2`.
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text context, GEGLU feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.ff = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # Residual adds in place into each sub-layer's fresh output (one allocation fewer each).
        x = self.attn1(self.norm1(x)).add_(x)  # [B, N, C]
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """Transformer over the H x W positions of a feature map, with a residual around it."""

    def __init__(
        self, channels: int, heads: int, depth: int, context_dim: int, linear_proj: bool, groups: int
    ):
        super().__init__()
        self.linear_proj = linear_proj
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        proj = nn.Linear if linear_proj else lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1)
        self.proj_in = proj(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, context_dim, heads) for _ in range(depth)
        )
        self.proj_out = proj(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        h = self.norm(x)
        # SD 1.x projects with a 1x1 conv before flattening, SDXL with a Linear after it.
        if not self.linear_proj:
            h = self.proj_in(h)
        h = rearrange(h, "b c h w -> b (h w) c")  # [B, N, C]; a view if h is channels-last
        if self.linear_proj:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear_proj:
            h = self.proj_out(h)
        # Back to [B, C, H, W]: a channels-last view, copied to NCHW if x is NCHW (convs and adds that
        # mix the two layouts are slow, and would pass channels-last on to the NCHW blocks after).
        h = rearrange(h, "b (h w) c -> b c h w", h=height).contiguous(memory_format=layout(x))
        if not self.linear_proj:
            h = self.proj_out(h)
        return h.add_(x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Nearest-neighbour resize to `size`, the next skip feature's: [B, C, 2H, 2W], or one less where
        the encoder's stride-2 conv rounded an odd side up (diffusers' `upsample_size`)."""
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A U-Net block: its layers in order, each given what it needs (emb for ResBlocks, context for
    transformers, the output size for an Upsample)."""

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """eps_theta(x_t, t, context[, y]): the noise-prediction U-Net of SD 1.x / SDXL.

    Features take the memory layout of the conv weights: NCHW by default, channels-last (NHWC)
    throughout after `unet.to(memory_format=torch.channels_last)`, where each transformer's
    "b c h w -> b (h w) c" is a view instead of a copy. The output is NCHW either way.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        emb_dim = cfg.time_embed_dim
        groups = cfg.norm_groups

        def res_block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, groups)

        def transformer(channels: int, depth: int) -> SpatialTransformer:
            return SpatialTransformer(
                channels, cfg.heads(channels), depth, cfg.context_dim, cfg.linear_proj, groups
            )

        self.time_embed = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if cfg.time_cond_proj_dim is not None:
            self.time_cond_proj = nn.Linear(cfg.time_cond_proj_dim, cfg.model_channels, bias=False)
        if cfg.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )

        # Encoder. `skip_channels` records the channel count of every feature pushed on the skip stack.
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, cfg.model_channels, 3, padding=1))]
        )
        skip_channels = [cfg.model_channels]
        ch = cfg.model_channels
        last_level = len(cfg.channel_mult) - 1
        for level, (mult, depth) in enumerate(zip(cfg.channel_mult, cfg.transformer_depth, strict=True)):
            for _ in range(cfg.num_res_blocks):
                layers = [res_block(ch, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if depth:
                    layers.append(transformer(ch, depth))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last_level:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch), transformer(ch, cfg.middle_depth), res_block(ch, ch)
        )

        # Decoder: num_res_blocks + 1 blocks per level, each eating one skip feature.
        self.output_blocks = nn.ModuleList()
        backbone = []  # the channel count of h entering each output block
        for level in reversed(range(len(cfg.channel_mult))):
            mult, depth = cfg.channel_mult[level], cfg.transformer_depth[level]
            for i in range(cfg.num_res_blocks + 1):
                backbone.append(ch)
                layers = [res_block(ch + skip_channels.pop(), mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if depth:
                    layers.append(transformer(ch, depth))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.freeu_stages = stages(backbone, cfg.model_channels, cfg.num_res_blocks)  # placement -> per block

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch),
            nn.SiLU(inplace=True),
            nn.Conv2d(cfg.model_channels, cfg.out_channels, 3, padding=1),
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        freeu: FreeU | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise eps of x [B, C_in, H, W] at time t ([B], 0-d or float; fractional allowed).

        context: [B, L, context_dim] text conditioning; y: [B, adm_in_channels] (SDXL only);
        freeu: FreeU settings for this call, or None for the plain U-Net;
        timestep_cond: [B, time_cond_proj_dim], `guidance_embedding` of w (LCM U-Nets only).
        """
        cfg = self.config
        t = self._check_inputs(x, t, context, y)

        t_emb = timestep_embedding(t, cfg.model_channels).to(x.dtype)  # [B, C_model]
        if cfg.time_cond_proj_dim is not None:  # LCM: the guidance embedding joins t's before the MLP
            t_emb = t_emb + self.time_cond_proj(self._check_timestep_cond(timestep_cond, x.shape[0]))
        elif timestep_cond is not None:
            raise ValueError("this U-Net takes no timestep_cond (it has no time_cond_proj); pass None")
        emb = self.time_embed(t_emb)  # [B, 4 C_model]
        if cfg.adm_in_channels is not None:
            emb = emb + self.label_emb(y)

        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        freeu_stages = None if freeu is None else self.freeu_stages[freeu.placement]
        for index, block in enumerate(self.output_blocks):
            skip = skips.pop()
            if freeu_stages is not None and freeu_stages[index] is not None:
                h, skip = freeu(h, skip, freeu_stages[index])
            size = tuple(skips[-1].shape[2:]) if skips else None  # where an Upsample must lead
            h = block(torch.cat([h, skip], dim=1), emb, context, size)
        return self.out(h).contiguous()  # [B, C_out, H, W]

    def _check_timestep_cond(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        dim = self.config.time_cond_proj_dim
        if cond is None or tuple(cond.shape) != (batch, dim):
            got = "none" if cond is None else tuple(cond.shape)
            raise ValueError(
                f"this LCM U-Net needs timestep_cond [{batch}, {dim}] (guidance_embedding), got {got}"
            )
        return cond

    def _check_inputs(
        self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """Refuse malformed inputs with a readable message; return t as a tensor [B]."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        batch = x.shape[0]
        if context.dim() != 3 or context.shape[0] != batch or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must be [{batch}, L, {cfg.context_dim}], got {tuple(context.shape)}")
        if (y is None) != (cfg.adm_in_channels is None):
            raise ValueError(
                "y is required for this U-Net (SDXL: pooled text + size embeddings)"
                if y is None
                else "this U-Net takes no y (it has no label_emb); pass y=None"
            )
        if y is not None and tuple(y.shape) != (batch, cfg.adm_in_channels):
            raise ValueError(f"y must be [{batch}, {cfg.adm_in_channels}], got {tuple(y.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            return t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"t must be a float, a 0-d tensor or a tensor [{batch}], got shape {tuple(t.shape)}"
            )
        return t
