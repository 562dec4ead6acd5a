"""The beta-VAE (AutoencoderKL) of Stable Diffusion, the same network for SD 1.x and SDXL.

Module names are the LDM checkpoint keys without the `first_stage_model.` prefix, so
`AutoencoderKL(cfg).load_state_dict(stripped_ldm_dict)` needs no key map:
`encoder.down.{i}.block.{j}.conv1`, `encoder.down.{i}.downsample.conv`, `{en,de}coder.mid.attn_1.q`,
`decoder.up.{i}.upsample.conv`, `quant_conv`, `post_quant_conv`, ...

Shapes for the SD config (ch 128, ch_mult (1, 2, 4, 4)): a [B, 3, 512, 512] image is encoded to
[B, 4, 64, 64] latents (mean and logvar), and decoding maps [B, 4, 64, 64] back to [B, 3, 512, 512].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.func import functional_call

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamps the log-variance to this range


@dataclass(frozen=True)
class VAEConfig:
    """The LDM `ddconfig` of the first stage (SD 1.x and SDXL share it; only the latent scale differs)."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    scaling_factor: float = 0.18215
    groups: int = 32

    @classmethod
    def sd1(cls) -> VAEConfig:
        return cls(scaling_factor=0.18215)

    @classmethod
    def sdxl(cls) -> VAEConfig:
        return cls(scaling_factor=0.13025)

    @property
    def downsampling(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD)."""
        return 2 ** (len(self.ch_mult) - 1)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    # Every norm of the VAE uses eps 1e-6 (not PyTorch's default 1e-5).
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus x (through a 1x1 `nin_shortcut` if
    the channel count changes). No time embedding in the VAE."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1-conv projections (LDM stores
    q, k, v, proj_out as [C, C, 1, 1]): x + proj_out(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, H*W, C]; SDPA's default scale is C^-1/2 and, for 64x64 latents,
        # it avoids materialising the 4096 x 4096 score matrix where a fused kernel exists.
        q, k, v = (rearrange(proj(h), "b c h w -> b 1 (h w) c") for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv without padding (the U-Net's
    downsample pads symmetrically instead)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    """`mid.block_1`, `mid.attn_1`, `mid.block_2`: the VAE's only attention sits here."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def res_blocks(c_in: int, c_out: int, n_blocks: int, groups: int) -> nn.ModuleList:
    """`block.{j}`: the first block changes the width, the rest keep it."""
    return nn.ModuleList(ResnetBlock(c_in if j == 0 else c_out, c_out, groups) for j in range(n_blocks))


class DownLevel(nn.Module):
    """`encoder.down.{i}`: ResnetBlocks, then `downsample` on every level but the last."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, groups: int, downsample: bool):
        super().__init__()
        self.block = res_blocks(c_in, c_out, n_blocks, groups)
        self.downsample = Downsample(c_out) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    """`decoder.up.{i}`: ResnetBlocks, then `upsample` on every level but up.0."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, groups: int, upsample: bool):
        super().__init__()
        self.block = res_blocks(c_in, c_out, n_blocks, groups)
        self.upsample = Upsample(c_out) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    """conv_in -> down.0 .. down.{L-1} (downsample on all but the last) -> mid -> norm_out, swish,
    conv_out to 2 * z_channels (mean and logvar)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        c_ins = [cfg.ch, *widths[:-1]]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList(
            DownLevel(c_ins[i], widths[i], cfg.num_res_blocks, cfg.groups, downsample=i < last)
            for i in range(len(widths))
        )
        self.mid = Mid(widths[-1], cfg.groups)
        self.norm_out = group_norm(widths[-1], cfg.groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in -> mid -> up.{L-1} .. up.0 (LDM numbers the up levels by resolution, so they run in
    reverse; upsample on all but up.0; num_res_blocks + 1 blocks each) -> norm_out, swish, conv_out."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1], cfg.groups)
        # up.i maps the width of level i+1 (the mid width, for the deepest level) to widths[i].
        c_ins = [*widths[1:], widths[-1]]
        self.up = nn.ModuleList(
            UpLevel(c_ins[i], widths[i], cfg.num_res_blocks + 1, cfg.groups, upsample=i > 0)
            for i in range(len(widths))
        )
        self.norm_out = group_norm(widths[0], cfg.groups)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """SD's first stage. `decode(latents / scaling_factor)` gives images in [-1, 1];
    `encode(images)` gives the unscaled latent mean (multiply by `scaling_factor` for the U-Net)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    def moments(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior N(mean, exp(logvar)) of images in [-1, 1], [B, 3, H, W] -> two [B, 4, H/8, W/8];
        logvar is clamped to [-30, 20] as in LDM."""
        self._check_input(img, "image", self.config.in_channels)
        if img.shape[-2] % self.config.downsampling or img.shape[-1] % self.config.downsampling:
            raise ValueError(
                f"image height and width must be multiples of {self.config.downsampling}, got "
                f"{tuple(img.shape[-2:])}; crop or resize the image"
            )
        mean, logvar = self.quant_conv(self.encoder(img.to(self.dtype))).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The latent mean; with a generator, a posterior sample mean + exp(logvar / 2) * eps instead,
        eps drawn in float32 on the generator's device (so it does not depend on the model's dtype)."""
        mean, logvar = self.moments(img)
        if generator is None:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
        return mean + torch.exp(0.5 * logvar) * eps.to(mean)

    def decode(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] from z = latents / scaling_factor, [B, 4, h, w] -> [B, 3, 8h, 8w].

        In float16 or bfloat16, a result with inf/NaN (the SDXL VAE's activations exceed the float16
        range) is recomputed in float32 with a warning and returned in float32. The retry uses a
        temporary float32 copy of the decoder's weights (about 200 MB for SD's VAE, freed on return)
        and leaves the module itself untouched.
        """
        self._check_input(z, "latent", self.config.z_channels)
        z = z.to(self.dtype)
        img = self.decoder(self.post_quant_conv(z))
        if img.dtype in (torch.float16, torch.bfloat16) and not torch.isfinite(img).all():
            warnings.warn(
                f"VAE decode in {img.dtype} gave non-finite values; decoding again in float32 "
                "(use a float32 VAE or an fp16-fixed VAE to avoid the retry)",
                stacklevel=2,
            )
            img = self._decode_float32(z)
        return img

    def _decode_float32(self, z: Tensor) -> Tensor:
        # autocast would cast the float32 weight copies straight back to half precision.
        with torch.autocast(z.device.type, enabled=False):
            return _float32_call(self.decoder, _float32_call(self.post_quant_conv, z.float()))

    def _check_input(self, x: Tensor, what: str, channels: int) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"expected a {what} batch of shape [B, {channels}, H, W], got {tuple(x.shape)}; "
                "add a batch dimension or fix the channel count"
            )


def _float32_call(module: nn.Module, x: Tensor) -> Tensor:
    """module(x) with float32 copies of its parameters, the module itself untouched."""
    return functional_call(module, {name: p.float() for name, p in module.named_parameters()}, (x,))
