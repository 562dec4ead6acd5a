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
  10,000-prompt evaluation sets; the run's list of jobs is built up front;
- MAX_SWEEP_IMAGES 64 images per sweep grid (run_sample.py --sweep): an 8 x 8 grid, already 4096 px
  a side at SD 1.5's size; a typo in a value list should not start hours of sampling.

The schedule search (`python -m solvers.search`, `check_search`) holds the teacher's state of every
sample at every grid level in memory, so its flags are bounded too:

- MAX_SAMPLE_ELEMENTS 262,144 numbers per sample (--shape): the latents of the largest image MAX_SIDE
  allows (4 channels x 256 x 256);
- MAX_SEARCH_SAMPLES 65,536 search samples, and as many held out: 64 times the analytic default of
  1024; the RMSE of a plan over K samples has a standard error of about 1/sqrt(K) of its spread, 0.4%
  here, far finer than the differences the search ranks;
- MAX_GRID 1000 candidate levels: SD's DDPM table has 1000 noise levels, as for MAX_STEPS;
- MAX_SUBSTEPS 1000 teacher steps per grid interval: a fine solve already converged far below the
  plans' errors at a few tens.

Beyond these, `check_memory` refuses a search whose teacher states would not fit in this machine's
memory, whatever `--allow-large` says, naming the flags that shrink it.
"""

from __future__ import annotations

import math
import os

import safeio

LATENT_FACTOR = 8  # the VAE maps 8 x 8 pixels to one latent
MAX_SIDE = 2048
MAX_STEPS = 1000
MAX_BATCH = 64
MAX_IMAGES = 100_000
MAX_SWEEP_IMAGES = 64
MAX_SAMPLE_ELEMENTS = 4 * (MAX_SIDE // LATENT_FACTOR) ** 2
MAX_SEARCH_SAMPLES = 65_536
MAX_GRID = MAX_STEPS
MAX_SUBSTEPS = MAX_STEPS


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
    `source` says where the values came from when not from the inputs (e.g. "the settings of x.png: ")."""
    if allow_large:
        return
    _refuse_over(
        (
            ("{height}", height, height, MAX_SIDE, "pixels per side"),
            ("{width}", width, width, MAX_SIDE, "pixels per side"),
            ("steps", steps, steps, MAX_STEPS, "steps, the noise levels of SD's DDPM table"),
            ("{batch_size}", batch, batch, MAX_BATCH, "images per U-Net batch"),
            ("images", images, images, MAX_IMAGES, "images per run (prompts x {num_images})"),
        ),
        source,
    )


def _refuse_over(rows: tuple[tuple[str, int | None, object, int, str], ...], source: str = "") -> None:
    """Rows (what, value, how it is shown, limit, why; `what` and `why` name inputs as fields): the
    first value over its limit, refused in one line that says how to lift the limits."""
    for what, value, shown, limit, why in rows:
        if value is not None and value > limit:
            raise safeio.InputError(
                "{source}" + what + " {shown} is over the maximum of {limit} " + why + "; pass "
                "{allow_large} to lift the limits (see the README)",
                source=source,
                shown=shown,
                limit=limit,
            )


def check_search(
    *,
    shape: tuple[int, ...],
    steps: int,
    samples: int,
    held_out: int,
    grid: int,
    substeps: int,
    allow_large: bool = False,
) -> None:
    """Refuse the search's sample shape, NFE budget, sample counts, grid or teacher steps beyond the
    maxima, unless `allow_large`."""
    if allow_large:
        return
    elements = math.prod(shape)
    _refuse_over(
        (
            ("{shape}", elements, f"{','.join(map(str, shape))} ({elements} numbers)", MAX_SAMPLE_ELEMENTS,
             "numbers per sample (4 x 256 x 256 latents)"),
            ("{steps}", steps, steps, MAX_STEPS, "steps, the noise levels of SD's DDPM table"),
            ("{samples}", samples, samples, MAX_SEARCH_SAMPLES, "search samples"),
            ("{held_out}", held_out, held_out, MAX_SEARCH_SAMPLES, "held-out samples"),
            ("{grid}", grid, grid, MAX_GRID, "candidate levels, the noise levels of SD's DDPM table"),
            ("{teacher_substeps}", substeps, substeps, MAX_SUBSTEPS, "teacher steps per grid interval"),
        )
    )  # fmt: skip


def teacher_bytes(shape: tuple[int, ...], rows: int, grid: int, itemsize: int) -> int:
    """Bytes of the teacher's states, [grid + 1 levels, rows, *shape], twice: the solve keeps each level's
    state, then stacks them into one tensor."""
    return 2 * (grid + 1) * rows * math.prod(shape) * itemsize


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the system says (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, lower: str) -> None:
    """Refuse work that needs `need` bytes on a machine with less memory; `lower` names what to lower."""
    have = physical_memory()
    if have is not None and need > have:
        raise ValueError(
            f"the search would hold {need / 2**30:.1f} GiB of teacher states, more than this machine's "
            f"{have / 2**30:.1f} GiB of memory; lower {lower}"
        )
