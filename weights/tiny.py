"""A tiny random-weight SD 1.5 checkpoint in the official single-file layout: the whole command line
runs on it in seconds on a CPU, without the 4 GB download, and makes noise (the weights are random).
For checking an install (CPU, or a GPU with --compile) before fetching real weights:

    python -m weights.tiny OUT_DIR
    python run_sample.py --weights OUT_DIR/sd15-tiny-random-seed0.safetensors --steps 5 \\
        --height 64 --width 64 --prompt "a photo of a cat"

The model keeps SD 1.5's structure (four levels, two ResBlocks each, attention on the first three,
8 U-Net heads, 32 norm groups, CLIP's 49,408-token vocabulary and 77 positions, a VAE that
downsamples by 8) at the smallest widths those rules allow; the keys are the official file's
(`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.transformer.`), so the file is
read, checked and run exactly as `v1-5-pruned-emaonly.safetensors` is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

import cli
import safeio
from model.unet import UNet, UNetConfig
from text_encoder.clip import CLIPTextConfig, CLIPTextModel
from vae.autoencoder import AutoencoderKL, VAEConfig
from weights.families import SD1, UNET_PREFIX, VAE_PREFIX

PROG = "python -m weights.tiny"
TEXT_WIDTH = 64  # one 64-wide head, CLIP's head size
UNET = UNetConfig(model_channels=32, channel_mult=(1, 2, 2, 2), context_dim=TEXT_WIDTH, num_heads=8)
VAE = VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), scaling_factor=SD1.latent_scale)
TEXT = CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, layers=2, heads=1)


def tiny_modules(seed: int = 0) -> dict[str, nn.Module]:
    """The U-Net, VAE and text encoder, PyTorch's default initialisation drawn from `seed`."""
    torch.manual_seed(seed)
    return {"unet": UNet(UNET), "vae": AutoencoderKL(VAE), "text_encoder": CLIPTextModel(TEXT)}


def tiny_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the official SD 1.5 single file's keys, float32."""
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": SD1.text_encoders[0].prefix}
    return {
        prefixes[component] + key: tensor.detach().float().contiguous()
        for component, module in tiny_modules(seed).items()
        for key, tensor in module.state_dict().items()
    }


def write_tiny(folder: str | Path, seed: int = 0) -> Path:
    """Write `folder/sd15-tiny-random-seed{seed}.safetensors` (never over an existing file); return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sd15-tiny-random-seed{seed}.safetensors"
    try:
        return safeio.write_atomically(path, save(tiny_tensors(seed)), replace=False)
    except FileExistsError:
        raise ValueError(f"{path} exists; pass another folder (nothing written is replaced)") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT_DIR", help="the folder to write the file into, created if missing")
    p.add_argument("--seed", type=cli.seed, default=0, help="seed of the random weights (default: 0)")
    cli.add_debug_flag(p)
    args = p.parse_args(argv)

    def work(args) -> None:
        path = write_tiny(args.out, args.seed)
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, random weights: its images are noise); "
            f"try it: python run_sample.py --weights {path} --steps 5 --height 64 --width 64 --prompt "
            '"a photo of a cat"'
        )

    return cli.run(PROG, work, args)


if __name__ == "__main__":
    sys.exit(main())
