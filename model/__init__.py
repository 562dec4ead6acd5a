"""The SD U-Net (SD 1.x and SDXL) with FreeU in its decoder skip path, and the denoiser wrapper."""

from model.denoiser import Denoiser
from model.freeu import FreeU, fourier_filter
from model.unet import UNet, UNetConfig, timestep_embedding

__all__ = ["Denoiser", "FreeU", "UNet", "UNetConfig", "fourier_filter", "timestep_embedding"]
