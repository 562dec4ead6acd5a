"""One run, assembled once: the user's choices (a `Request`) -> the loaded model, its family, the plan
on the model's own noise table and the run's settings (a `Run`). run_sample.py, evaluation.generate and
the schedule search all start here and keep only what is theirs.

Order: the device and dtype; the plan's recipe checked against the family the weights are known to be
(the short names' table, a local file's header) before anything is fetched; the weights resolved and
their headers read once (family, noise table, every tensor's shape); the plan built once on that
table; each default of the family filled in (and of a distilled preset: SDXL-Turbo's 512 px); the LoRA
files read and checked against the model's layers, a U-Net file read; then the checkpoint's tensors are
read (but a replaced U-Net's) and the LoRAs merged into them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import safeio
import weights
from model import SizeConditioning
from pipeline import img2img
from pipeline.img2img import InitImage
from pipeline.limits import check_bounds, check_size
from pipeline.models import (
    DEFAULT_WEIGHTS,
    DTYPES,
    compile_model,
    default_dtype,
    known_family,
    on_hub,
    parse_device,
    resolve_file,
    resolve_weights,
)
from pipeline.plans import build_plan
from pipeline.provenance import Settings, run_settings
from schedule import DiscreteSchedule, NoiseSchedule
from solvers import Plan
from solvers.presets import distilled, weights_warning
from weights import FAMILIES, Family, lora, unet_file


@dataclass(frozen=True)
class Job:
    """One image to make: its prompt and its seed."""

    prompt: str
    seed: int


def jobs_for(prompts: Sequence[str], count: int, first_seed: int) -> list[Job]:
    """`count` images of each prompt in turn, image k with seed first_seed + k; refused where a seed
    would run past the largest one (2^63 - 1)."""
    total = len(prompts) * count
    if first_seed + total - 1 >= safeio.SEED_LIMIT:
        raise safeio.InputError(
            "{seed} {first} + {more} images runs past 2^63 - 1; use a smaller seed",
            first=first_seed,
            more=total - 1,
        )
    each = [prompt for prompt in prompts for _ in range(count)]
    return [Job(prompt, first_seed + k) for k, prompt in enumerate(each)]


@dataclass(frozen=True)
class Recipe:
    """How the plan is made (`build_plan`): the paper's preset for `steps`, a named `preset` or a
    `base` plan (a plan file's, a replayed image's), then `overrides` of its parts."""

    steps: int | None = None
    preset: str | None = None
    base: Plan | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def build(self, schedule: NoiseSchedule, family: Family | None) -> Plan:
        return build_plan(
            self.steps, self.preset, self.base, **self.overrides, schedule=schedule, family=family
        )


@dataclass(frozen=True)
class Request:
    """What a run is asked to be; None means the default (of the machine or of the weights' family)."""

    weights: str = DEFAULT_WEIGHTS  # a path, a Hub id or a short name
    vae: str | None = None  # a separate VAE, likewise
    device: str | torch.device | None = None  # default cuda if there is one
    dtype: str | None = None  # a name of DTYPES; default bfloat16 on CUDA, float32 on the CPU
    vae_dtype: str | None = None  # default the family's for `dtype`
    height: int | None = None  # default the init image's, else the family's size
    width: int | None = None
    size_conditioning: SizeConditioning | None = None  # SDXL's; default the paper's
    negative_prompt: str = ""
    empty_negative: str | None = None  # "encode" | "zeros"; default the family's
    quantization: str = "round"
    compile: bool = False
    batch: int = 1  # images per U-Net batch
    init: InitImage | None = None
    recipe: Recipe = Recipe()
    allow_large: bool = False  # lift the limits of pipeline/limits.py
    loras: tuple[tuple[str, float], ...] = ()  # (a path, a Hub id or a short name; its strength), merged
    unet: str | None = None  # a U-Net file that replaces the checkpoint's, likewise


@dataclass(frozen=True)
class Run:
    """A model ready to sample: its family, the plan on its own noise table, and the run's settings
    (the per-image fields, prompt, seed and batch row, are filled in per image)."""

    model: weights.StableDiffusion
    family: Family
    plan: Plan
    settings: Settings
    init: InitImage | None = None
    # the weights, LoRAs and U-Net as given and as files, which a distilled preset's warning reads
    weight_names: tuple[str, ...] = ()

    @property
    def warning(self) -> str | None:
        """One line when the plan is a distilled preset and the weights are not made for it."""
        return weights_warning(self.plan.name, self.weight_names)

    def replan(self, recipe: Recipe, batch: int) -> Run:
        """This loaded run with the plan of `recipe`, built on the model's own noise table (a strength
        that keeps no step of it refused), and `batch` images per U-Net batch: a sweep's plan knobs."""
        schedule = self.model.schedule
        plan = recipe.build(schedule, self.family)
        if self.init is not None:
            img2img.cut(plan, self.init, schedule)
        return replace(self, plan=plan, settings=replace(self.settings, batch=batch))


class SizeConditioningRefused(ValueError):
    """Size conditioning asked of a family that takes none."""

    def __init__(self, family: Family) -> None:
        super().__init__(f"size conditioning is SDXL's; {family.label} models take none")
        self.family = family


def preview_plan(request: Request) -> Plan:
    """The plan a run of `request` would use, without fetching or loading weights: placed on SD's
    standard noise table, for the family the short names' table or a local file's header gives (any
    other Hub id: SD 1.x's presets, no family checked). Refuses a recipe that cannot run."""
    family = known_family(request.weights)
    _refuse_size_conditioning(request, family)
    return request.recipe.build(DiscreteSchedule.sd(), family)


def prepare_run(request: Request) -> Run:
    """Resolve every default once, fetch and read the weights' headers once, build the plan once on the
    model's own table, then load the model (module docstring)."""
    device = request.device if isinstance(request.device, torch.device) else parse_device(request.device)
    dtype = request.dtype or default_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(safeio.unknown("dtype", dtype, DTYPES))
    if on_hub(request.weights):
        preview_plan(request)  # refuse before minutes go into fetching the weights
    path = resolve_weights(request.weights, DTYPES[dtype], bundled_vae=request.vae is None)
    checkpoint = weights.read_checkpoint(path, DTYPES[dtype], bundled_vae=request.vae is None)
    family = checkpoint.family
    _refuse_size_conditioning(request, family)
    plan = request.recipe.build(checkpoint.schedule, family)  # a file may store its own noise table
    init = request.init
    made_for = distilled(plan.name)
    side = made_for.size if made_for is not None and made_for.size else family.size  # SDXL-Turbo: 512
    default_height, default_width = (side, side) if init is None else init.pixels.shape[1:]
    height, width = request.height or default_height, request.width or default_width
    check_size(height, width)
    check_bounds(height=height, width=width, allow_large=request.allow_large)
    if init is not None:
        init.check_size(height, width)
        img2img.cut(plan, init, checkpoint.schedule)  # refuse a strength that keeps no step
    vae_dtype = request.vae_dtype or family.vae_dtype(dtype)
    vae = None if request.vae is None else resolve_weights(request.vae, DTYPES[vae_dtype], what="vae")
    loras = [(lora.read(resolve_file(spec, "lora", family)), strength) for spec, strength in request.loras]
    unet_path = None if request.unet is None else resolve_file(request.unet, "unet", family)
    unet = None if unet_path is None else unet_file.load(unet_path, family.name, DTYPES[dtype], device)
    unet_config = (checkpoint.modules["unet"] if unet is None else unet).config
    if unet_config.time_cond_proj_dim is not None and len(set(plan.guidance)) > 1:
        raise safeio.InputError(
            "an LCM U-Net takes one guidance scale as its input (time_cond_proj_dim), not one per step; "
            "give one {guidance}"
        )
    # every LoRA checked against the model's layers (on the meta device) before its tensors are read
    lora.check({**checkpoint.modules, **({} if unet is None else {"unet": unet})}, family.name, loras)
    sd = checkpoint.load(device, vae=vae, vae_dtype=DTYPES[vae_dtype], unet=unet)
    lora.merge(sd, loras)
    if request.compile:
        compile_model(sd)
    size = (request.size_conditioning or SizeConditioning()) if family.size_conditioning else None
    settings = run_settings(
        request.weights,
        path,
        vae=None if request.vae is None else (request.vae, sd.vae_source),
        init_image=None if init is None or init.source is None else (init.source, Path(init.source)),
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        dtype=dtype,
        device=device.type,
        compile=request.compile,
        batch=request.batch,
        size_conditioning=None if size is None else list(size.numbers()),
        empty_negative=request.empty_negative or family.empty_negative,
        vae_dtype=vae_dtype,
        strength=None if init is None else init.strength,
        strength_cut=None if init is None else init.cut,
        quantization=request.quantization,
        loras=[
            {"lora": spec, **lora.record(lora_file, strength)}
            for (spec, _), (lora_file, strength) in zip(request.loras, loras, strict=True)
        ]
        or None,
        unet=request.unet,
        unet_sha256=None if unet_path is None else unet_file.record(unet_path)["sha256"],
    )
    names = [
        request.weights,
        path.name,
        *(spec for spec, _ in request.loras),
        *(f.path.name for f, _ in loras),
    ]
    names += [] if unet_path is None else [request.unet, unet_path.name]
    return Run(sd, family, plan, settings, init, tuple(dict.fromkeys(names)))


def _refuse_size_conditioning(request: Request, family: Family | None) -> None:
    if request.size_conditioning is not None and family is not None and not family.size_conditioning:
        raise SizeConditioningRefused(family)


def run_in_memory(model: weights.StableDiffusion, plan: Plan, **settings: Any) -> Run:
    """A run of a model already in memory (a notebook's, a benchmark's, a test's: no file behind it to
    fingerprint): 64 x 64 px, float32 on the CPU, the family's defaults, but for `settings` (fields of
    Settings)."""
    family = FAMILIES[model.kind]
    size = SizeConditioning().numbers() if family.size_conditioning else None
    fields = {"prompt": "", "negative_prompt": "", "seed": 0, "width": 64, "height": 64, "weights": "memory",
              "weights_sha256": "0" * 64, "model": "memory", "dtype": "float32", "device": "cpu",
              "compile": False, "batch": 1, "batch_index": 0, "empty_negative": family.empty_negative,
              "size_conditioning": None if size is None else list(size)}  # fmt: skip
    return Run(model, family, plan, Settings(**{**fields, **settings}))
