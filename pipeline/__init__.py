"""Text-to-image (and image-to-image) generation as a library: a run assembled from the user's choices
(`prepare_run`: the model, the plan, the run's settings), conditioning, initial noise, the guided
denoiser, `sample`, decode, and each image's provenance (Settings, PNG metadata, replay, atomic
writes). `run_sample.py`, `evaluation/` and the schedule search are command lines over it.

    import pipeline
    recipe = pipeline.Recipe(8, overrides={"guidance": 5.5})
    run = pipeline.prepare_run(pipeline.Request("v1-5-pruned-emaonly.safetensors", recipe=recipe))
    images = pipeline.generate(run, [pipeline.Job("a cat", 42)])   # uint8 [1, 3, 512, 512]

    run = pipeline.prepare_run(pipeline.Request("sdxl", "sdxl-vae-fp16-fix", recipe=recipe))
    images = pipeline.generate(run, [pipeline.Job("a cat", 42)])   # paper-xl-8, uint8 [1, 3, 1024, 1024]
"""

from model import SizeConditioning
from pipeline.batching import Batch, batches
from pipeline.files import check_free_space, image_stem, prepare_output, read_prompts, save_png
from pipeline.generate import (
    SamplingError,
    conditioning,
    decode,
    decode_pixels,
    denoiser,
    generate,
    generate_batch,
    initial_noise,
    replays_graph,
    trajectory_grid,
    write_batch,
)
from pipeline.img2img import STRENGTH_CUTS, InitImage, check_strength
from pipeline.limits import (
    LATENT_FACTOR,
    MAX_BATCH,
    MAX_IMAGES,
    MAX_SIDE,
    MAX_STEPS,
    MAX_SWEEP_IMAGES,
    check_bounds,
    check_size,
    size_problem,
)
from pipeline.models import (
    DEFAULT_WEIGHTS,
    DTYPE_ALIASES,
    DTYPES,
    default_dtype,
    family,
    known_family,
    model_name,
    parse_device,
    resolve_weights,
)
from pipeline.pixels import QUANTIZATIONS, read_image
from pipeline.plans import DEFAULT_STEPS, build_plan, check_plan, read_plan_file, searched_on_another_model
from pipeline.provenance import (
    BITWISE_UNDER,
    PARAMETERS_KEY,
    PLAN_KEY,
    SETTINGS_KEY,
    Settings,
    png_metadata,
    read_replay,
    replay_differences,
    run_settings,
)
from pipeline.runs import (
    Job,
    Recipe,
    Request,
    Run,
    SizeConditioningRefused,
    jobs_for,
    prepare_run,
    preview_plan,
    run_in_memory,
)
from weights.errors import WeightsError
from weights.families import EMPTY_NEGATIVE, FAMILIES, Family

# What a command reports as one line and exit status 2 (PlanError is a ValueError).
USER_ERRORS = (WeightsError, SamplingError, ValueError, OSError)

__all__ = [
    "BITWISE_UNDER",
    "DEFAULT_STEPS",
    "DEFAULT_WEIGHTS",
    "DTYPES",
    "DTYPE_ALIASES",
    "EMPTY_NEGATIVE",
    "FAMILIES",
    "LATENT_FACTOR",
    "MAX_BATCH",
    "MAX_IMAGES",
    "MAX_SIDE",
    "MAX_STEPS",
    "MAX_SWEEP_IMAGES",
    "PARAMETERS_KEY",
    "PLAN_KEY",
    "QUANTIZATIONS",
    "SETTINGS_KEY",
    "STRENGTH_CUTS",
    "USER_ERRORS",
    "Batch",
    "Family",
    "InitImage",
    "Job",
    "Recipe",
    "Request",
    "Run",
    "SamplingError",
    "Settings",
    "SizeConditioning",
    "SizeConditioningRefused",
    "batches",
    "build_plan",
    "check_bounds",
    "check_free_space",
    "check_plan",
    "check_size",
    "check_strength",
    "conditioning",
    "decode",
    "decode_pixels",
    "default_dtype",
    "denoiser",
    "family",
    "generate",
    "generate_batch",
    "image_stem",
    "initial_noise",
    "jobs_for",
    "known_family",
    "model_name",
    "parse_device",
    "png_metadata",
    "prepare_output",
    "prepare_run",
    "preview_plan",
    "read_image",
    "read_plan_file",
    "read_prompts",
    "read_replay",
    "replay_differences",
    "replays_graph",
    "resolve_weights",
    "run_in_memory",
    "run_settings",
    "save_png",
    "searched_on_another_model",
    "size_problem",
    "trajectory_grid",
    "write_batch",
]
