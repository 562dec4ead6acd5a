"""FreeU (Si et al., CVPR 2024): re-weight the decoder's backbone and skip features, no training.

Before every output (decoder) block's `cat([h, skip])` of a stage that FreeU touches:

    h[:, :C/2] *= b                            (v1; v2 uses (b - 1) * m + 1, m = normalised mean of h)
    skip = fourier_filter(skip, threshold=1, scale=s)

A stage is chosen either by h's channel count, as the official code does ("channels": 4 * model
channels -> (b1, s1), 2 * model channels -> (b2, s2)), or by the decoder level, as diffusers'
`enable_freeu` does ("blocks": level 0 -> (b1, s1), level 1 -> (b2, s2)).

The settings are passed to every U-Net call, so a sampler can change them between steps; which
output block is in which stage is fixed by the architecture, so the U-Net maps that once (`stages`). The four
factors also live in one float32 tensor (`FreeU.factors`), which is all of them the U-Net reads: under
torch.compile a tensor is a graph input, so new values reuse the compiled graph instead of being
baked in as constants. Off (None) and on are two graphs; so is each version and placement.
`FreeU.to(device)` gives the same settings with that tensor on the device, made once per run, so a
U-Net call copies nothing from the host (what CUDA graph capture needs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

VERSIONS = (1, 2)
PLACEMENTS = ("channels", "blocks")


@dataclasses.dataclass(frozen=True)
class FreeU:
    """FreeU settings: backbone factors b1, b2, skip factors s1, s2 for stages 1 and 2."""

    b1: float
    b2: float
    s1: float
    s2: float
    version: int = 1
    placement: str = "channels"

    def __post_init__(self):
        for name in ("b1", "b2", "s1", "s2"):
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"FreeU {name} must be a number or a 0-d tensor, got shape {tuple(value.shape)}"
                    )
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"FreeU {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"FreeU {name} must be >= 0, got {value}")
            object.__setattr__(self, name, float(value))
        if self.version not in VERSIONS:
            raise ValueError(f"FreeU version must be one of {VERSIONS}, got {self.version!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"FreeU placement must be one of {PLACEMENTS}, got {self.placement!r}")
        # Not a dataclass field: it stays out of ==, hash, repr and to_dict().
        object.__setattr__(self, "factors", torch.tensor([self.b1, self.b2, self.s1, self.s2]))

    @classmethod
    def common(cls) -> FreeU:
        """FreeU's own published v1 defaults (official repo, ComfyUI); the paper's values are its recipe's
        (solvers/presets.py)."""
        return cls(b1=1.1, b2=1.2, s1=0.9, s2=0.2)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> FreeU:
        """Inverse of `to_dict`; a Plan stores FreeU settings in this form (the one schema is this class)."""
        if not isinstance(mapping, Mapping):
            raise ValueError(
                f"FreeU must be null (off) or an object with b1, b2, s1, s2 (and optionally version and "
                f"placement), got {mapping!r}"
            )
        fields = dataclasses.fields(cls)
        unknown = sorted(set(mapping) - {f.name for f in fields})
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in mapping]
        if unknown or missing:
            problem = f"unknown field(s) {unknown}" if unknown else f"no {missing}"
            raise ValueError(
                f"FreeU dict has {problem}; give b1, b2, s1, s2 and optionally version and placement"
            )
        return cls(**mapping)

    @classmethod
    def option(cls, value: FreeU | Mapping[str, Any] | None) -> FreeU | None:
        """A plan's per-step `freeu` option (None, a dict of the fields, or a FreeU) as a FreeU or None."""
        return value if value is None or isinstance(value, FreeU) else cls.from_dict(value)

    def to(self, device: str | torch.device) -> FreeU:
        """The same settings (equal, same hash) with `factors` on `device`."""
        moved = dataclasses.replace(self)
        object.__setattr__(moved, "factors", self.factors.to(device))
        return moved

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """b1/b2/s1/s2, then version and placement where not the defaults: "1.3/1.4/0.9/0.2 v2"."""
        text = "/".join(f"{getattr(self, k):g}" for k in ("b1", "b2", "s1", "s2"))
        if self.version != 1:
            text += f" v{self.version}"
        if self.placement != "channels":
            text += f" {self.placement}"
        return text

    def __call__(self, h: torch.Tensor, skip: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply stage `stage` to the backbone feature h [B, C, H, W] and the skip feature."""
        factors = self.factors.to(h.device)  # a no-op after `to(device)`
        b, s = factors[stage], factors[2 + stage]
        half = h.shape[1] // 2
        if self.version == 2:
            # m: channel mean of h, min-max normalised over H x W per sample; [B, 1, H, W]
            m = h.mean(dim=1, keepdim=True)
            m_min = m.amin(dim=(2, 3), keepdim=True)
            m_max = m.amax(dim=(2, 3), keepdim=True)
            b = (b - 1) * ((m - m_min) / (m_max - m_min)) + 1
        h = torch.cat([h[:, :half] * b, h[:, half:]], dim=1)
        return h, fourier_filter(skip, threshold=1, scale=s)


def stages(
    backbone: Sequence[int], model_channels: int, num_res_blocks: int
) -> dict[str, tuple[int | None, ...]]:
    """For each placement, the stage (0 -> b1/s1, 1 -> b2/s2, None -> untouched) of every output block
    of a U-Net, from `backbone`, the channel count of the feature h entering each: a static map."""
    by_channels = {4 * model_channels: 0, 2 * model_channels: 1}
    levels = [index // (num_res_blocks + 1) for index in range(len(backbone))]  # diffusers up_blocks.{level}
    return {
        "channels": tuple(by_channels.get(channels) for channels in backbone),
        "blocks": tuple(level if level in (0, 1) else None for level in levels),
    }


def fourier_filter(x: torch.Tensor, threshold: int, scale: float | torch.Tensor) -> torch.Tensor:
    """Scale the centred (2 threshold)^2 lowest spatial frequencies of x [B, C, H, W] by `scale`.

    The FFT runs in float32 (half-precision FFTs are not supported everywhere); the result is cast
    back to x's dtype.
    """
    height, width = x.shape[-2:]
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones(height, width, device=x.device)
    row, col = height // 2, width // 2
    mask[row - threshold : row + threshold, col - threshold : col + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)
