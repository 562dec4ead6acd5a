"""Text to image (and image to image) with the paper's few-step samplers, every run replayable from
its PNGs.

    python run_sample.py --steps 5 --prompt "a photo of a cat"
    python run_sample.py --weights sdxl --vae sdxl-vae-fp16-fix --steps 8 --prompt "a photo of a cat"

A command line over `pipeline/`: settle every setting (flags, else a replayed PNG's, else the
defaults) and refuse bad ones before the weights load, then generate batch by batch and write
each image with its provenance.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from tqdm import tqdm

import cli
import pipeline
import pipeline.sweep
from cli.generation import (
    add_image_flags,
    add_init_image_flags,
    add_model_flags,
    add_plan_flags,
    given_size_flags,
    knob_type,
    plan_overrides,
    prepared,
    size_conditioning,
)
from pipeline import Settings
from pipeline.models import on_hub
from pipeline.sweep import Grid
from solvers import Plan
from solvers.export import listing
from solvers.presets import preset_steps

PROG = "run_sample.py"
T = TypeVar("T")
NOT_KNOBS = ("replay",)  # a PNG to start from, not a setting: a sweep replays one itself


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog=PROG,
        description="Text to image with Stable Diffusion 1.5 or SDXL and the paper's training-free few-step "
        "samplers. Each PNG stores its prompt, seed, settings and full sampling plan; --replay re-runs it.",
    )
    what = p.add_argument_group("what to draw")
    prompts = what.add_mutually_exclusive_group()
    prompts.add_argument(
        "--prompt",
        action="append",
        type=cli.text,
        metavar="TEXT",
        help="a prompt; repeat the flag for several",
    )
    prompts.add_argument(
        "--prompts", metavar="FILE", help="a text file, one prompt per line (blank lines skipped)"
    )
    what.add_argument(
        "--seed",
        type=cli.seed,
        metavar="S",
        help="seed of the first image; image k of the run uses seed + k (default: random, stored in the PNG)",
    )
    what.add_argument(
        "--num-images", type=cli.positive_int, default=1, metavar="N", help="images per prompt (default: 1)"
    )
    add_image_flags(p)
    add_init_image_flags(p)
    how = add_plan_flags(
        p, default_note=" for SD 1.x, 6 for SDXL, unless --preset, --plan or --replay gives the plan"
    )
    how.add_argument(
        "--print-plan",
        action="store_true",
        help="print the resolved plan as JSON and as the sigma lists ComfyUI, stable-diffusion.cpp and "
        "diffusers take, then exit without loading weights (placed on SD's standard noise table)",
    )
    how.add_argument(
        "--replay",
        metavar="IMAGE.png",
        help="re-run the plan, prompt, seed, size, weights, VAE, dtypes, init image and compile flag "
        "stored in a PNG written by this command; flags given as well override them",
    )
    machine = add_model_flags(p)
    knobs = {
        action.option_strings[0].removeprefix("--"): action.type or str
        for group in (how, machine)
        for action in group._group_actions
        if action.option_strings and action.nargs != 0 and action.dest not in NOT_KNOBS
    }
    what.add_argument(
        "--sweep",
        action="append",
        type=knob_type(partial(pipeline.sweep.parse_axis, knobs=knobs)),
        metavar="KNOB=V1,V2,...",
        help="run every value of KNOB with the same prompts and seeds; twice for a grid of two knobs (the "
        "first over the columns, the second down the rows); besides each image, writes one labelled grid "
        "PNG, which --replay reruns whole. A knob is any flag of 'how to sample' or 'model and machine' "
        "that takes a value, without its dashes (steps, preset, solver, discretization, guidance, "
        "cfg-rescale, stop, p2, freeu, weights, vae, dtype, ...); values split at commas, or at "
        "semicolons where a value holds commas (freeu=1.1,1.1,0.9,0.2;1.3,1.4,0.9,0.2). Plan knobs load "
        f"the model once; a knob of the model (weights, vae, dtype, ...) loads it once per value. At "
        f"most {pipeline.MAX_SWEEP_IMAGES} images without --allow-large",
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
    cli.add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line message for any refusal)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return cli.run(PROG, partial(run, parser=parser), args, errors=pipeline.USER_ERRORS)


def _read_prompts(args: argparse.Namespace, replayed: Settings | None) -> list[str]:
    if args.prompts:
        return pipeline.read_prompts(args.prompts)
    if args.prompt:
        return args.prompt
    if replayed is not None:
        return [replayed.prompt]
    raise ValueError('no prompt: pass --prompt "TEXT" (repeatable) or --prompts FILE')


@dataclass(frozen=True)
class Order:
    """One run's settled settings: the flags parsed, the request, its previewed plan, and the jobs with
    their batching; `replayed` the image's settings a replay started from (read from `source`)."""

    args: argparse.Namespace
    request: pipeline.Request
    plan: Plan
    jobs: list[pipeline.Job]
    batch_size: int
    offset: int
    replayed: Settings | None
    source: str | None


class Asked(NamedTuple):
    """One image of a sweep as asked for: its flags and the image it replays (from `source`); `where`
    names it in a refusal (None: the source does)."""

    where: str | None
    args: argparse.Namespace
    replayed: Settings | None
    replayed_plan: Plan | None
    source: str | None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The command: settle and check every setting, then load the weights, then generate batch by batch
    (a sweep: every combination settled and checked first, `_sweep`)."""
    grid = pipeline.sweep.read_grid(args.replay) if args.replay else None
    if args.sweep or grid is not None:
        _sweep(args, parser, grid)
        return
    replayed, replayed_plan = pipeline.read_replay(args.replay) if args.replay else (None, None)
    request, plan = _plan_request(args, replayed, replayed_plan, args.replay)
    if args.print_plan:
        print(listing(plan))
        return
    order = _order(args, request, plan, replayed, args.replay)
    jobs, batch_size = order.jobs, order.batch_size
    out = pipeline.prepare_output(args.out)

    started = time.perf_counter()
    assembled = prepared(args, pipeline.prepare_run, replace(order.request, batch=batch_size))
    pipeline.check_free_space(out, assembled.settings.height, assembled.settings.width, len(jobs))
    loaded = time.perf_counter() - started
    _notes(order, assembled)

    started = time.perf_counter()
    batches = pipeline.batches(jobs, batch_size, order.offset)
    written: list[Path] = []
    with cli.reporting_stops(out, lambda: _written(written, jobs, out), lambda: _resume(jobs, len(written))):
        trajectories = _generate_all(assembled, batches, out, args.trajectory, written)
    elapsed = time.perf_counter() - started
    extra = f" and {cli.count(trajectories, 'trajectory', 'trajectories')}" if trajectories else ""
    names = f" ({cli.span([p.name for p in written])})" if written else ""
    print(
        f"wrote {cli.count(len(written), 'image')}{names}{extra} to {out}/ "
        f"in {elapsed:.1f} s ({elapsed / len(jobs):.1f} s per image; loading the weights took {loaded:.1f} s)"
    )


def _pick(replayed: Settings | None, flag, name: str, default):
    """A flag given wins, then the replayed image's setting, then the default."""
    if flag is not None:
        return flag
    return getattr(replayed, name) if replayed is not None else default


def _plan_request(
    args: argparse.Namespace, replayed: Settings | None, replayed_plan: Plan | None, source: str | None
) -> tuple[pipeline.Request, Plan]:
    """The run the flags (else the replayed image's settings, else the defaults) ask for, and its plan
    previewed: refused here, before any work."""
    pick = partial(_pick, replayed)
    bounds = partial(pipeline.check_bounds, allow_large=args.allow_large)
    bounds(steps=args.steps, batch=args.batch_size)  # before a plan of that many steps is built
    bounds(steps=preset_steps(args.preset), source=f"--preset {args.preset}: ")
    fresh = args.steps is not None or args.preset is not None or args.plan is not None
    base = pipeline.read_plan_file(args.plan) if args.plan else None if fresh else replayed_plan
    if base is not None:
        bounds(steps=base.steps, source=f"the plan of {args.plan or source}: ")
    height, width = pick(args.height, "height", None), pick(args.width, "width", None)
    if replayed is not None and (args.height is None or args.width is None):
        bounds(height=height, width=width, source=f"{source}: ")
    stored_size = None if replayed is None else replayed.size()
    request = pipeline.Request(
        weights=pick(args.weights, "weights", pipeline.DEFAULT_WEIGHTS),
        vae=pick(args.vae, "vae", None),
        device=pipeline.parse_device(args.device),
        dtype=pick(args.dtype, "dtype", None),
        vae_dtype=pick(args.vae_dtype, "vae_dtype", None),
        height=height,
        width=width,
        size_conditioning=size_conditioning(args, stored_size) if given_size_flags(args) else stored_size,
        negative_prompt=pick(args.negative_prompt, "negative_prompt", ""),
        empty_negative=pick(args.empty_negative, "empty_negative", None),
        quantization=pick(args.quantize, "quantization", "round"),
        compile=pick(args.compile, "compile", False),
        recipe=pipeline.Recipe(args.steps, args.preset, base, plan_overrides(args)),
        allow_large=args.allow_large,
        loras=tuple(args.lora or [(r["lora"], r["strength"]) for r in pick(None, "loras", None) or ()]),
        unet=pick(args.unet, "unet", None),
    )
    return request, prepared(args, pipeline.preview_plan, request)  # refuse a bad plan before any work


def _order(
    args: argparse.Namespace,
    request: pipeline.Request,
    plan: Plan,
    replayed: Settings | None,
    source: str | None,
) -> Order:
    """The images to make (prompts x --num-images, consecutive seeds), the init image and the batching."""
    pick = partial(_pick, replayed)
    bounds = partial(pipeline.check_bounds, allow_large=args.allow_large)
    prompts = _read_prompts(args, replayed)
    init_spec = pick(args.init_image, "init_image", None)
    strength = pick(args.strength, "strength", None)
    if (init_spec is None) != (strength is None):
        raise ValueError("--init-image and --strength go together: give both, or neither for text to image")
    if init_spec is not None:
        cut = pick(args.strength_cut, "strength_cut", "steps")
        init = pipeline.InitImage(pipeline.read_image(init_spec), strength, cut, source=init_spec)
        request = replace(request, init=init)
    first_seed = pick(args.seed, "seed", secrets.randbelow(2**32))
    bounds(images=len(prompts) * args.num_images)  # before the list of jobs is built
    jobs = pipeline.jobs_for(prompts, args.num_images, first_seed)
    batch_size, offset = min(args.batch_size or 1, len(jobs)), 0
    if replayed is not None and args.batch_size is None and len(jobs) == 1:
        # rebuild the batch the image was made in
        batch_size, offset = replayed.batch, replayed.batch_index
        bounds(batch=batch_size, source=f"the settings of {source}: ")
    return Order(args, request, plan, jobs, batch_size, offset, replayed, source)


def _notes(order: Order, assembled: pipeline.Run) -> None:
    if order.replayed is not None and (
        differences := pipeline.replay_differences(order.replayed, assembled.settings)
    ):
        print(f"{PROG}: note: {order.source} was {differences}", file=sys.stderr)
    if assembled.warning:
        print(f"{PROG}: {assembled.warning}", file=sys.stderr)
    if elsewhere := pipeline.searched_on_another_model(assembled.plan, assembled.settings.model):
        print(f"{PROG}: note: {elsewhere}", file=sys.stderr)


def _sweep(args: argparse.Namespace, parser: argparse.ArgumentParser, grid: Grid | None) -> None:
    """Every combination of the --sweep knobs (or every image of a replayed grid) settled and its plan
    refused before the weights load; then the model loaded once per distinct model (once where only
    plan knobs vary), each combination's plan built on its table, the images written, and the grid."""
    if grid is not None and args.sweep:
        raise ValueError(f"--replay {args.replay} is a sweep grid, which reruns its own sweep; drop --sweep")
    asked: list[list[Asked]] = []  # per cell (row by row), each image's
    if grid is None:
        axes = tuple(args.sweep)
        pipeline.sweep.check_axes(axes)
        combinations = pipeline.sweep.combinations(axes)
        what = pipeline.sweep.describe(axes)
        pipeline.sweep.check_count(len(combinations), what, args.allow_large)
        replayed, replayed_plan = pipeline.read_replay(args.replay) if args.replay else (None, None)
        for values in combinations:
            flags = [f"--{knob}={value}" for knob, value in values.items()]
            where = f"--sweep {' '.join(flag.removeprefix('--') for flag in flags)}"
            alone = parser.parse_args(flags)  # each knob's flag read as on the command line
            dests = [parser._option_string_actions[f"--{knob}"].dest for knob in values]
            # the knobs' values replace the flags given (an appending flag's whole list too)
            given = argparse.Namespace(**{**vars(args), **{dest: getattr(alone, dest) for dest in dests}})
            asked.append([Asked(where, given, replayed, replayed_plan, args.replay)])
    else:
        axes, what = grid.axes, f"of {args.replay}"
        for r, cell in enumerate(grid.cells):
            sources = [f"{args.replay} (image {r + 1}.{k + 1})" for k in range(len(cell))]
            asked.append(
                [Asked(None, args, *image, source) for image, source in zip(cell, sources, strict=True)]
            )
    planned = [
        [
            (
                each,
                _naming(each.where, _plan_request, each.args, each.replayed, each.replayed_plan, each.source),
            )
            for each in cell
        ]
        for cell in asked
    ]
    if args.print_plan:
        for _, (_, plan) in (image for cell in planned for image in cell):
            print(f"# {plan.name}\n{listing(plan)}")
        return
    cells = [
        [
            _naming(each.where, _order, each.args, *previewed, each.replayed, each.source)
            for each, previewed in cell
        ]
        for cell in planned
    ]
    orders = [order for cell in cells for order in cell]
    pipeline.sweep.check_count(sum(len(order.jobs) for order in orders), what, args.allow_large)
    groups = [[orders[k] for k in group] for group in pipeline.sweep.by_model([o.request for o in orders])]
    for request in (group[0].request for group in groups):
        for spec in (request.weights, request.vae):
            if spec is not None and not on_hub(spec):
                pipeline.resolve_weights(spec)  # a missing file refused before the first model loads
    out = pipeline.prepare_output(args.out)
    started = time.perf_counter()
    written = {id(order): [] for order in orders}
    total = sum(len(order.jobs) for order in orders)
    with cli.reporting_stops(
        out,
        lambda: f"wrote {sum(map(len, written.values()))} of the sweep's {total} images to {out}/",
        lambda: "rerun the sweep to make them all",
    ):
        for group in groups:
            first = group[0]
            assembled = prepared(
                first.args, pipeline.prepare_run, replace(first.request, batch=first.batch_size)
            )
            settings = assembled.settings
            pipeline.check_free_space(out, settings.height, settings.width, sum(len(o.jobs) for o in group))
            # every plan of this model built on its own table before an image is made
            runs = [assembled.replan(order.request.recipe, order.batch_size) for order in group]
            for order, each in zip(group, runs, strict=True):
                _notes(order, each)
                batches = pipeline.batches(order.jobs, order.batch_size, order.offset)
                _generate_all(each, batches, out, order.args.trajectory, written[id(order)])
        shown = [[path for order in cell for path in written[id(order)]] for cell in cells]
        image, metadata = pipeline.sweep.grid(axes, [pipeline.sweep.read_cell(paths) for paths in shown])
        stem = f"{pipeline.image_stem(orders[0].jobs[0].prompt, orders[0].jobs[0].seed)}-sweep"
        saved = pipeline.save_png(image, out, stem, metadata)
    elapsed = time.perf_counter() - started
    print(f"wrote {cli.count(total, 'image')} and the grid {saved.name} to {out}/ in {elapsed:.1f} s")


def _naming(where: str | None, step: Callable[..., T], *args: Any) -> T:
    """`step(*args)`, its refusal named by `where` (the combination of a sweep)."""
    if where is None:
        return step(*args)
    try:
        return step(*args)
    except pipeline.USER_ERRORS as err:
        raise ValueError(f"{where}: {cli.one_line(err)}") from None


def _generate_all(
    assembled: pipeline.Run,
    batches: list[pipeline.Batch[pipeline.Job]],
    out: Path,
    trajectory: bool,
    written: list[Path],
) -> int:
    """Generate and save every batch's own images (and their trajectories) under a progress bar per
    batch, adding each image's path to `written` as it lands. Returns the trajectories saved."""
    saved_trajectories = 0
    total = pipeline.img2img.cut(assembled.plan, assembled.init, assembled.model.schedule).steps
    # The bar moves per step, but per batch where the step loop replays as a CUDA graph (no host call per
    # step there), unless --trajectory needs every step.
    per_step = trajectory or not pipeline.replays_graph(assembled.settings)
    for b, batch in enumerate(batches):
        with tqdm(total=total, desc=f"batch {b + 1}/{len(batches)}", disable=None, file=sys.stderr) as bar:
            moved = (lambda info, bar=bar: bar.update(1)) if per_step else None
            saved_trajectories += pipeline.write_batch(
                assembled, batch, out, written, trajectory=trajectory, callback=moved
            )
            bar.update(total - bar.n)
    return saved_trajectories


def _written(written: list[Path], jobs: list[pipeline.Job], out: Path) -> str:
    last = f", the last {written[-1].name}" if written else ""
    return f"wrote {len(written)} of {len(jobs)} images to {out}/ (each one complete{last})"


def _resume(jobs: list[pipeline.Job], done: int) -> str:
    """How to make the images a run did not get to: they are jobs[done:], in order."""
    left = jobs[done:]
    if not left:
        return "nothing is left to make"
    if len({job.prompt for job in left}) == 1:
        prompt = "" if len({job.prompt for job in jobs}) == 1 else f" --prompt {left[0].prompt!r}"
        flags = f"{prompt} --seed {left[0].seed} --num-images {len(left)}"
        return f"to make the other {len(left)}, rerun with{flags}"
    return (
        f"to make the other {len(left)}, rerun from prompt {left[0].prompt!r} with --seed {left[0].seed} "
        "(image k of a run uses seed + k)"
    )


if __name__ == "__main__":
    sys.exit(main())
