"""The flags every generating command shares (run_sample.py, python -m evaluation.generate), defined
once: the plan and its overrides (every hyperparameter of the paper), the model and machine, the
images (size, SDXL's size conditioning, the empty negative prompt, the pixels' quantisation), and
image to image (run_sample.py only). Flags default to None, meaning "not given": a command fills in
its own defaults (or a replayed image's settings) and says which in --help.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

import cli
import pipeline
from schedule import DISCRETIZATIONS
from schedule.discretizations import knob_flags
from solvers import OPTIONS, SOLVERS, preset_names
from solvers.plan import FINAL_POLICIES
from solvers.table import display_names
from weights.catalog import SD15_FILE, SHORT_NAMES, distilled_names


def pair(text: str) -> tuple[int, int]:
    """--original-size H,W and the like: two integers >= 0."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"give two integers such as 1024,1024, got {text!r}")
    return cli.nonnegative_int(parts[0]), cli.nonnegative_int(parts[1])


def strength(text: str) -> float:
    try:
        return pipeline.check_strength(cli.finite_float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(cli.one_line(err)) from None


def lora_spec(text: str) -> tuple[str, float]:
    """--lora FILE_OR_SHORT_NAME[:STRENGTH]: the text after the last ':' is the strength (default 1)."""
    spec, colon, tail = text.rpartition(":")
    if not colon:
        spec, tail = text, "1"
    if not spec:
        raise argparse.ArgumentTypeError(f"{text!r} names no LoRA file; give FILE or FILE:STRENGTH")
    try:
        return spec, cli.finite_float(tail)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: the strength after ':' {err}") from None


def multiple_of_8(text: str) -> int:
    value = cli.positive_int(text)
    problem = pipeline.size_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def add_plan_flags(parser: argparse.ArgumentParser, *, default_note: str) -> argparse._ArgumentGroup:
    """--steps, --preset, --plan, then the overrides (each per-step option's flags as it declares them,
    solvers/options.py); returns the group (a command may add to it)."""
    how = parser.add_argument_group("how to sample: a plan, then overrides of its parts on every step")
    how.add_argument(
        "--steps",
        type=cli.positive_int,
        metavar="N",
        help="the paper's preset for N steps (tuned rows for 5, 6, 8; other N by the paper's rule) "
        f"(default: {pipeline.DEFAULT_STEPS}{default_note})",
    )
    how.add_argument("--preset", metavar="NAME", help=f"a named plan: {', '.join(preset_names())}")
    how.add_argument("--plan", metavar="FILE.json", help="a plan saved as JSON (Plan.to_json())")
    how.add_argument(
        "--solver",
        type=cli.one_of(lambda: list(SOLVERS), "solver", display_names),
        metavar="NAME",
        help=f"this solver on every step: {', '.join(SOLVERS)}, or its name in the PNG, e.g. 'DPM++ 2M' "
        "(default: the plan's)",
    )
    how.add_argument(
        "--discretization",
        type=cli.one_of(lambda: list(DISCRETIZATIONS), "discretization"),
        metavar="KIND",
        help=f"place the plan's steps anew: {', '.join(DISCRETIZATIONS)} (default: the plan's sigmas)",
    )
    for name, (parse, text) in knob_flags().items():
        how.add_argument(
            f"--{name.replace('_', '-')}",  # --original-inference-steps; args keep the knob's name
            dest=name,
            type=knob_type(parse),
            metavar="X",
            help=f"{text}; a knob of the plan's discretization",
        )
    for option in OPTIONS.values():
        for flag in option.flags:
            kwargs = {"default": None, **flag.kwargs}  # None: not given (a store_true flag too)
            if "type" in kwargs:
                kwargs["type"] = _flag_type(kwargs["type"])
            how.add_argument(flag.name, help=flag.help, **kwargs)
    how.add_argument(
        "--final",
        type=cli.one_of(FINAL_POLICIES, "final policy"),
        metavar="keep|denoise",
        help="decode the last latent as is (keep, as the paper) or denoise it once more "
        "(default: the plan's)",
    )
    return how


def knob_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A knob flag's argparse type: the text read and checked as the same value in a plan file is."""

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(cli.one_line(err)) from None

    return read


def plan_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `pipeline.build_plan` that the plan flags give."""
    return {
        "solver": args.solver,
        "discretization": args.discretization,
        "knobs": {
            name: getattr(args, name) for name in knob_flags() if getattr(args, name, None) is not None
        },
        "final": args.final,
        **{dest: getattr(args, dest) for option in OPTIONS.values() for dest in option.dests},
    }


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An option's flag parser (ValueError says what is wrong) as an argparse type showing that line."""

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(cli.one_line(err)) from None

    return parsed


def add_model_flags(
    parser: argparse.ArgumentParser, *, device_help: str = "", weights_default: bool = True
) -> argparse._ArgumentGroup:
    """--weights (with SD 1.5 as its default unless not `weights_default`), --device, --dtype,
    --batch-size, --compile."""
    machine = parser.add_argument_group("model and machine")
    default = (
        f" (default: {pipeline.DEFAULT_WEIGHTS}, file {SD15_FILE}, 4.27 GB, fetched once into the Hugging "
        "Face cache)"
    )
    machine.add_argument(
        "--weights",
        metavar="PATH|HUB_ID|NAME",
        help="an SD 1.x or SDXL .safetensors file, a diffusers folder, a Hub id org/name[@revision][/file] "
        f"(a repo without a file: its single file if it has a known one, else its diffusers folder), or a "
        f"short name: {', '.join(SHORT_NAMES)}" + (default if weights_default else ""),
    )
    machine.add_argument(
        "--vae",
        metavar="PATH|HUB_ID|NAME",
        help="a separate VAE (file or diffusers folder) instead of the bundled one, e.g. sdxl-vae-fp16-fix, "
        "which the paper's SDXL runs used (default: the bundled VAE)",
    )
    machine.add_argument(
        "--lora",
        type=lora_spec,
        action="append",
        metavar="FILE|HUB_ID|NAME[:STRENGTH]",
        help="a LoRA merged into the weights as they load, times STRENGTH (a finite number, default 1); "
        "repeat to add several. Kohya, PEFT and diffusers files; a Hub id org/name/file; or a short "
        f"name: {', '.join(distilled_names('lora'))} (default: none)",
    )
    machine.add_argument(
        "--unet",
        metavar="FILE|HUB_ID|NAME",
        help="a U-Net file (diffusers or original layout; .safetensors, or a weights-only .bin) that "
        "replaces the checkpoint's, e.g. SDXL-Lightning's or DMD2's; a Hub id org/name/file, or a short "
        f"name: {', '.join(distilled_names('unet'))} (default: the checkpoint's)",
    )
    machine.add_argument(
        "--vae-dtype",
        type=cli.one_of(list(pipeline.DTYPES), "dtype", pipeline.DTYPE_ALIASES),
        metavar="NAME",
        help="the VAE's dtype (default: --dtype, except float32 for SDXL in float16: the SDXL VAE "
        "overflows in float16; float16 suits only the fp16-fix VAE)",
    )
    machine.add_argument("--device", help=f"torch device{device_help} (default: cuda if available, else cpu)")
    machine.add_argument(
        "--dtype",
        type=cli.one_of(list(pipeline.DTYPES), "dtype", pipeline.DTYPE_ALIASES),
        metavar="NAME",
        help=f"model dtype: {', '.join(pipeline.DTYPES)}, or {', '.join(pipeline.DTYPE_ALIASES)} (default: "
        "bfloat16 on CUDA, float16 on other GPUs, float32 on CPU)",
    )
    machine.add_argument(
        "--batch-size",
        type=cli.positive_int,
        metavar="N",
        help="images per U-Net batch, the last one padded with copies; an image is bitwise the same for "
        "the same batch size (default: 1)",
    )
    machine.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the U-Net and VAE decoder; on CUDA the step loop then also runs as one CUDA "
        "graph (default: no)",
    )
    machine.add_argument(
        "--allow-large",
        action="store_true",
        help=f"lift the limits of {pipeline.MAX_SIDE} px per side, {pipeline.MAX_STEPS} steps, "
        f"{pipeline.MAX_BATCH} images per batch and {pipeline.MAX_IMAGES} per run (from flags, plan files "
        "and replayed PNGs alike)",
    )
    return machine


def add_image_flags(parser: argparse.ArgumentParser, *, quantize: bool = True) -> argparse._ArgumentGroup:
    """The images' flags; `quantize` False leaves out --quantize, for a command that keeps float pixels."""
    image = parser.add_argument_group("the images")
    image.add_argument(
        "--negative-prompt",
        type=cli.text,
        metavar="TEXT",
        help="the unconditional prompt of guidance (default: '')",
    )
    image.add_argument(
        "--empty-negative",
        type=cli.one_of(pipeline.EMPTY_NEGATIVE, "choice"),
        metavar="encode|zeros",
        help="an empty negative prompt as the encoded '' or as zero embeddings (default: encode for "
        "SD 1.x; zeros for SDXL, as the paper's code and diffusers' force_zeros_for_empty_prompt)",
    )
    sizes = ", ".join(f"{f.size} for {f.label}" for f in pipeline.FAMILIES.values())
    for side in ("height", "width"):
        image.add_argument(
            f"--{side}", type=multiple_of_8, metavar="PX", help=f"pixels, a multiple of 8 (default: {sizes})"
        )
    for flag, what, default in (
        ("--original-size", "H,W: the original image size", "1024,1024"),
        ("--crop-top-left", "TOP,LEFT: the crop's top-left corner", "0,0"),
        ("--target-size", "H,W: the target size", "1024,1024"),
    ):
        image.add_argument(
            flag,
            type=pair,
            metavar=what.split(":")[0],
            help=f"SDXL's size conditioning, {what.split(': ')[1]} (default: {default}, as the paper's code)",
        )
    if quantize:
        image.add_argument(
            "--quantize",
            type=cli.one_of(list(pipeline.QUANTIZATIONS), "quantization"),
            metavar="round|truncate",
            help="pixels from [-1, 1]: round like diffusers, or truncate like the authors' code, which "
            "their FIDs used (default: round)",
        )
    return image


def add_init_image_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    init = parser.add_argument_group("image to image (SDEdit)")
    init.add_argument(
        "--init-image",
        metavar="IMAGE",
        help="start every image from this one (its size is the default size), noised to the step "
        "--strength selects",
    )
    init.add_argument(
        "--strength",
        type=strength,
        metavar="S",
        help="how much of the plan runs, in (0, 1]; 1 is text to image (needed with --init-image)",
    )
    init.add_argument(
        "--strength-cut",
        type=cli.one_of(pipeline.STRENGTH_CUTS, "strength cut"),
        metavar="|".join(pipeline.STRENGTH_CUTS),
        help="steps: keep the last floor(N S) of the N steps (diffusers' strength); time: keep the steps "
        "that start below DDPM time 1000 S (diffusers' denoising_start = 1 - S) (default: steps)",
    )
    return init


def size_conditioning(
    args: argparse.Namespace, stored: pipeline.SizeConditioning | None
) -> pipeline.SizeConditioning:
    """SDXL's size conditioning: the flags given, else `stored` (a replayed image's), else the paper's."""
    base = stored or pipeline.SizeConditioning()
    return pipeline.SizeConditioning(
        args.original_size or base.original, args.crop_top_left or base.crop, args.target_size or base.target
    )


def given_size_flags(args: argparse.Namespace) -> list[str]:
    """The size-conditioning flags given, as their attribute names."""
    return [flag for flag in ("original_size", "crop_top_left", "target_size") if getattr(args, flag)]


T = TypeVar("T")


def run_request(
    args: argparse.Namespace, device: object, recipe: pipeline.Recipe | None = None
) -> pipeline.Request:
    """The run the model and image flags ask for (a flag not given: the default); `device` as chosen
    (pipeline/sharding.py under torchrun), `recipe` the plan's (default the family's preset)."""
    return pipeline.Request(
        weights=args.weights or pipeline.DEFAULT_WEIGHTS,
        vae=args.vae,
        device=device,
        dtype=args.dtype,
        vae_dtype=args.vae_dtype,
        height=args.height,
        width=args.width,
        size_conditioning=size_conditioning(args, None) if given_size_flags(args) else None,
        negative_prompt=args.negative_prompt or "",
        empty_negative=args.empty_negative,
        quantization=getattr(args, "quantize", None) or "round",
        compile=bool(args.compile),
        batch=args.batch_size or 1,
        recipe=recipe or pipeline.Recipe(),
        allow_large=args.allow_large,
        loras=tuple(args.lora or ()),
        unet=args.unet,
    )


def prepared(args: argparse.Namespace, step: Callable[[pipeline.Request], T], request: pipeline.Request) -> T:
    """`step(request)` (pipeline.preview_plan or pipeline.prepare_run), its refusal of size conditioning
    named by the flag that asked for it."""
    try:
        return step(request)
    except pipeline.SizeConditioningRefused as err:
        given = given_size_flags(args)
        if not given:
            raise
        flag = given[0].replace("_", "-")
        raise ValueError(
            f"--{flag} is SDXL's size conditioning; {err.family.label} models take none"
        ) from None
