"""The flags every generating command shares (run_sample.py, python -m evaluation.generate), defined
once: the plan and its overrides (every hyperparameter of the paper), the model and machine, the
images (size, SDXL's size conditioning, the empty negative prompt, the pixels' quantisation), and
image to image (run_sample.py only). Flags default to None, meaning "not given": a command fills in
its own defaults (or a replayed image's settings) and says which in --help.
"""

from __future__ import annotations

import argparse
from typing import Any

import cli
import pipeline
from schedule import DISCRETIZATIONS
from schedule.discretizations import SPACINGS
from solvers import SOLVERS, preset_names
from solvers.plan import FINAL_POLICIES
from weights.hub import SD15_FILE, SHORT_NAMES

# Discretization knobs with a flag: name -> (help, argparse type).
KNOBS = {
    "stop": (
        "the paper's stop of eq. (19): sigma_stop is point N + 1 of an (N + stop + 1)-point Karras grid",
        cli.nonnegative_int,
    ),
    "p1": ("the paper's time exponent of eq. (18) (its recipe: 1.2)", cli.positive_float),
    "p2": (
        "the paper's Karras exponent of sigma_stop, eq. (19) (its recipe: 5 for 5-6 steps, 7 for 8)",
        cli.positive_float,
    ),
    "rho": ("the exponent of karras (default 7) and of polyexponential (default 1)", cli.positive_float),
    "alpha": ("the beta discretization's alpha of Beta(alpha, beta) (default 0.6)", cli.positive_float),
    "beta": ("the beta discretization's beta (default 0.6)", cli.positive_float),
    "coeff": ("the GITS row's DP coefficient, 0.8 to 1.5 by 0.05 (default 1.2)", cli.positive_float),
    "threshold": ("linear_quadratic: 1 - sigma/sigma_max where its linear part ends (default 0.025)",
                  cli.positive_float),
    "linear": ("linear_quadratic: steps in its linear part (default N // 2)", cli.positive_int),
    "spacing": (f"the diffusers discretization's timestep_spacing: {', '.join(SPACINGS)} (default linspace)",
                cli.one_of(SPACINGS, "spacing")),
    "offset": ("the diffusers discretization's steps_offset (default 1, as in SD's configs)",
               cli.nonnegative_int),
}  # fmt: skip


def freeu_values(text: str) -> tuple[float, ...]:
    """--freeu B1,B2,S1,S2: four numbers >= 0."""
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"give four numbers B1,B2,S1,S2 such as 1.1,1.2,0.9,0.2, got {text!r}"
        )
    return tuple(cli.nonnegative_float(part) for part in parts)


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
        raise argparse.ArgumentTypeError(str(err)) from None


def multiple_of_8(text: str) -> int:
    value = cli.positive_int(text)
    problem = pipeline.size_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def add_plan_flags(parser: argparse.ArgumentParser, *, default_note: str) -> argparse._ArgumentGroup:
    """--steps, --preset, --plan, then the overrides; returns the group (a command may add to it)."""
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
        type=cli.one_of(lambda: list(SOLVERS), "solver"),
        metavar="NAME",
        help=f"this solver on every step: {', '.join(SOLVERS)} (default: the plan's)",
    )
    how.add_argument(
        "--discretization",
        "--schedule",
        type=cli.one_of(list(DISCRETIZATIONS), "discretization"),
        metavar="KIND",
        help=f"place the plan's steps anew: {', '.join(DISCRETIZATIONS)} (default: the plan's sigmas)",
    )
    for knob, (text, kind) in KNOBS.items():
        how.add_argument(
            f"--{knob}", type=kind, metavar="X", help=f"{text}; a knob of the plan's discretization"
        )
    how.add_argument(
        "--guidance",
        type=cli.nonnegative_float,
        metavar="W",
        help="classifier-free guidance scale w on every step; the paper's tables use 5.5 and 7.5 "
        "(default: the plan's, 7.5 for presets)",
    )
    how.add_argument(
        "--freeu",
        nargs="?",
        const=True,
        type=freeu_values,
        metavar="B1,B2,S1,S2",
        help="FreeU with these factors (alone: the paper's 1.1,1.1,0.9,0.2) on every step or on "
        "--freeu-steps (default: the plan's)",
    )
    how.add_argument(
        "--no-freeu", dest="freeu", action="store_const", const=False, help="FreeU off on every step"
    )
    how.add_argument(
        "--freeu-version", type=int, choices=(1, 2), help="FreeU's backbone formula: 1 (the paper's) or 2"
    )
    how.add_argument(
        "--freeu-steps",
        metavar="WINDOW",
        help="FreeU only on these steps, 1-based, e.g. 2-4,6 (default: every step, or the plan's window)",
    )
    how.add_argument(
        "--final",
        type=cli.one_of(FINAL_POLICIES, "final policy"),
        metavar="keep|denoise",
        help="decode the last latent as is (keep, as the paper) or denoise it once more "
        "(default: the plan's)",
    )
    return how


def plan_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `pipeline.build_plan` that the plan flags give."""
    return {
        "solver": args.solver,
        "discretization": args.discretization,
        "knobs": {knob: getattr(args, knob) for knob in KNOBS if getattr(args, knob) is not None},
        "guidance": args.guidance,
        "freeu": args.freeu,
        "freeu_version": args.freeu_version,
        "freeu_steps": args.freeu_steps,
        "final": args.final,
    }


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
        "--vae-dtype",
        type=cli.one_of(list(pipeline.DTYPES), "dtype"),
        metavar="NAME",
        help="the VAE's dtype (default: --dtype, except float32 for SDXL in float16: the SDXL VAE "
        "overflows in float16; float16 suits only the fp16-fix VAE)",
    )
    machine.add_argument("--device", help=f"torch device{device_help} (default: cuda if available, else cpu)")
    machine.add_argument(
        "--dtype",
        type=cli.one_of(list(pipeline.DTYPES), "dtype"),
        metavar="NAME",
        help=f"model dtype: {', '.join(pipeline.DTYPES)} (default: bfloat16 on CUDA, float16 on other "
        "GPUs, float32 on CPU)",
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
        pipeline.LARGE_FLAG,
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


def refuse_size_flags(args: argparse.Namespace, family: pipeline.Family) -> None:
    """Size-conditioning flags with a model that takes none."""
    given = given_size_flags(args)
    if given and not family.size_conditioning:
        raise ValueError(
            f"--{given[0].replace('_', '-')} is SDXL's size conditioning; {family.label} models take none"
        )
