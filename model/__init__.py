"""The SD U-Net (SD 1.x and SDXL) with FreeU in its decoder skip path, and the denoiser wrapper."""

from model.conditioning import SIZE_EMBED_DIM, SizeConditioning, added_vector
from model.denoiser import Denoiser
from model.freeu import FreeU, fourier_filter
from model.unet import UNet, UNetConfig, timestep_embedding

__all__ = [
    "SIZE_EMBED_DIM",
    "Denoiser",
    "FreeU",
    "SizeConditioning",
    "UNet",
    "UNetConfig",
    "added_vector",
    "fourier_filter",
    "timestep_embedding",
]
