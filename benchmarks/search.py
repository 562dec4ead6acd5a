"""The schedule search (solvers/search/) at full size: searched plans against the presets on held-out
samples, denoiser evaluations and time, on the analytic mixtures and on a tiny random-weight SD model,
the DP against brute force, and the cost projected for SD 1.5 at 512 px on a GPU.

    python -m benchmarks.search                       # both mixtures, 4-10 NFE, DPM++2M and DPM++1S
    python -m benchmarks.search --dims 16 --nfe 5     # a quicker look
    python -m benchmarks.search --tables menu         # --solver auto against the whole menu only

For each mixture (`GaussianMixture.default(dim)`, the exact denoiser under SD's noise table) the exact
teacher of --samples search samples is solved once on the --grid candidate levels; every (solver, cost
model, NFE) search runs on it, and the plan after each stage, the presets of the same solver at the
same NFE and DMN are scored on --held-out other samples: RMSE to the exact x(0), and the ratio of the
searched plan's to the best preset's (below 1: the search wins). One CPU thread (many small float64
ops; two threads on a shared machine only slow them down).

The menu tables hold `--solver auto` (a rule per step, then each step's eval_shift) against the best
fixed plan of the whole menu (every deterministic solver on every discretization, the paper's, DMN)
at the same NFE and at NFE + 1, + 2 and 8, on the project's 16-dim mixture and on one it has not seen
(`unseen_mixture`: 32 dims, 5 components of skewed weights, wider means and variances).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from schedule import DiscreteSchedule
from solvers.analytic import GaussianMixture
from solvers.search import (
    STAGES,
    Counted,
    Problem,
    baselines,
    best_fixed,
    brute_force,
    candidate_grid,
    compare,
    default_stages,
    dynamic_program,
    estimate,
    gain,
    search,
    solve_teacher,
    whole_menu,
)
from solvers.table import SOLVERS

SD = DiscreteSchedule.sd()
# SD 1.5, 512 px, one classifier-free-guided U-Net call (batch 2) on an A100, torch.compile and
# channels-last: 1.066 s for 50 steps (fal-ai/stable-diffusion-benchmarks), ~21 ms a call; a VAE
# decode costs about 1.4 such calls (FLOPs). /work/shared/reference/few-step-methods.md section 3.3.
SD15_CALL_S = 0.021
SD15_DECODE_CALLS = 1.4


def start(n: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) * SD.sigma_max


def mixture_table(dim: int, args: argparse.Namespace) -> dict[str, int]:
    """The searched-vs-preset table of one mixture; returns the refinement calls of each search."""
    model = GaussianMixture.default(dim=dim)
    started = time.perf_counter()
    teacher = solve_teacher(model, start(args.samples, dim, 0), candidate_grid(SD, args.grid), {})
    held = solve_teacher(model, start(args.held_out, dim, 1), (SD.sigma_max, 0.0), {})
    print(
        f"\n### GaussianMixture.default(dim={dim}), {len(model.weights)} components: {args.samples} search "
        f"samples, {args.held_out} held out; exact teachers {time.perf_counter() - started:.0f} s\n"
    )
    print("| solver | cost | NFE | dp | grid | polish | best preset | DMN | ratio | calls by stage | time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    refinement = {}
    for solver in args.solvers:
        for cost in args.costs:
            for nfe in args.nfe:
                started = time.perf_counter()
                result = search(model, teacher, solver=solver, nfe=nfe, cost=cost)
                elapsed = time.perf_counter() - started
                held_out = Problem(Counted(model), held, solver, nfe, {})
                rows = compare(result, held_out, baselines(solver, nfe, SD, {}))
                stages = {row.plan.name.split("-")[0]: row.held_out for row in rows if row.kind == "stage"}
                best = min((row for row in rows if row.kind == "preset"), key=lambda row: row.held_out)
                dmn = next((f"{row.held_out:.4f}" for row in rows if row.kind == "dmn"), "-")
                calls = [stage.calls for stage in result.stages]
                refinement[f"{solver} {cost} {nfe}"] = sum(calls[1:])
                print(
                    f"| {SOLVERS[solver].display} | {cost} | {nfe} | "
                    + " | ".join(f"{stages[name]:.4f}" if name in stages else "-" for name in STAGES)
                    + f" | {best.held_out:.4f} {best.plan.name} | {dmn} | {1 - gain(rows):.3f} | "
                    f"{'/'.join(map(str, calls))} | {elapsed:.1f} s |"
                )
    return refinement


def unseen_mixture() -> GaussianMixture:
    """A mixture unlike the project's own: 32 dims, 5 components of weights 0.45-0.05, means of scale
    1.2, variances 0.05-0.55."""
    g = torch.Generator().manual_seed(7)
    weights = torch.tensor([0.45, 0.25, 0.15, 0.10, 0.05], dtype=torch.float64)
    means = torch.randn(5, 32, generator=g, dtype=torch.float64) * 1.2
    return GaussianMixture(weights, means, 0.05 + 0.5 * torch.rand(5, generator=g, dtype=torch.float64))


def menu_table(name: str, model: GaussianMixture, dim: int, args: argparse.Namespace) -> None:
    """`--solver auto` at each NFE and cost model against the best fixed plans of the whole menu."""
    started = time.perf_counter()
    teacher = solve_teacher(model, start(args.samples, dim, 0), candidate_grid(SD, args.grid), {})
    held = solve_teacher(model, start(args.held_out, dim, 1), (SD.sigma_max, 0.0), {})
    scorer = Problem(Counted(model), held, "auto", 1, {})
    budgets = sorted({n + k for n in args.nfe for k in (0, 1, 2)} | {8})
    fixed = {}
    for nfe in budgets:
        rows = [replace(row, held_out=scorer.score(row.plan)) for row in whole_menu("auto", nfe, SD, {})]
        fixed[nfe] = (rows, best_fixed(rows))
    print(
        f"\n### {name}: {args.samples} search samples, {args.held_out} held out; exact teachers and "
        f"{sum(len(rows) for rows, _ in fixed.values())} fixed plans scored in "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print("| NFE | cost | dp | grid | polish | shift | / best fixed | best fixed plan of the whole menu | "
          "best fixed NFE+1, +2, 8 | paper's | best DMN | calls by stage | time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for nfe in args.nfe:
        rows, best = fixed[nfe]
        paper = next((row for row in rows if row.plan.name == f"paper-{nfe}"), None)
        dmn = min((row for row in rows if row.plan.name.startswith("dmn-")), key=lambda row: row.held_out)
        more = ", ".join(f"{fixed[n][1].held_out:.4f}" for n in (nfe + 1, nfe + 2, 8))
        for cost in args.costs:
            started = time.perf_counter()
            result = search(model, teacher, solver="auto", nfe=nfe, cost=cost)
            elapsed = time.perf_counter() - started
            scored = {stage.name: scorer.score(stage.plan) for stage in result.stages}
            print(
                f"| {nfe} | {cost} | " + " | ".join(f"{scored[stage]:.4f}" for stage in STAGES)
                + f" | {scored['shift'] / best.held_out:.3f} | {best.held_out:.4f} {best.plan.name} "
                f"| {more} | "
                f"{'-' if paper is None else f'{paper.held_out:.4f}'} | {dmn.held_out:.4f} {dmn.plan.name} | "
                f"{'/'.join(str(stage.calls) for stage in result.stages)} | {elapsed:.0f} s |"
            )  # fmt: skip


def dp_against_brute_force() -> None:
    """The DP's path against every path of a 12-point grid at 3 NFE (8-dim mixture, 32 samples)."""
    model = GaussianMixture.default(dim=8)
    teacher = solve_teacher(model, start(32, 8, 0), candidate_grid(SD, 11), {})
    print("\n### DP against brute force: 11 levels + 0, 3 NFE, 8-dim mixture, 32 samples\n")
    print("| solver | cost | DP path | DP cost | optimum path | optimum cost | gap |")
    print("|---|---|---|---|---|---|---|")
    for solver in ("dpmpp_1s", "heun", "dpmpp_2m"):
        for cost in ("local", "global"):
            problem = Problem(Counted(model), teacher, solver, 3, {})
            path, value = dynamic_program(problem, cost)
            best, optimum = brute_force(problem, cost)
            print(f"| {SOLVERS[solver].display} | {cost} | {path.nodes} | {value:.5f} | {best.nodes} | "
                  f"{optimum:.5f} | {value / optimum - 1:+.1%} |")  # fmt: skip


def tiny_model(args: argparse.Namespace) -> None:
    """The real-weights path on a tiny random-weight SD 1.5 (64 x 64 px): calls and time."""
    import pipeline
    from pipeline.search import subject
    from tests.checkpoints import write_checkpoint

    options, solver, nfe, prompts = {"guidance": 7.5, "freeu": None}, "dpmpp_2m", 5, ["a red cube", "a cat"]
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        started = time.perf_counter()
        weights = str(write_checkpoint(Path(folder), "single"))
        run = pipeline.prepare_run(pipeline.Request(weights, height=64, width=64, device="cpu", batch=4))
        sd = subject(run, prompts, 4, 4, seed=0, cache=Path(folder) / "cache")
        loaded = time.perf_counter()
        grid = candidate_grid(sd.schedule, args.grid)
        evaluations: list[int] = []
        everyone = sd.teach(grid, options, solver, 4, evaluations.append)
        taught = time.perf_counter()
        counted = Counted(sd.search)
        result = search(counted, everyone.rows(slice(0, 4)), solver=solver, nfe=nfe, options=options)
        searched = time.perf_counter()
    expected = estimate(grid, solver, nfe, teacher=solver, substeps=4)
    dp = result.stages[0].calls
    print(f"\n### Tiny random-weight SD 1.5, 64 x 64 px, CPU: {solver} at {nfe} NFE, 4 search samples in "
          "one batch, teacher dpmpp_2m x4 of 8 samples\n")  # fmt: skip
    print(f"load {loaded - started:.1f} s; teacher {sum(evaluations)} sample evaluations in "
          f"{taught - loaded:.1f} s; search {counted.calls} calls x 4 samples in {searched - taught:.1f} s "
          f"(dp {dp} as estimated {expected.dp}; refinement {counted.calls - dp} of at most "
          f"{expected.refine})")  # fmt: skip


def projection(args: argparse.Namespace, refinement: dict[str, int]) -> None:
    """The command's --weights defaults on SD 1.5 at 512 px: evaluations x the published per-call time."""
    samples, held_out, nfe = 16, 16, 5
    cost = estimate(candidate_grid(SD, args.grid), "dpmpp_2m", nfe, teacher="dpmpp_2m", substeps=4)
    typical = refinement.get(f"dpmpp_2m global {nfe}", cost.refine)
    stages = default_stages("dpmpp_2m")
    scoring = len(stages) * nfe + sum(row.plan.nfe for row in whole_menu("dpmpp_2m", nfe, SD, {}))
    parts = {
        "teacher": cost.teacher * (samples + held_out),
        "dp": cost.dp * samples,
        "refinement (as on the mixture)": typical * samples,
        "scoring": scoring * held_out,
    }
    total = sum(parts.values())
    bound = total - parts["refinement (as on the mixture)"] + cost.refine * samples
    print(f"\n### Projected: SD 1.5 at 512 px, DPM++2M at {nfe} NFE, the command's --weights defaults "
          f"({samples} search + {held_out} held-out prompts, grid {args.grid}, teacher dpmpp_2m x4), at "
          f"{SD15_CALL_S * 1000:.0f} ms per guided call (A100, compiled, batch 1)\n")  # fmt: skip
    print(", ".join(f"{name} {count}" for name, count in parts.items()) + " sample evaluations")
    print(f"= {total} x {SD15_CALL_S * 1000:.0f} ms = {total * SD15_CALL_S / 60:.1f} min "
          f"(refinement at its bound of {cost.refine} calls: {bound * SD15_CALL_S / 60:.1f} min); --decoded "
          f"adds {SD15_DECODE_CALLS} calls of VAE per refinement and scoring run and sample")  # fmt: skip
    auto = estimate(candidate_grid(SD, args.grid), "auto", nfe, teacher="dpmpp_2m", substeps=4)
    menu = sum(row.plan.nfe for row in whole_menu("auto", nfe, SD, {}))
    parts = {
        "teacher": auto.teacher * (samples + held_out),
        "dp": auto.dp * samples,
        "refinement at its bound": auto.refine * samples,
        "scoring (the whole menu)": (len(STAGES) * nfe + menu) * held_out,
    }
    total = sum(parts.values())
    print(f"\n--solver auto (stages {'+'.join(STAGES)}): " + ", ".join(f"{k} {v}" for k, v in parts.items())
          + f" sample evaluations = {total} x {SD15_CALL_S * 1000:.0f} ms = {total * SD15_CALL_S / 60:.1f} "
          "min at most")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", type=lambda t: [int(v) for v in t.split(",")], default=[16, 128])
    parser.add_argument("--nfe", type=lambda t: [int(v) for v in t.split(",")], default=[4, 5, 6, 8, 10])
    parser.add_argument("--solvers", type=lambda t: t.split(","), default=["dpmpp_2m", "dpmpp_1s"])
    parser.add_argument("--costs", type=lambda t: t.split(","), default=["global", "local"])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--held-out", type=int, default=4096)
    parser.add_argument("--grid", type=int, default=40)
    parser.add_argument("--tables", type=lambda t: t.split(","), default=["single", "menu"])
    args = parser.parse_args()
    unknown = [s for s in args.solvers if s not in SOLVERS]
    if unknown:
        parser.error(f"unknown solvers {unknown}; choose from {', '.join(SOLVERS)}")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 CPU thread, grid {args.grid} levels + 0")
    refinement = {}
    if "single" in args.tables:
        for dim in args.dims:
            refinement |= mixture_table(dim, args)
    if "menu" in args.tables:
        menu_table(
            "GaussianMixture.default(dim=16), the project's own", GaussianMixture.default(dim=16), 16, args
        )
        menu_table("unseen_mixture(), 32 dims, 5 components", unseen_mixture(), 32, args)
    if "single" in args.tables:
        dp_against_brute_force()
        tiny_model(args)
    projection(args, refinement)


if __name__ == "__main__":
    main()
