"""Text to image with the paper's few-step samplers, every run replayable from its PNGs.

    python run_sample.py --steps 5 --prompt "a photo of a cat"

The pieces `evaluate/` reuses for generation: `load_model`, `build_plan`, `initial_noise`,
`generate`, `decode`, `Settings`, `png_metadata`, `save_png`, `read_replay`. The command line is
`main(argv)`.

One image: noise from its own seed -> x = noise * sigma_0 -> `solvers.sample` along the Plan with
the classifier-free-guided `model.Denoiser` -> `vae.decode(x / scaling_factor)` -> uint8 PNG that
carries the Plan, the settings and the weights' sha256.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.metadata
import itertools
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

import weights
from model import Denoiser
from schedule import DiscreteSchedule
from solvers import Plan, PlanError, StepInfo, guided, preset, preset_names, sample
from solvers.plan import FINAL_POLICIES
from solvers.presets import BASELINE_SCHEDULES, DEFAULT_GUIDANCE, PAPER_FREEU, schedule_sigmas
from solvers.steps import RULES
from weights.errors import WeightsError
from weights.fingerprint import weights_sha256
from weights.hub import SD15_FILE, SD15_REPO, hub_file, is_local_path, parse_hub_spec

DEFAULT_WEIGHTS = SD15_REPO  # its file SD15_FILE: the pruned EMA-only fp32 release, 4.27 GB
DEFAULT_STEPS = 5  # the README's command: the paper's 5-step preset
DEFAULT_SIZE = 512
SCHEDULES = ("paper", *BASELINE_SCHEDULES)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LATENT_FACTOR = 8  # the VAE maps 8 x 8 pixels to one latent
PLAN_KEY, SETTINGS_KEY, PARAMETERS_KEY = "fewstep-plan", "fewstep-settings", "parameters"
SETTINGS_FORMAT = 1
SAMPLER_NAMES = {
    "euler": "Euler",
    "heun": "Heun",
    "dpmpp_1s": "DPM++ 1S",
    "dpmpp_2s": "DPM++ 2S",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_3m": "DPM++ 3M",
}


class SamplingError(RuntimeError):
    """A sampling run went wrong (non-finite latents); the message is one line."""


def project_version() -> str:
    """fewstep-sd's version: from the installed metadata, else from the setup.cfg beside this file."""
    try:
        return importlib.metadata.version("fewstep-sd")
    except importlib.metadata.PackageNotFoundError:
        config = configparser.ConfigParser()
        config.read(Path(__file__).with_name("setup.cfg"))
        return config.get("metadata", "version", fallback="unknown")


# -- plans -----------------------------------------------------------------------------------------------


def build_plan(
    steps: int | None = None,
    preset_name: str | None = None,
    base: Plan | None = None,
    *,
    solver: str | None = None,
    schedule: str | None = None,
    guidance: float | None = None,
    freeu: bool | None = None,
    final: str | None = None,
    noise: DiscreteSchedule | None = None,
) -> Plan:
    """The Plan of a run: `base` (a plan file's or a replayed image's), else the preset `preset_name`,
    else the paper's preset for `steps` (default 5); then each override that is not None replaces its
    part on every step: `solver`, `schedule` (the sigmas, same step count), `guidance`, `freeu`
    (PAPER_FREEU or off), `final`. The plan's name records the overrides except guidance."""
    noise = DiscreteSchedule.sd() if noise is None else noise
    if sum(x is not None for x in (base, preset_name)) + (steps is not None and preset_name != "paper") > 1:
        raise ValueError("give only one of --steps, --preset and --plan (or --preset paper --steps N)")
    if base is None:
        if preset_name in (None, "paper"):
            base = preset("paper", steps=DEFAULT_STEPS if steps is None else steps, schedule=noise)
        else:
            base = preset(preset_name, schedule=noise)
    sigmas = base.sigmas if schedule is None else schedule_sigmas(schedule, base.steps, noise)
    changes = [
        f"{what}={value}" for what, value in (("schedule", schedule), ("solver", solver)) if value is not None
    ]
    if freeu is not None:
        changes.append("freeu" if freeu else "no-freeu")
    if final is not None:
        changes.append(f"final={final}")
    return Plan(
        sigmas,
        base.solver if solver is None else solver,
        base.guidance if guidance is None else guidance,
        base.freeu if freeu is None else (PAPER_FREEU if freeu else None),
        base.final if final is None else final,
        "+".join([base.name, *changes]),
    )


def read_plan_file(path: str | os.PathLike) -> Plan:
    """A Plan saved as JSON (`plan.to_json()`)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise PlanError(f"cannot read plan file {path}: {_reason(err)}") from None
    try:
        return Plan.from_json(text)
    except PlanError as err:
        raise PlanError(f"{path} is not a valid plan: {err}") from None


def schedule_label(plan: Plan, noise: DiscreteSchedule | None = None) -> str:
    """Which named placement the plan's sigmas are ("paper", "karras", ...), else "custom"."""
    noise = DiscreteSchedule.sd() if noise is None else noise
    ours = torch.tensor(plan.sigmas, dtype=torch.float64)
    for kind in SCHEDULES:
        if torch.allclose(schedule_sigmas(kind, plan.steps, noise), ours, rtol=1e-12, atol=0):
            return kind
    return "custom"


def sampler_label(plan: Plan) -> str:
    """A1111-style sampler name; mixed solvers as runs, e.g. "4 x DPM++ 1S + 2 x Euler"."""
    runs = [(name, len(list(group))) for name, group in itertools.groupby(plan.solver)]
    if len(runs) == 1:
        return SAMPLER_NAMES.get(runs[0][0], runs[0][0])
    return " + ".join(f"{n} x {SAMPLER_NAMES.get(name, name)}" for name, n in runs)


def _freeu_text(setting: dict | None) -> str:
    if setting is None:
        return "off"
    text = "/".join(f"{setting[k]:g}" for k in ("b1", "b2", "s1", "s2"))
    if setting.get("version", 1) != 1:
        text += f" v{setting['version']}"
    if setting.get("placement", "channels") != "channels":
        text += f" {setting['placement']}"
    return text


def _per_step_text(values: Sequence[str]) -> str:
    return values[0] if len(set(values)) == 1 else "; ".join(values)


# -- the settings an image is made with ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything besides the Plan that decides one image; stored as JSON in its PNG."""

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

    def to_json(self) -> str:
        return json.dumps({"format": SETTINGS_FORMAT, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"the settings are not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT:
            raise PlanError(f"the settings are not a settings object of format {SETTINGS_FORMAT}")
        values = {}
        for f in fields(cls):
            kind = {"str": str, "int": int, "bool": bool}[f.type]
            value = data.get(f.name)
            # bool is an int in Python; a seed of `true` is still wrong
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise PlanError(f"the settings lack a valid {f.name!r} ({f.type}), found {value!r}")
            values[f.name] = value
        return cls(**values)


def png_metadata(plan: Plan, settings: Settings, noise: DiscreteSchedule | None = None) -> dict[str, str]:
    """The PNG text chunks: A1111's `parameters` line, the Plan as JSON, the settings as JSON."""
    guidance = _per_step_text([f"{g:g}" for g in plan.guidance])
    freeu = _per_step_text([_freeu_text(f) for f in plan.freeu])
    line = {
        "Steps": plan.steps,
        "Sampler": sampler_label(plan),
        "Schedule type": schedule_label(plan, noise),
        "CFG scale": guidance,
        "Seed": settings.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model hash": settings.weights_sha256[:10],
        "Model": settings.model,
        **({"FreeU": freeu} if freeu != "off" else {}),
        "Plan": plan.name,
        "Version": f"fewstep-sd {settings.version}",
    }
    parameters = f"{settings.prompt}\nNegative prompt: {settings.negative_prompt}\n" + ", ".join(
        f"{key}: {_quote(str(value))}" for key, value in line.items()
    )
    return {PARAMETERS_KEY: parameters, PLAN_KEY: plan.to_json(), SETTINGS_KEY: settings.to_json()}


def _quote(value: str) -> str:
    # A1111's rule: a value holding ',', ':' or a newline is written as a JSON string
    return json.dumps(value) if any(c in value for c in ",:\n") else value


def read_replay(path: str | os.PathLike) -> tuple[Settings, Plan]:
    """The settings and Plan stored in a PNG written by `save_png(..., png_metadata(...))`."""
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}))
    except (OSError, ValueError) as err:
        raise PlanError(f"cannot read {path} as a PNG: {_reason(err)}") from None
    missing = [key for key in (PLAN_KEY, SETTINGS_KEY) if key not in text]
    if missing:
        raise PlanError(
            f"{path} has no {' or '.join(missing)} metadata, so it cannot be replayed; "
            "pass a PNG written by run_sample.py with its metadata intact"
        )
    try:
        return Settings.from_json(text[SETTINGS_KEY]), Plan.from_json(text[PLAN_KEY])
    except PlanError as err:
        raise PlanError(f"{path} cannot be replayed: {err}") from None


# -- generation ------------------------------------------------------------------------------------------


def initial_noise(
    seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape]: each image's from its own CPU float32 generator,
    then moved, so an image does not depend on its batch or on the device."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(device)


def decode(sd: weights.StableDiffusion, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, 4, h, w] -> uint8 images [B, 3, 8h, 8w] on the CPU, rounded like diffusers:
    round(255 * clamp(x / 2 + 0.5, 0, 1))."""
    vae_dtype = next(sd.vae.parameters()).dtype
    pixels = sd.vae.decode((latents / sd.vae.scaling_factor).to(vae_dtype)).float()
    if not torch.isfinite(pixels).all():
        raise SamplingError(f"the VAE decoder produced non-finite pixels in {vae_dtype}; try --dtype float32")
    return (pixels / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def check_size(height: int, width: int) -> None:
    """Refuse a size the VAE cannot make: each side a positive multiple of 8 pixels."""
    for flag, value in (("--height", height), ("--width", width)):
        problem = _size_problem(value)
        if problem:
            raise ValueError(f"{flag} {problem}")


def _size_problem(value: int) -> str | None:
    if value >= LATENT_FACTOR and value % LATENT_FACTOR == 0:
        return None
    below = max(value // LATENT_FACTOR * LATENT_FACTOR, LATENT_FACTOR)
    suggestion = f"{below} or {below + LATENT_FACTOR}" if value > below else f"{below}"
    return (
        f"{value} is not a positive multiple of {LATENT_FACTOR} (the VAE's downsampling factor); "
        f"use e.g. {suggestion}"
    )


def generate(
    sd: weights.StableDiffusion,
    plan: Plan,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    negative_prompt: str = "",
    height: int = DEFAULT_SIZE,
    width: int = DEFAULT_SIZE,
    callback: Callable[[StepInfo], None] | None = None,
) -> torch.Tensor:
    """Images for prompts[k] from seeds[k], as one batch: uint8 [B, 3, height, width] on the CPU.

    `sd` is a loaded `weights.StableDiffusion`. The latents stay float32 through the solver (the
    Denoiser casts to the model's dtype); guidance is D_u + w (D_c - D_u) with the negative prompt
    as the unconditional one. `callback` sees every step, after the check for non-finite values.
    Raises SamplingError naming the step at which the latents stopped being finite.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    check_size(height, width)
    device = next(sd.unet.parameters()).device
    channels = sd.unet.config.in_channels

    def checked(info: StepInfo) -> None:
        if not (torch.isfinite(info.x).all() and torch.isfinite(info.denoised).all()):
            raise SamplingError(
                f"the latents became non-finite at step {info.index + 1} of {plan.steps} "
                f"(sigma {info.sigma:.4g}); the model's dtype overflowed or the weights are broken: "
                "try --dtype float32"
            )
        if callback is not None:
            callback(info)

    with torch.inference_mode():
        cond, uncond = sd.encode_prompt(list(prompts)), sd.encode_prompt([negative_prompt])
        denoise = guided(Denoiser(sd.unet, sd.schedule), cond, uncond)
        noise = initial_noise(seeds, (channels, height // LATENT_FACTOR, width // LATENT_FACTOR), device)
        x = sample(denoise, noise * plan.sigmas[0], plan, checked)
        if not torch.isfinite(x).all():
            raise SamplingError(
                f"the latents became non-finite after step {plan.steps} of {plan.steps}; try --dtype float32"
            )
        return decode(sd, x)


def trajectory_grid(xs: Sequence[torch.Tensor], denoised: Sequence[torch.Tensor]) -> torch.Tensor:
    """Step i in column i: the decoded x_i on top, the decoded D(x_i; sigma_i) below. uint8 [3, 2H, N W]."""
    return torch.cat([torch.cat(list(xs), dim=2), torch.cat(list(denoised), dim=2)], dim=1)


# -- files -----------------------------------------------------------------------------------------------


def save_png(image: torch.Tensor, directory: str | os.PathLike, stem: str, metadata: dict[str, str]) -> Path:
    """Write uint8 [3, H, W] as `directory/stem.png` with text chunks `metadata`, atomically and never
    over an existing file: into a temporary file in the same folder, then hard-linked to the first
    free name of stem.png, stem-1.png, stem-2.png, ... (a link, unlike a rename, fails if it exists)."""
    directory = Path(directory)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)  # Pillow writes iTXt (UTF-8) where latin-1 tEXt cannot hold the text
    temporary = directory / f".{stem}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never clobber; mode 0o666 under the umask, as any file the user creates
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8), "RGB").save(
                file, format="PNG", pnginfo=info
            )
            file.flush()
            os.fsync(file.fileno())
        n = 0
        while True:
            target = directory / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
            try:
                os.link(temporary, target)
                return target
            except FileExistsError:
                n += 1
    finally:
        temporary.unlink(missing_ok=True)


def image_stem(prompt: str, seed: int) -> str:
    """`{seed}-{prompt as a slug}`, e.g. 42-a-photo-of-a-cat."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].strip("-")
    return f"{seed}-{slug or 'image'}"


def prepare_output(directory: str | os.PathLike) -> Path:
    """Create the output folder and prove it writable, before minutes are spent loading weights."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test.{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise OSError(
            f"cannot write to the output folder {directory}: {_reason(err)}; "
            "pass --out DIR with a writable folder"
        ) from None
    return directory


def resolve_weights(spec: str) -> Path:
    """A local file or folder as it is; a Hub id (org/name[@rev][/file]) through the Hugging Face cache.
    The SD 1.5 repo without a file name means its v1-5-pruned-emaonly.safetensors."""
    if is_local_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise WeightsError(
                f"weights {spec} not found: pass --weights PATH to a .safetensors file or diffusers folder, "
                f"or a Hub id such as {SD15_REPO}"
            )
        return path
    repo_id, filename, revision = parse_hub_spec(spec)
    if filename is None:
        if repo_id != SD15_REPO:
            raise WeightsError(f"{spec} names a Hub repo but no file in it: write {repo_id}/FILE.safetensors")
        filename = SD15_FILE
    return hub_file(repo_id, filename, revision)


def model_name(path: Path) -> str:
    return path.resolve().name if path.is_dir() else path.stem


def load_model(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, compile: bool = False
) -> tuple[weights.StableDiffusion, Path]:
    """(model, path) for a local path or Hub id; refuses what is not SD 1.x. `compile` applies
    torch.compile to the U-Net in place."""
    path = resolve_weights(spec)
    sd = weights.load(path, device=device, dtype=dtype)
    if sd.kind != "sd1":
        raise WeightsError(f"{path} holds an {sd.kind} model; run_sample.py runs SD 1.x (sd1) models only")
    if compile:
        sd.unet.compile()
    return sd, path


def _reason(err: BaseException) -> str:
    """An exception as one line: an OSError's strerror, else its text with newlines folded."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or type(err).__name__


# -- the command line ------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals are one line with exit status 2, like every other refusal of the
    project's commands (evaluate/ uses it too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {value}")
    return value


def _one_of(names: Sequence[str], what: str) -> Callable[[str], str]:
    """An argparse type with a message that lists the valid names (the same on every Python)."""

    def check(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from {', '.join(names)}")
        return text

    return check


def multiple_of_8(text: str) -> int:
    value = int(text)
    problem = _size_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="run_sample.py",
        description="Text to image with Stable Diffusion 1.5 and the paper's training-free few-step "
        "samplers. Each PNG stores its prompt, seed, settings and full sampling plan; --replay re-runs it.",
    )
    what = p.add_argument_group("what to draw")
    prompts = what.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt", action="append", metavar="TEXT", help="a prompt; repeat the flag for several"
    )
    prompts.add_argument(
        "--prompts", metavar="FILE", help="a text file, one prompt per line (blank lines skipped)"
    )
    what.add_argument(
        "--negative-prompt", metavar="TEXT", help="the unconditional prompt of guidance (default: '')"
    )
    what.add_argument(
        "--seed",
        type=_seed,
        metavar="S",
        help="seed of the first image; image k of the run uses seed + k (default: random, stored in the PNG)",
    )
    what.add_argument(
        "--num-images", type=positive_int, default=1, metavar="N", help="images per prompt (default: 1)"
    )
    for side in ("height", "width"):
        what.add_argument(
            f"--{side}",
            type=multiple_of_8,
            metavar="PX",
            help=f"pixels, a multiple of 8 (default: {DEFAULT_SIZE})",
        )

    how = p.add_argument_group("how to sample: a plan, then overrides of its parts on every step")
    how.add_argument(
        "--steps",
        type=positive_int,
        metavar="N",
        help="the paper's preset for N steps (tuned rows for 5, 6, 8; other N by the paper's rule) "
        f"(default: {DEFAULT_STEPS}, unless --preset, --plan or --replay gives the plan)",
    )
    how.add_argument("--preset", metavar="NAME", help=f"a named plan: {', '.join(preset_names())}")
    how.add_argument("--plan", metavar="FILE.json", help="a plan saved as JSON (Plan.to_json())")
    how.add_argument(
        "--replay",
        metavar="IMAGE.png",
        help="re-run the plan, prompt, seed, size, weights, dtype and compile flag stored in a PNG written "
        "by this command; flags given as well override them",
    )
    how.add_argument(
        "--solver",
        type=_one_of(list(RULES), "solver"),
        metavar="NAME",
        help=f"this solver on every step: {', '.join(RULES)} (default: the plan's)",
    )
    how.add_argument(
        "--schedule",
        type=_one_of(SCHEDULES, "schedule"),
        metavar="KIND",
        help=f"these sigmas for the plan's step count: {', '.join(SCHEDULES)} (default: the plan's)",
    )
    how.add_argument(
        "--guidance",
        type=float,
        metavar="W",
        help=f"classifier-free guidance scale w on every step (default: {DEFAULT_GUIDANCE:g}, or the plan's)",
    )
    how.add_argument(
        "--freeu",
        action=argparse.BooleanOptionalAction,
        help=f"FreeU b1/b2/s1/s2 = {_freeu_text(PAPER_FREEU)} on every step, or off on every step "
        "(default: the plan's)",
    )
    how.add_argument(
        "--final",
        type=_one_of(FINAL_POLICIES, "final policy"),
        metavar="keep|denoise",
        help="decode the last latent as is (keep, as the paper) or denoise it once more "
        "(default: the plan's)",
    )

    machine = p.add_argument_group("model and machine")
    machine.add_argument(
        "--weights",
        metavar="PATH|HUB_ID",
        help="a .safetensors file, a diffusers folder, or a Hub id org/name[@revision][/file] "
        f"(default: {DEFAULT_WEIGHTS}, file {SD15_FILE}, 4.27 GB, fetched once into the Hugging Face cache)",
    )
    machine.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    machine.add_argument(
        "--dtype",
        type=_one_of(list(DTYPES), "dtype"),
        metavar="NAME",
        help=f"model dtype: {', '.join(DTYPES)} (default: float16 on GPU, float32 on CPU)",
    )
    machine.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="images per U-Net batch, the last one padded with copies (default: 1, or the replayed image's)",
    )
    machine.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="torch.compile the U-Net (default: no)"
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        default="outputs",
        metavar="DIR",
        help="folder for the PNGs, created if missing (default: outputs)",
    )
    out.add_argument(
        "--trajectory",
        action="store_true",
        help="also save per image a grid of the decoded latent x_i (top row) and decoded denoised "
        "estimate D_i (bottom row) at every step",
    )
    out.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line message for any refusal)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (WeightsError, SamplingError, ValueError, OSError) as err:  # PlanError is a ValueError
        if args.debug:
            raise
        print(f"run_sample.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def one_line(err: BaseException) -> str:
    # our own errors are full sentences; a system OSError reads "file: reason", as Unix tools write it
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    return _reason(err)


def _read_prompts(args: argparse.Namespace, replayed: Settings | None) -> list[str]:
    if args.prompts:
        try:
            lines = Path(args.prompts).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read --prompts {args.prompts}: {_reason(err)}") from None
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise ValueError(f"--prompts {args.prompts} holds no prompt; write one per line")
        return prompts
    if args.prompt:
        return args.prompt
    if replayed is not None:
        return [replayed.prompt]
    raise ValueError('no prompt: pass --prompt "TEXT" (repeatable) or --prompts FILE')


def parse_device(spec: str | None) -> torch.device:
    """--device as a torch.device (default cuda if there is one), refused if this machine lacks it."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(
            f"--device {spec} is not a torch device ({_reason(err)}); use e.g. cpu or cuda"
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise ValueError(f"--device {spec} is not available on this machine; use --device cpu")
    return device


def run(args: argparse.Namespace) -> None:
    """The command: settle and check every setting, then load the weights, then generate batch by batch."""
    replayed, replayed_plan = read_replay(args.replay) if args.replay else (None, None)

    def pick(flag, name: str, default):
        """A flag given wins, then the replayed image's setting, then the default."""
        if flag is not None:
            return flag
        return getattr(replayed, name) if replayed is not None else default

    prompts = _read_prompts(args, replayed)
    height, width = pick(args.height, "height", DEFAULT_SIZE), pick(args.width, "width", DEFAULT_SIZE)
    check_size(height, width)
    device = parse_device(args.device)
    dtype = pick(args.dtype, "dtype", "float32" if device.type == "cpu" else "float16")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    fresh = args.steps is not None or args.preset is not None or args.plan is not None
    plan_for = partial(
        build_plan,
        args.steps,
        args.preset,
        read_plan_file(args.plan) if args.plan else None if fresh else replayed_plan,
        solver=args.solver,
        schedule=args.schedule,
        guidance=args.guidance,
        freeu=args.freeu,
        final=args.final,
    )
    plan_for(noise=DiscreteSchedule.sd())  # refuse a bad plan before minutes go into loading weights
    first_seed = pick(args.seed, "seed", secrets.randbelow(2**32))
    each = [prompt for prompt in prompts for _ in range(args.num_images)]
    jobs = [(prompt, first_seed + k) for k, prompt in enumerate(each)]  # image k: seed + k
    if jobs[-1][1] >= 2**63:
        raise ValueError(
            f"--seed {first_seed} + {len(jobs) - 1} images runs past 2^63 - 1; use a smaller seed"
        )
    # Every U-Net batch has the same size, the last one padded with copies: an image then has the
    # same pixels in any run with this batch size, and a replay rebuilds its batch bitwise.
    rows, offset = min(args.batch_size or 1, len(jobs)), 0
    if replayed is not None and args.batch_size is None and len(jobs) == 1:
        rows, offset = replayed.batch, replayed.batch_index  # rebuild the batch the image was made in
    out = prepare_output(args.out)

    started = time.perf_counter()
    spec = pick(args.weights, "weights", DEFAULT_WEIGHTS)
    compile_unet = pick(args.compile, "compile", False)
    sd, path = load_model(spec, device, DTYPES[dtype], compile_unet)
    plan = plan_for(noise=sd.schedule)  # on the model's own noise table (a file may store one)
    made = Settings(
        prompt="",
        negative_prompt=pick(args.negative_prompt, "negative_prompt", ""),
        seed=0,
        width=width,
        height=height,
        weights=spec,
        weights_sha256=weights_sha256(path),
        model=model_name(path),
        dtype=dtype,
        device=device.type,
        compile=compile_unet,
        batch=rows,
        batch_index=0,
    )
    loaded = time.perf_counter() - started
    if replayed is not None:
        _note_differences(args.replay, replayed, made)

    started = time.perf_counter()
    trajectories = _generate_all(sd, plan, jobs, rows, offset, made, out, args.trajectory)
    elapsed = time.perf_counter() - started
    extra = f" and {trajectories} trajectories" if trajectories else ""
    print(
        f"wrote {len(jobs)} images{extra} to {out}/ in {elapsed:.1f} s "
        f"({elapsed / len(jobs):.1f} s per image; loading the weights took {loaded:.1f} s)"
    )


def _generate_all(
    sd: weights.StableDiffusion,
    plan: Plan,
    jobs: list[tuple[str, int]],
    rows: int,
    offset: int,
    made: Settings,
    out: Path,
    trajectory: bool,
) -> int:
    """Generate and save every (prompt, seed) job in U-Net batches of `rows` images, the jobs from row
    `offset` on and the other rows copies of the nearest job. Returns the trajectories saved."""
    per_batch = rows - offset
    batches = [jobs[i : i + per_batch] for i in range(0, len(jobs), per_batch)]
    saved_trajectories = 0
    for b, batch in enumerate(batches):
        full = batch[:1] * offset + batch + batch[-1:] * (per_batch - len(batch))
        steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=plan.steps, desc=f"batch {b + 1}/{len(batches)}", disable=None, file=sys.stderr)

        def step(info: StepInfo, bar=bar, steps=steps) -> None:
            if trajectory:
                steps.append((decode(sd, info.x), decode(sd, info.denoised)))
            bar.update(1)

        with bar:
            images = generate(
                sd,
                plan,
                [prompt for prompt, _ in full],
                [seed for _, seed in full],
                negative_prompt=made.negative_prompt,
                height=made.height,
                width=made.width,
                callback=step,
            )
        for k, (prompt, seed) in enumerate(batch, start=offset):
            settings = replace(made, prompt=prompt, seed=seed, batch_index=k)
            metadata = png_metadata(plan, settings, sd.schedule)
            saved = save_png(images[k], out, image_stem(prompt, seed), metadata)
            if trajectory:
                grid = trajectory_grid([x[k] for x, _ in steps], [d[k] for _, d in steps])
                save_png(grid, out, f"{saved.stem}-trajectory", metadata)
                saved_trajectories += 1
    return saved_trajectories


def _note_differences(png: str, stored: Settings, now: Settings) -> None:
    """Replays are bitwise only on the same weights, device type, dtype and versions: say what differs."""
    differing = [
        f"{name} {str(getattr(stored, name))[:10]} -> {str(getattr(now, name))[:10]}"
        for name in ("weights_sha256", "device", "dtype", "compile", "version", "torch_version")
        if getattr(stored, name) != getattr(now, name)
    ]
    if differing:
        print(
            f"run_sample.py: note: {png} was made with other settings ({', '.join(differing)}); "
            "expect close, not identical, pixels",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
