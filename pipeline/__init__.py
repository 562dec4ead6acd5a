"""Text-to-image (and image-to-image) generation as a library: the model, the plan, conditioning,
initial noise, the guided denoiser, `sample`, decode, and each image's provenance (Settings, PNG
metadata, replay, atomic writes). `run_sample.py` and `evaluation/` are command lines over it.

    import pipeline, torch
    sd, path = pipeline.load_model("v1-5-pruned-emaonly.safetensors", "cuda", torch.float16)
    plan = pipeline.build_plan(8, guidance=5.5, schedule=sd.schedule)
    images = pipeline.generate(sd, plan, ["a cat"], [42])     # uint8 [1, 3, 512, 512]

    sd, path = pipeline.load_model("sdxl", "cuda", torch.float16, vae="sdxl-vae-fp16-fix")
    plan = pipeline.build_plan(8, guidance=5.5, schedule=sd.schedule, family=pipeline.family(sd))
    images = pipeline.generate(sd, plan, ["a cat"], [42])     # paper-xl-8, uint8 [1, 3, 1024, 1024]
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
    trajectory_grid,
)
from pipeline.img2img import STRENGTH_CUTS, InitImage, check_strength
from pipeline.limits import (
    LARGE_FLAG,
    LATENT_FACTOR,
    MAX_BATCH,
    MAX_IMAGES,
    MAX_SIDE,
    MAX_STEPS,
    check_bounds,
    check_size,
    size_problem,
)
from pipeline.models import (
    DEFAULT_WEIGHTS,
    DTYPES,
    EMPTY_NEGATIVE,
    FAMILIES,
    Family,
    default_dtype,
    family,
    family_of,
    file_family,
    load_model,
    model_name,
    parse_device,
    resolve_weights,
)
from pipeline.pixels import QUANTIZATIONS, read_image
from pipeline.plans import DEFAULT_STEPS, build_plan, check_plan, read_plan_file
from pipeline.provenance import (
    PARAMETERS_KEY,
    PLAN_KEY,
    SETTINGS_KEY,
    Settings,
    png_metadata,
    read_replay,
    run_settings,
)
from weights.errors import WeightsError

# What a command reports as one line and exit status 2 (PlanError is a ValueError).
USER_ERRORS = (WeightsError, SamplingError, ValueError, OSError)

__all__ = [
    "DEFAULT_STEPS",
    "DEFAULT_WEIGHTS",
    "DTYPES",
    "EMPTY_NEGATIVE",
    "FAMILIES",
    "LARGE_FLAG",
    "LATENT_FACTOR",
    "MAX_BATCH",
    "MAX_IMAGES",
    "MAX_SIDE",
    "MAX_STEPS",
    "PARAMETERS_KEY",
    "PLAN_KEY",
    "QUANTIZATIONS",
    "SETTINGS_KEY",
    "STRENGTH_CUTS",
    "USER_ERRORS",
    "Batch",
    "Family",
    "InitImage",
    "SamplingError",
    "Settings",
    "SizeConditioning",
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
    "family_of",
    "file_family",
    "generate",
    "generate_batch",
    "image_stem",
    "initial_noise",
    "load_model",
    "model_name",
    "parse_device",
    "png_metadata",
    "prepare_output",
    "read_image",
    "read_plan_file",
    "read_prompts",
    "read_replay",
    "resolve_weights",
    "run_settings",
    "save_png",
    "size_problem",
    "trajectory_grid",
]
