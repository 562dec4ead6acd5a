"""The beta-VAE (AutoencoderKL) that maps between images in [-1, 1] and SD latents."""

from vae.autoencoder import AutoencoderKL, VAEConfig

__all__ = ["AutoencoderKL", "VAEConfig"]
