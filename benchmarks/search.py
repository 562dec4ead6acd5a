"""The schedule search (solvers/search/) at full size: searched plans against the presets on held-out
samples, denoiser evaluations and time, on the analytic mixtures and on a tiny random-weight SD model,
the DP against brute force, and the cost projected for SD 1.5 at 512 px on a GPU.

    python -m benchmarks.search                       # both mixtures, 4-10 NFE, DPM++2M and DPM++1S
    python -m benchmarks.search --dims 16 --nfe 5     # a quicker look

For each mixture (`GaussianMixture.default(dim)`, the exact denoiser under SD's noise table) the exact
teacher of --samples search samples is solved once on the --grid candidate levels; every (solver, cost
model, NFE) search runs on it, and the plan after each stage, the presets of the same solver at the
same NFE and DMN are scored on --held-out other samples: RMSE to the exact x(0), and the ratio of the
searched plan's to the best preset's (below 1: the search wins). One CPU thread (many small float64
ops; two threads on a shared machine only slow them down).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from schedule import DiscreteSchedule
from solvers.analytic import GaussianMixture
from solvers.search import (
    STAGES,
    Counted,
    Problem,
    baselines,
    brute_force,
    candidate_grid,
    compare,
    dynamic_program,
    estimate,
    gain,
    search,
    solve_teacher,
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
    scoring = len(STAGES) * nfe + sum(row.plan.nfe for row in baselines("dpmpp_2m", nfe, SD, {}))
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
    args = parser.parse_args()
    unknown = [s for s in args.solvers if s not in SOLVERS]
    if unknown:
        parser.error(f"unknown solvers {unknown}; choose from {', '.join(SOLVERS)}")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 CPU thread, grid {args.grid} levels + 0")
    refinement = {}
    for dim in args.dims:
        refinement |= mixture_table(dim, args)
    dp_against_brute_force()
    tiny_model(args)
    projection(args, refinement)


if __name__ == "__main__":
    main()
