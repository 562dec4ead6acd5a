"""What a run may ask for: the checks of image sizes, step counts and batch sizes, shared by the flags
(cli/generation.py), the settings replayed from a PNG (pipeline/provenance.py) and the plan files.

The maxima keep a typo or a hostile file from starting a run that cannot finish (an allocation of
tens of GB after minutes of loading, an endless loop); `--allow-large` lifts them all:

- MAX_SIDE 2048 px per side: twice SDXL's 1024 px training size and four times SD 1.5's 512 px, so
  sixteen times the pixels SD 1.5 was trained at; larger sides repeat and tear, and the latents'
  attention (4096 tokens at 512 px) grows with the square of the pixels;
- MAX_STEPS 1000: SD's DDPM table has 1000 noise levels (docs/model-facts.md section 6), so more
  steps place sigmas between the levels the model was trained on and buy nothing;
- MAX_BATCH 64 images per U-Net batch (128 with guidance's two halves): a batch at the default size
  then needs ~20 GB of activations for SD 1.5 in float16; more is seldom faster;
- MAX_IMAGES 100,000 images per run_sample.py run (prompts x --num-images): ten times the paper's
  10,000-prompt evaluation sets; the run's list of jobs is built up front.
"""

from __future__ import annotations

LATENT_FACTOR = 8  # the VAE maps 8 x 8 pixels to one latent
MAX_SIDE = 2048
MAX_STEPS = 1000
MAX_BATCH = 64
MAX_IMAGES = 100_000
LARGE_FLAG = "--allow-large"


def size_problem(value: int) -> str | None:
    """Why `value` pixels cannot be a side of an image, or None: it must be a positive multiple of 8."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= LATENT_FACTOR:
        if value % LATENT_FACTOR == 0:
            return None
    elif not isinstance(value, int) or isinstance(value, bool):
        return f"{value!r} is not an integer number of pixels"
    below = max(value // LATENT_FACTOR * LATENT_FACTOR, LATENT_FACTOR)
    suggestion = f"{below} or {below + LATENT_FACTOR}" if value > below else f"{below}"
    return (
        f"{value} is not a positive multiple of {LATENT_FACTOR} (the VAE's downsampling factor); "
        f"use e.g. {suggestion}"
    )


def check_size(height: int, width: int) -> None:
    """Refuse a size the VAE cannot make: each side a positive multiple of 8 pixels."""
    for side, value in (("height", height), ("width", width)):
        problem = size_problem(value)
        if problem:
            raise ValueError(f"image {side} {problem}")


def check_bounds(
    *,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    batch: int | None = None,
    images: int | None = None,
    allow_large: bool = False,
    source: str = "",
) -> None:
    """Refuse a side, step count, batch size or image count beyond the documented maxima, unless
    `allow_large`.
    `source` says where the values came from when not from flags (e.g. "the settings of x.png: ")."""
    if allow_large:
        return
    for what, value, limit, why in (
        ("--height", height, MAX_SIDE, "pixels per side"),
        ("--width", width, MAX_SIDE, "pixels per side"),
        ("steps", steps, MAX_STEPS, "steps, the noise levels of SD's DDPM table"),
        ("--batch-size", batch, MAX_BATCH, "images per U-Net batch"),
        ("images", images, MAX_IMAGES, "images per run (prompts x --num-images)"),
    ):
        if value is not None and value > limit:
            raise ValueError(
                f"{source}{what} {value} is over the maximum of {limit} {why}; pass {LARGE_FLAG} to "
                "lift the limits (see the README)"
            )
