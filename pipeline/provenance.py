"""What an image carries so that it can be read and replayed: its Settings and the PNG text chunks.

Every PNG gets three text chunks:

- `parameters`: A1111's infotext line (prompt, negative prompt, then "Steps: 5, Sampler: ..., ...");
- `fewstep-plan`: the Plan as JSON (every sigma, solver and per-step option, the discretization);
- `fewstep-settings`: the Settings as JSON (prompt, seed, size, weights and their sha256, dtype,
  device, batch shape, versions; SDXL's size conditioning, a separate VAE and its sha256, an init
  image, its sha256 and strength, the pixel quantisation, the empty negative prompt's conditioning).

`read_replay` reads the last two back, checked as strictly as the command line checks its flags.
"""

from __future__ import annotations

import configparser
import dataclasses
import importlib.metadata
import itertools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import safeio
from model import SizeConditioning
from pipeline.img2img import STRENGTH_CUTS, check_strength
from pipeline.limits import size_problem
from pipeline.models import DTYPES, model_name
from pipeline.pixels import QUANTIZATIONS
from pipeline.plans import check_plan, checked_record
from solvers import OPTIONS, SOLVERS, Plan, PlanError
from solvers.guidance import passes
from weights.families import EMPTY_NEGATIVE
from weights.fingerprint import file_sha256, weights_sha256

PLAN_KEY, SETTINGS_KEY, PARAMETERS_KEY = "fewstep-plan", "fewstep-settings", "parameters"
# The settings a replay gives the same pixels only under, bitwise (with the batch shape, the CPU's
# thread count and the machine): kernels round by dtype, device type and library version.
BITWISE_UNDER = (
    "weights_sha256",
    "vae_sha256",
    "init_image_sha256",
    "loras",
    "unet_sha256",
    "device",
    "dtype",
    "vae_dtype",
    "compile",
    "version",
    "torch_version",
)
# Of those, the inputs: another value there makes other pixels, not other arithmetic.
INPUTS = ("weights_sha256", "vae_sha256", "init_image_sha256", "loras", "unet_sha256")
SETTINGS_FORMAT = 1


def project_version() -> str:
    """fewstep-sd's version: from the installed metadata, else from the setup.cfg of the checkout."""
    try:
        return importlib.metadata.version("fewstep-sd")
    except importlib.metadata.PackageNotFoundError:
        config = configparser.ConfigParser()
        config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
        return config.get("metadata", "version", fallback="unknown")


@dataclass(frozen=True)
class Settings:
    """Everything besides the Plan that decides one image; stored as JSON in its PNG.

    Fields with a default may be missing from the JSON of an older PNG (they then take the default),
    so new settings can be added without breaking replays.
    """

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    weights: str  # --weights as given: a path or a Hub id
    weights_sha256: str
    model: str  # display name: the weight file's stem or the folder's name
    dtype: str
    device: str  # the device type: cpu, cuda, mps
    compile: bool
    # The U-Net batch that made the image: its size and the image's row in it. Batched GEMMs block
    # (and so round) by batch shape and row, not by the other rows' values; a replay rebuilds both.
    batch: int
    batch_index: int
    version: str = field(default_factory=project_version)
    torch_version: str = torch.__version__
    # Added with SDXL and image to image; PNGs written before carry none of them (SD 1.x, text to
    # image, rounded pixels, the encoded "" as the empty negative prompt).
    size_conditioning: list[int] | None = None  # SDXL: orig_h, orig_w, crop_top, crop_left, tgt_h, tgt_w
    empty_negative: str = "encode"  # an empty negative prompt as the encoded "" or "zeros"
    vae: str | None = None  # --vae as given: a separate VAE that replaced the bundled one
    vae_sha256: str | None = None
    vae_dtype: str | None = None  # None (older PNGs): the model's dtype
    init_image: str | None = None  # --init-image as given
    init_image_sha256: str | None = None
    strength: float | None = None
    strength_cut: str | None = None  # how the strength cut the plan: "steps" | "time" (pipeline/img2img.py)
    quantization: str = "round"  # pixels: "round" (diffusers) | "truncate" (the authors' code)
    # Added with LoRA and U-Net files: each merged LoRA as {"lora": --lora as given, "file", "sha256",
    # "strength"} in the order merged, and a U-Net file that replaced the checkpoint's.
    loras: list[dict] | None = None
    unet: str | None = None  # --unet as given
    unet_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.vae_dtype is None:  # what an older PNG means: the VAE ran in the model's dtype
            object.__setattr__(self, "vae_dtype", self.dtype)

    def size(self) -> SizeConditioning | None:
        return (
            None if self.size_conditioning is None else SizeConditioning.from_numbers(self.size_conditioning)
        )

    def to_json(self) -> str:
        return json.dumps({"format": SETTINGS_FORMAT, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = safeio.parse_json(text, "the settings", "re-make the image", PlanError)
        if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT:
            raise PlanError(f"the settings are not a settings object of format {SETTINGS_FORMAT}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - {"format"})
        if unknown:
            raise PlanError(
                f"the settings have unknown fields {unknown}; they were written by another version"
            )
        values = {}
        for f in fields(cls):
            if f.name not in data and _has_default(f):
                continue
            value = data.get(f.name)
            if not _has_type(value, f.type):
                raise PlanError(f"the settings lack a valid {f.name!r} ({f.type}), found {value!r}")
            check = VALUE_CHECKS.get(f.name)
            if check is not None and value is not None:
                try:
                    check(value)
                except ValueError as err:
                    raise PlanError(f"the settings' {f.name} is wrong: {err}") from None
            values[f.name] = value
        if values["batch_index"] >= values["batch"]:
            raise PlanError(
                f"the settings' batch_index {values['batch_index']} is not a row of a batch of "
                f"{values['batch']}; re-make the image, or give the batch size it was made with"
            )
        return cls(**values)


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation (str, int, bool, float, list[int], `| None`)."""
    if annotation.endswith(" | None"):
        return value is None or _has_type(value, annotation.removesuffix(" | None"))
    if annotation == "list[int]":
        return isinstance(value, list) and all(_has_type(v, "int") for v in value)
    if annotation == "list[dict]":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    kind = {"str": str, "int": int, "bool": bool}[annotation]
    # bool is an int in Python; a seed of `true` is still wrong
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _one_of(names: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in names:
            raise ValueError(f"{value!r} is not one of {', '.join(names)}")

    return check


def _side(value: int) -> None:
    problem = size_problem(value)
    if problem:
        raise ValueError(problem)


def _named(value: str) -> None:
    if not value.strip():
        raise ValueError("it is empty")


LORA_RECORD = {"lora": "str", "file": "str", "sha256": "str", "strength": "float"}


def _loras(value: list[dict]) -> None:
    for entry in value:
        if set(entry) != set(LORA_RECORD) or not all(_has_type(entry[k], t) for k, t in LORA_RECORD.items()):
            raise ValueError(f"{entry!r} is not a LoRA record of {', '.join(LORA_RECORD)}")
        _named(entry["lora"])
        safeio.number(entry["strength"])


# The settings read from a PNG are checked as the command line checks the same values (the same
# functions: cli's --seed and --batch-size types call safeio's, --width and --height size_problem).
VALUE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "seed": safeio.seed,
    "width": _side,
    "height": _side,
    "batch": lambda value: safeio.integer(value, 1),
    "batch_index": lambda value: safeio.integer(value, 0),
    "weights": _named,
    "size_conditioning": SizeConditioning.from_numbers,
    "empty_negative": _one_of(EMPTY_NEGATIVE),
    "dtype": _one_of(tuple(DTYPES)),
    "vae_dtype": _one_of(tuple(DTYPES)),
    "strength": check_strength,
    "strength_cut": _one_of(STRENGTH_CUTS),
    "quantization": _one_of(tuple(QUANTIZATIONS)),
    "loras": _loras,
    "unet": _named,
}


def run_settings(
    weights_spec: str,
    path: Path,
    *,
    vae: tuple[str, Path] | None = None,
    init_image: tuple[str, Path] | None = None,
    **settings: Any,
) -> Settings:
    """A run's Settings before the per-image fields (prompt, seed, batch row) are filled in: the
    weights as given and as found (`path`: their sha256 and display name), a separate VAE and an
    init image likewise ((as given, path): their sha256), and `settings` (negative_prompt, width,
    height, dtype, device, compile, batch, and the fields with defaults)."""
    return Settings(
        prompt="",
        seed=0,
        batch_index=0,
        weights=weights_spec,
        weights_sha256=weights_sha256(path),
        model=model_name(path),
        vae=None if vae is None else vae[0],
        vae_sha256=None if vae is None else weights_sha256(vae[1]),
        init_image=None if init_image is None else init_image[0],
        init_image_sha256=None if init_image is None else file_sha256(init_image[1], progress=False),
        **settings,
    )


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def sampler_label(plan: Plan) -> str:
    """A1111-style sampler name; mixed solvers as runs, e.g. "4 x DPM++ 1S + 2 x Euler"."""
    runs = [(SOLVERS[name].display, len(list(group))) for name, group in itertools.groupby(plan.solver)]
    if len(runs) == 1:
        return runs[0][0]
    return " + ".join(f"{n} x {display}" for display, n in runs)


def option_labels(plan: Plan) -> list[tuple[str, str, str]]:
    """The plan's declared options with a PNG label, as (label, the key it follows, text): one rendered
    value for all steps, or one per step joined by "; "; left out when every step holds the option's
    default, unless it is always shown."""
    labels = []
    for key, column in plan.options.items():
        option = OPTIONS.get(key)
        if option is None or option.label is None:
            continue
        if option.always or any(value != option.default for value in column):
            shown = [option.render(value) for value in column]
            labels.append(
                (option.label, option.after, shown[0] if len(set(shown)) == 1 else "; ".join(shown))
            )
    return labels


def png_metadata(plan: Plan, settings: Settings) -> dict[str, str]:
    """The PNG text chunks: A1111's `parameters` line, the Plan as JSON, the settings as JSON."""
    guided_calls, conditional_calls = passes(plan)
    fixed = {
        "Steps": plan.steps,
        # images x passes: a guided call runs the conditional and unconditional images, 2 passes
        "U-Net passes": f"{2 * guided_calls + conditional_calls} per image ({guided_calls} guided x 2 + "
        f"{conditional_calls} conditional)",
        "Sampler": sampler_label(plan),
        "Schedule type": "custom" if plan.discretization is None else plan.discretization.display,
        "Seed": settings.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model hash": settings.weights_sha256[:10],
        "Model": settings.model,
        **({"Denoising strength": f"{settings.strength:g}"} if settings.strength is not None else {}),
        **({"VAE hash": settings.vae_sha256[:10]} if settings.vae_sha256 else {}),
        "Plan": plan.name,
        "Version": f"fewstep-sd {settings.version}",
    }
    labels = option_labels(plan)
    line = {}
    for key, value in fixed.items():
        line[key] = value
        line.update({label: text for label, after, text in labels if after == key})
    parameters = f"{settings.prompt}\nNegative prompt: {settings.negative_prompt}\n" + ", ".join(
        f"{key}: {_quote(str(value))}" for key, value in line.items()
    )
    return {PARAMETERS_KEY: parameters, PLAN_KEY: plan.to_json(), SETTINGS_KEY: settings.to_json()}


def _quote(value: str) -> str:
    # A1111's rule: a value holding ',', ':' or a newline is written as a JSON string
    return json.dumps(value) if any(c in value for c in ",:\n") else value


def read_replay(path: str | os.PathLike) -> tuple[Settings, Plan]:
    """The settings and Plan stored in a PNG written with `png_metadata`."""
    try:
        with safeio.open_regular(path) as file, Image.open(file) as image:
            text = dict(getattr(image, "text", {}))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise PlanError(f"cannot read {path} as a PNG: {safeio.reason(err)}") from None
    return replay_from_text(text, path)


def replay_from_text(text: Mapping[str, str], path: object = "the image") -> tuple[Settings, Plan]:
    """The settings and Plan of a PNG's text chunks (`read_replay` without the file); raises PlanError
    naming `path` for anything else."""
    missing = [key for key in (PLAN_KEY, SETTINGS_KEY) if key not in text]
    if missing:
        raise PlanError(
            f"{path} has no {' or '.join(missing)} metadata, so it cannot be replayed; "
            "pass a PNG written by run_sample.py with its metadata intact"
        )
    try:
        settings, plan = Settings.from_json(text[SETTINGS_KEY]), check_plan(Plan.from_json(text[PLAN_KEY]))
    except PlanError as err:
        raise PlanError(f"{path} cannot be replayed: {err}") from None
    return settings, checked_record(plan, path)


def replay_differences(stored: Settings, now: Settings) -> str | None:
    """What a replay of an image made with `stored` differs in (BITWISE_UNDER) and what to expect of
    its pixels, in one line; None when it is made under the same settings (bitwise)."""
    differing = [name for name in BITWISE_UNDER if getattr(stored, name) != getattr(now, name)]
    if not differing:
        return None
    changes = ", ".join(f"{name} {getattr(stored, name)} -> {getattr(now, name)}" for name in differing)
    expect = "different" if set(differing) & set(INPUTS) else "close, not identical,"
    return f"made with other settings ({changes}); expect {expect} pixels"
