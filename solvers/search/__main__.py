"""Search the best few-step plan for a model, a solver (or a rule per step) and an NFE budget; write it
as a plan file.

    python -m solvers.search --denoiser solvers.analytic:GaussianMixture.default --shape 16 \\
        --steps 5 --solver dpmpp_2m|auto|unipc_bh1_3,dpmpp_2m [--samples K] [--cost local|global] \\
        [--out plan.json]
    python -m solvers.search --weights v1-5-pruned-emaonly.safetensors --prompts prompts.txt \\
        --guidance 7.5 --steps 5 --solver dpmpp_2m --out plan.json
    torchrun --nproc_per_node=8 -m solvers.search --weights ...    # the teacher shards over the ranks

--denoiser names a callable that, called with no arguments, returns a denoiser D(x, sigma) -> x0 for x
of shape [K, *shape] (it imports and runs the code it names, by design, as `python -c` does: name only
code you trust); it is tried once on a two-sample batch before anything else runs. Its starting latents
are standard normal noise at sigma_max of SD's noise table from --seed. --weights searches a real SD
model (pipeline/search.py). Before any work the flags are bounded (pipeline/limits.py; --allow-large
lifts the bounds) and the teacher's memory is checked. The command prints the cost in denoiser calls
before it starts and a progress bar per stage (teacher, search, scoring) while it runs, then, first,
the searched plan's held-out RMSE next to the best fixed plan of the whole menu (every deterministic
solver on every discretization at the same NFE, the paper's, DMN), and the RMSE after each stage next
to the presets of the searched rules and the best fixed plan of each other solver. The plan (a Plan
whose discretization records the search and the model searched on) goes to --out, for run_sample.py
--plan and evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

import cli
import pipeline
import safeio
from cli.generation import add_image_flags, add_model_flags, prepared, run_request
from pipeline.limits import LATENT_FACTOR, check_memory, check_search, teacher_bytes
from schedule import DiscreteSchedule
from solvers.plan import Plan
from solvers.presets import DEFAULT_GUIDANCE, PAPER_FREEU
from solvers.search import (
    AUTO,
    COSTS,
    EXACT,
    Counted,
    Problem,
    Result,
    Row,
    Subject,
    Teacher,
    baselines,
    best_fixed,
    candidate_grid,
    check_budget,
    compare,
    default_stages,
    estimate,
    has_exact_solution,
    rules,
    search,
    solve_teacher,
    whole_menu,
)
from solvers.search.record import Searched
from solvers.table import SOLVERS, display_names

PROG = "python -m solvers.search"
DEFAULT_TEACHER = "dpmpp_2m"  # the fine solve when the model has no exact one: DPM++2M, 1 call a step
COMPARED = ("menu", "solver")  # --compare: the whole menu's fixed plans, or the searched rules' only
SAMPLES = {"denoiser": (1024, 1024), "weights": (16, 16)}  # (search, held-out) samples by default
PLAN_BOUND = 1 << 20  # bytes a plan file may take: 1000 steps of sigmas and options are ~100 KB
PROBE_ROWS = 2  # the samples --denoiser is tried on before the search


def _text(shape_: tuple[int, ...]) -> str:
    return ",".join(map(str, shape_))


def shape(text: str) -> tuple[int, ...]:
    """--shape 16 or 4,64,64: the shape of one sample."""
    return tuple(cli.positive_int(part) for part in text.split(","))


def stage_list(text: str) -> tuple[str, ...]:
    try:
        return Searched.check_stages(tuple(part.strip() for part in text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(cli.one_line(err)) from None


def solver_spec(text: str) -> str:
    """--solver NAME (or A1111's name of it), a list A,B,... of them, or auto; which of them a search
    takes (no stochastic rule, none twice) `rules` checks when the run starts."""
    parts = [part.strip() for part in text.split(",")]
    valid = (lambda: [AUTO, *SOLVERS]) if len(parts) == 1 else (lambda: list(SOLVERS))
    return ",".join(cli.one_of(valid, "solver", display_names)(part) for part in parts)


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    what = p.add_argument_group("what to search on: an analytic denoiser, or real weights (--weights)")
    what.add_argument(
        "--denoiser",
        metavar="MODULE:CALLABLE",
        help="a callable returning D(x, sigma) -> x0; it imports and runs that code, as python -c does",
    )
    what.add_argument(
        "--shape", type=shape, metavar="D[,D...]", help="the shape of one sample, with --denoiser"
    )
    what.add_argument(
        "--prompts", metavar="FILE", help="prompts, one per line, with --weights (sample k: prompt k)"
    )
    how = p.add_argument_group("the search")
    how.add_argument(
        "--steps",
        "--nfe",
        dest="nfe",
        type=cli.positive_int,
        required=True,
        metavar="N",
        help="the NFE budget: the plan makes exactly N denoiser calls (N steps with a one-call solver)",
    )
    how.add_argument(
        "--solver",
        default="dpmpp_2m",
        type=solver_spec,
        metavar="NAME|auto|A,B,...",
        help=f"the solver on every step: {', '.join(SOLVERS)} (default: dpmpp_2m); a list of them or "
        "auto (every deterministic one-call one): a rule chosen per step",
    )
    how.add_argument(
        "--samples",
        type=cli.positive_int,
        metavar="K",
        help=f"search samples (default: {SAMPLES['denoiser'][0]}, with --weights {SAMPLES['weights'][0]})",
    )
    how.add_argument(
        "--held-out",
        type=cli.positive_int,
        metavar="H",
        help=f"samples the plans are scored on (default: {SAMPLES['denoiser'][1]}, with --weights "
        f"{SAMPLES['weights'][1]})",
    )
    how.add_argument(
        "--cost",
        default="global",
        type=cli.one_of(COSTS, "cost model"),
        metavar="local|global",
        help="the DP's cost: one step from the teacher (local, GITS) or from the plan's own state "
        "(global, OSS) (default: global)",
    )
    how.add_argument(
        "--grid", type=cli.positive_int, default=40, metavar="G", help="candidate noise levels (default: 40)"
    )
    how.add_argument(
        "--stages",
        type=stage_list,
        metavar="dp[,grid][,polish][,shift]",
        help="the DP, then refinements on the grid and off it, then each step's evaluation level "
        "(eval_shift) (default: dp,grid,polish for one solver, all four for a list or auto)",
    )
    how.add_argument(
        "--compare",
        default="menu",
        type=cli.one_of(COMPARED, "comparison"),
        metavar="menu|solver",
        help="what the plan is held against on the held-out samples: every fixed plan of the whole menu "
        "(every deterministic solver on every discretization at the NFE, and DMN: about 200 plans), or "
        "only those of the searched rules (default: menu)",
    )
    how.add_argument("--seed", type=cli.seed, default=0, help="seed of the samples (default: 0)")
    how.add_argument(
        "--teacher",
        type=cli.one_of(lambda: [EXACT, *SOLVERS], "teacher"),
        metavar="exact|SOLVER",
        help=f"the model's exact solution, or a fine solve with this solver (default: exact where the "
        f"model has one, else {DEFAULT_TEACHER})",
    )
    how.add_argument(
        "--teacher-substeps",
        type=cli.positive_int,
        default=4,
        metavar="M",
        help="steps of the teacher's solver per candidate interval (default: 4)",
    )
    how.add_argument(
        "--guidance",
        type=cli.nonnegative_float,
        default=DEFAULT_GUIDANCE,
        metavar="W",
        help=f"classifier-free guidance scale on every step (default: {DEFAULT_GUIDANCE:g})",
    )
    how.add_argument(
        "--freeu-bit",
        action="store_true",
        help="also search, per step, FreeU on (the paper's 1.1,1.1,0.9,0.2) or off",
    )
    how.add_argument(
        "--decoded", action="store_true", help="with --weights: measure final states after the VAE decode"
    )
    how.add_argument(
        "--cache",
        metavar="DIR",
        help="with --weights: the teacher cache (default: $XDG_CACHE_HOME/fewstep-sd/teachers)",
    )
    how.add_argument("--out", metavar="FILE.json", help="write the plan there (default: print its JSON)")
    add_image_flags(p, quantize=False)
    add_model_flags(p, device_help="; cuda means cuda:LOCAL_RANK under torchrun", weights_default=False)
    cli.add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(PROG, run, args, errors=(*pipeline.USER_ERRORS, ImportError))


def run(args: argparse.Namespace) -> None:
    mode = _mode(args)
    samples, held_out = (args.samples or SAMPLES[mode][0]), (args.held_out or SAMPLES[mode][1])
    _check_size(args, mode, samples, held_out)
    check_budget(args.grid, args.solver, args.nfe)
    out = _check_out(args.out)
    subject, shard = (
        _real(args, samples, held_out) if mode == "weights" else (_analytic(args, samples, held_out), None)
    )
    teacher = args.teacher or (EXACT if subject.exact else DEFAULT_TEACHER)
    substeps = 0 if teacher == EXACT else args.teacher_substeps
    grid = candidate_grid(subject.schedule, args.grid)
    options = {"guidance": args.guidance, "freeu": None}
    bit = ("freeu", PAPER_FREEU) if args.freeu_bit else None
    stages = args.stages or default_stages(args.solver)
    cost = estimate(
        grid, args.solver, args.nfe, cost=args.cost, stages=stages, bit=bool(bit),
        teacher=teacher, substeps=substeps,
    )  # fmt: skip
    against = (
        whole_menu(args.solver, args.nfe, subject.schedule, options)
        if args.compare == "menu"
        else [
            row for rule in rules(args.solver) for row in baselines(rule, args.nfe, subject.schedule, options)
        ]
    )
    scoring = len(stages) * args.nfe + sum(row.plan.nfe for row in against)
    teaching = (
        f"teacher: the exact solution ({len(grid) - 1} intervals, no denoiser calls)"
        if teacher == EXACT
        else f"teacher {cost.teacher} x {samples + held_out} samples ({teacher}, {substeps} per interval)"
    )
    print(
        f"{PROG}: {args.solver} at {args.nfe} NFE on {subject.name}: {args.cost} cost, {args.grid} "
        f"candidate levels + 0, stages {'+'.join(stages)}, {samples} search samples, {held_out} "
        f"held out\ncost in denoiser calls: {teaching}, search {cost.dp} (dp) + at most {cost.refine} "
        f"(refinement) x {samples}, scoring {scoring} x {held_out}"
    )
    clock = [time.perf_counter()]
    with torch.inference_mode():
        # each stage's bar counts denoiser calls (exact teacher: grid intervals) times their samples
        with _stage("teacher", (cost.teacher or len(grid) - 1) * (samples + held_out)) as bar:
            everyone = subject.teach(grid, options, teacher, substeps, bar.update)
        if everyone is None:
            print(f"{PROG}: rank {shard.rank} of {shard.world_size}: teachers done; rank 0 runs the search")
            return
        clock.append(time.perf_counter())
        with _stage(f"search ({'+'.join(stages)})", (cost.dp + cost.refine) * samples) as bar:
            result = search(
                subject.search, everyone.rows(slice(0, samples)), solver=args.solver, nfe=args.nfe,
                cost=args.cost, stages=stages, options=options, bit=bit, decode=subject.decode,
                seed=args.seed, model=subject.name, progress=bar.update,
            )  # fmt: skip
        clock.append(time.perf_counter())
        with _stage("scoring", scoring * held_out) as bar:
            held = Problem(
                Counted(subject.held_out, bar.update), everyone.rows(slice(samples, None)), args.solver,
                args.nfe, options, bit, subject.decode,
            )  # fmt: skip
            rows = compare(result, held, against)
        clock.append(time.perf_counter())
    _report(rows, result, args.solver if args.compare == "solver" else "", held_out, clock)
    if out is None:
        print(result.plan.to_json())
    else:
        _write(out, result.plan)
        print(f"wrote {out}; sample with it: python run_sample.py --plan {out} --prompt ...")


@contextlib.contextmanager
def _stage(name: str, total: int) -> Iterator[tqdm]:
    """A stage's progress bar on stderr (on a terminal; elsewhere one line on stdout, with the report,
    as it starts; a refusal stays one line on stderr) against `total`, shown at 100% when the stage
    ends: the refinement's total is a bound, reached only if no move is refused early, and cached
    teachers cost nothing."""
    with tqdm(total=total, desc=name, unit="sample", file=sys.stderr, disable=None) as bar:
        if bar.disable:
            print(f"{name} ...", flush=True)
        yield bar
        bar.total = bar.n
        bar.refresh()


def _check_size(args: argparse.Namespace, mode: str, samples: int, held_out: int) -> None:
    """The flags' bounds and the teacher's memory, before anything is allocated."""
    check_search(
        shape=args.shape or (), steps=args.nfe, samples=samples, held_out=held_out, grid=args.grid,
        substeps=args.teacher_substeps, allow_large=args.allow_large,
    )  # fmt: skip
    if mode == "denoiser":  # float64 samples of --shape
        shape, itemsize, lower = args.shape, 8, "--samples, --held-out, --grid or --shape"
    else:  # float32 latents, of the largest family's default size where --height/--width are not given
        sides = ((args.height or 1024) // LATENT_FACTOR, (args.width or 1024) // LATENT_FACTOR)
        shape, itemsize, lower = (4, *sides), 4, "--samples, --held-out, --grid, --height or --width"
    check_memory(teacher_bytes(shape, samples + held_out, args.grid, itemsize), lower)


def _report(rows: list[Row], result: Result, only: str, held_out: int, clock: list[float]) -> None:
    """The comparison, its first line the searched plan against the best fixed one of the whole menu
    (of the rules `only`, with --compare solver)."""
    searched, best = [row for row in rows if row.kind == "stage"][-1], best_fixed(rows)
    of = f"of {only}" if only else "of the whole menu"
    print(
        f"\nsearched: {searched.held_out:.5f} ({result.plan.name}); best fixed plan {of}: "
        f"{best.held_out:.5f} ({best.plan.name}), {searched.held_out / best.held_out - 1:+.1%}"
    )
    one_rule = len({rule for row in rows if row.kind == "preset" for rule in row.plan.solver}) == 1
    shown = [row for row in rows if row.kind == "stage"] + _fixed_shown(rows, one_rule)
    calls = iter(f"{stage.name} ({stage.calls} calls)" for stage in result.stages)
    print(
        f"\nRMSE to the teacher's x(0), on the search samples (what each stage lowered) and {held_out} others"
    )
    print(f"{'plan':<32}{'steps':>6}{'sigma_N':>9}{'search':>9}{'held-out':>10}{'vs best fixed':>15}")
    for row in shown:
        label = next(calls) if row.kind == "stage" else row.plan.name
        own = "" if row.search is None else f"{row.search:.5f}"
        print(
            f"{label:<32}{row.plan.steps:>6}{row.plan.sigmas[-1]:>9.4f}{own:>9}{row.held_out:>10.5f}"
            f"{row.held_out / best.held_out - 1:>+15.1%}"
        )
    teacher, searched_s, scored = (b - a for a, b in pairwise(clock))
    print(f"\ntime: teacher {teacher:.1f} s, search {searched_s:.1f} s, scoring {scored:.1f} s")
    print(result.plan.describe())


def _fixed_shown(rows: list[Row], one_rule: bool) -> list[Row]:
    """The fixed plans the table lists: for one searched solver its presets and DMN, as scored; the
    paper's own plan and the best DMN; then the best fixed plan of each solver, lowest first."""
    fixed = [row for row in rows if row.kind != "stage"]
    listed = [row for row in fixed if one_rule and row.kind != "menu"]
    paper = [row for row in fixed if row.plan.name.startswith("paper-") and "+" not in row.plan.name]
    dmn = sorted((row for row in fixed if row.kind in ("dmn", "menu") and row.plan.name.startswith("dmn-")),
                 key=lambda row: row.held_out)[:1]  # fmt: skip
    best: dict[str, Row] = {}
    for row in fixed:
        rule = row.plan.solver[0]
        if rule not in best or row.held_out < best[rule].held_out:
            best[rule] = row
    shown: list[Row] = []
    for row in [*listed, *paper[:1], *dmn, *sorted(best.values(), key=lambda row: row.held_out)]:
        if all(row is not other for other in shown):
            shown.append(row)
    return shown


def _real(args: argparse.Namespace, samples: int, held_out: int) -> tuple[Subject, Any]:
    """--weights: the model through pipeline/search.py, imported only here (and the torchrun shard)."""
    from pipeline import search as real
    from pipeline.sharding import Shard, pick_device

    shard = Shard.from_env()
    pipeline.check_bounds(
        height=args.height, width=args.width, batch=args.batch_size, allow_large=args.allow_large
    )
    prompts = pipeline.read_prompts(args.prompts)
    real.check_cache_folder(real.cache_folder(args.cache))  # before minutes go into loading the weights
    run = prepared(args, pipeline.prepare_run, run_request(args, pick_device(args.device, shard)))
    if run.warning:  # a distilled preset's weights, as run_sample.py and evaluation.generate say it
        print(f"{PROG}: {run.warning}", file=sys.stderr)
    subject = real.subject(
        run, prompts, samples, held_out, seed=args.seed, cache=args.cache, decoded=args.decoded, shard=shard
    )
    return subject, shard


def _mode(args: argparse.Namespace) -> str:
    if bool(args.denoiser) == bool(args.weights):
        raise ValueError(
            "give one of --denoiser MODULE:CALLABLE (with --shape) or --weights PATH (with --prompts)"
        )
    given = [f"--{flag}" for flag in ("prompts", "cache") if getattr(args, flag)] + [
        "--decoded"
    ] * args.decoded
    if args.denoiser:
        if args.shape is None:
            raise ValueError("--denoiser needs --shape, the shape of one sample, e.g. --shape 16")
        if given:
            raise ValueError(f"{given[0]} goes with --weights, not --denoiser")
        return "denoiser"
    if args.shape is not None:
        raise ValueError("--shape goes with --denoiser; with --weights the size is --height and --width")
    if not args.prompts:
        raise ValueError("--weights needs --prompts FILE, one prompt per line")
    return "weights"


def _check_out(out: str | None) -> Path | None:
    """Refuse, before any work, a plan file that exists (a link to nothing included) or a folder that
    cannot take it: missing, not writable, or without room for a plan."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() or path.is_symlink():
        raise ValueError(f"--out {out} exists; pass another file name (nothing written is replaced)")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ValueError(f"--out {out}: the folder {path.parent} does not exist or is not writable")
    free = shutil.disk_usage(path.parent).free
    if free < PLAN_BOUND:
        raise ValueError(
            f"--out {out}: the folder {path.parent} has {free} bytes free, less than the {PLAN_BOUND} a "
            "plan may take; free space or pass a file on another disk"
        )
    return path


def _write(path: Path, plan: Plan) -> None:
    """The plan's JSON at `path`, atomically and never over a file that appeared meanwhile; a plan that
    cannot be written is printed whole, so the search's work is not lost."""
    try:
        safeio.write_atomically(path, plan.to_json() + "\n", replace=False)
    except OSError as err:
        print(plan.to_json())
        reason = "it appeared while the search ran" if isinstance(err, FileExistsError) else cli.one_line(err)
        raise ValueError(
            f"--out {path}: the plan is not written ({reason}); its JSON is on standard output: save it "
            "to a file"
        ) from None


def load_denoiser(spec: str) -> Callable[..., Tensor]:
    """The denoiser that MODULE:CALLABLE returns when called with no arguments. It runs the code it
    names (by design, as `python -c` does); whatever that code raises is one line naming the flag."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or module_name.startswith("."):
        raise ValueError(
            f"--denoiser {spec!r} is not MODULE:CALLABLE, e.g. solvers.analytic:GaussianMixture.default"
        )
    try:
        made: Any = importlib.import_module(module_name)
    except Exception as err:  # the module's own code runs here: anything it raises is the flag's fault
        raise ValueError(f"--denoiser {spec}: cannot import {module_name} ({cli.one_line(err)})") from None
    for part in attribute.split("."):
        if not hasattr(made, part):
            raise ValueError(f"--denoiser {spec}: {module_name} has no {attribute}")
        made = getattr(made, part)
    if not callable(made):
        raise ValueError(f"--denoiser {spec}: {attribute} is not callable")
    try:
        denoise = made()
    except Exception as err:
        raise ValueError(
            f"--denoiser {spec}: {attribute}() with no arguments fails ({type(err).__name__}: "
            f"{cli.one_line(err)}); name a callable that takes none and returns D(x, sigma)"
        ) from None
    if not callable(denoise):
        raise ValueError(
            f"--denoiser {spec}: {attribute}() returned {type(denoise).__name__}, not a denoiser"
        )
    return denoise


def _accepted(denoise: Callable[..., Tensor]) -> Callable[[str], bool]:
    """Which keyword options `denoise` takes: any with **options, else those it names (none when its
    signature cannot be read, as for some builtins)."""
    try:
        parameters = list(inspect.signature(denoise).parameters.values())
    except (TypeError, ValueError):
        return lambda name: False
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return lambda name: True
    named = {p.name for p in parameters[2:]}
    return lambda name: name in named


def _probe(args: argparse.Namespace, denoise: Callable[..., Tensor], sigma: float) -> None:
    """One call on PROBE_ROWS samples of --shape, before anything large is allocated: a wrong --shape
    or a callable that is no denoiser is a clear refusal rather than a traceback later."""
    x = torch.randn(
        (PROBE_ROWS, *args.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    try:
        got = denoise(x * sigma, sigma)
    except Exception as err:  # the flag's own code runs here
        raise ValueError(
            f"--denoiser {args.denoiser} fails on samples of --shape {_text(args.shape)}: "
            f"{cli.one_line(err)} ({type(err).__name__})"
        ) from None
    if not isinstance(got, Tensor) or got.shape != x.shape or not got.is_floating_point():
        found = (
            f"a {got.dtype} tensor of shape {tuple(got.shape)}"
            if isinstance(got, Tensor)
            else (f"a {type(got).__name__}")
        )
        raise ValueError(
            f"--denoiser {args.denoiser} returned {found} for x of shape {tuple(x.shape)}; a denoiser "
            "returns a floating-point tensor of x's shape"
        )


def _analytic(args: argparse.Namespace, samples: int, held_out: int) -> Subject:
    model = load_denoiser(args.denoiser)
    takes = _accepted(model)
    if args.freeu_bit and not takes("freeu"):
        raise ValueError(f"--freeu-bit: the denoiser of {args.denoiser} takes no freeu option")

    def denoise(x: Tensor, sigma: float, **options: Any) -> Tensor:
        # a plain D(x, sigma) gets none of the options the plan records for real models
        return model(x, sigma, **{name: value for name, value in options.items() if takes(name)})

    schedule = DiscreteSchedule.sd()
    _probe(args, denoise, schedule.sigma_max)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn((samples + held_out, *args.shape), generator=generator, dtype=torch.float64)
    x = x * schedule.sigma_max

    def teach(
        grid: Sequence[float],
        options: Mapping[str, Any],
        solver: str,
        substeps: int,
        progress: Callable[[int], Any],
    ) -> Teacher:
        if solver == EXACT:
            return solve_teacher(model, x, grid, options, progress=progress)
        return solve_teacher(Counted(denoise, progress), x, grid, options, solver=solver, substeps=substeps)

    return Subject(schedule, args.denoiser, denoise, denoise, teach, has_exact_solution(model))


if __name__ == "__main__":
    sys.exit(main())
