"""Truncation-error analysis of plans on an exact model, no network needed.

    python -m solvers.analyze [--samples 256] [--plot curves.png]

On a Gaussian mixture under SD's noise table it prints (1) the RMSE of each preset and baseline at
5, 6, 8, 10 and 20 steps against the exact ODE solution, and (2) the per-interval local
truncation error of the paper's 8-step schedule and of Karras rho = 7 at 8 steps, measured as in
the paper's section 3.1: one step against 200 sub-steps of the same solver on the same interval.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor

import cli
from schedule import DiscreteSchedule, append_zero, exponential, karras
from solvers.analytic import GaussianMixture
from solvers.loop import sample
from solvers.plan import Plan
from solvers.presets import preset
from solvers.table import SOLVERS

Model = Callable[..., Tensor]
STEP_COUNTS = (5, 6, 8, 10, 20)
BASELINES = ("karras-1s", "karras-2m", "ays-2m")


def rmse(a: Tensor, b: Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def trajectory(model, x: Tensor, sigmas: Sequence[float]) -> list[Tensor]:
    """The exact (or reference) ODE solution at every sigma, starting from x at sigmas[0]."""
    points = [x]
    for s_from, s_to in pairwise(sigmas):
        points.append(model.solve(points[-1], s_from, s_to))
    return points


def local_errors(model, x: Tensor, sigmas: Sequence[float], solver: str, substeps: int = 200) -> list[float]:
    """Per-interval local truncation error: from the exact x(sigma_i), one solver step against
    `substeps` steps of the same solver, uniform in log sigma, on the same interval (paper sec. 3.1).

    Multistep solvers get the exact earlier estimates D(x(sigma_j); sigma_j) as their history. An
    interval into sigma = 0 is sub-stepped down to 1e-4 * sigma_i and then into 0.
    """
    exact = trajectory(model, x, sigmas)
    errors = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        history = [(sigmas[j], model(exact[j], sigmas[j])) for j in range(i)]
        denoised = model(exact[i], s)
        one = denoised if s_next == 0 else SOLVERS[solver].rule(exact[i], denoised, s, s_next, history, model)
        fine_end = s_next if s_next > 0 else 1e-4 * s
        fine_sigmas = exponential(substeps if s_next > 0 else substeps - 1, fine_end, s)
        fine_sigmas = fine_sigmas if s_next > 0 else append_zero(fine_sigmas)
        fine = sample(model, exact[i], Plan(fine_sigmas, solver, 1.0))
        errors.append(rmse(one, fine))
    return errors


def convergence_order(step_counts: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(step size), step size ~ 1 / N."""
    log_h = torch.tensor([-math.log(n) for n in step_counts], dtype=torch.float64)
    log_e = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    dh = log_h - log_h.mean()
    return float((dh * (log_e - log_e.mean())).sum() / (dh**2).sum())


def error_table(model, x: Tensor, schedule: DiscreteSchedule, step_counts=STEP_COUNTS) -> list[dict]:
    """RMSE of each plan's output to the exact x(0) and to the exact x at the plan's last sigma."""
    plans = [
        preset(name, schedule=schedule)
        for n in step_counts
        for name in (f"paper-{n}", *(f"{b}-{n}" for b in BASELINES))
    ]
    ends = sorted({p.sigmas[-1] for p in plans} | {0.0}, reverse=True)
    exact = dict(
        zip(ends, trajectory(model, x, [schedule.sigma_max, *ends])[1:], strict=True)
    )  # one chained solve
    rows = []
    for plan in plans:
        out = sample(model, x.clone(), plan)
        end = plan.sigmas[-1]
        rows.append({"plan": plan.name, "steps": plan.steps, "nfe": plan.nfe, "sigma_end": end,
                     "rmse_x0": rmse(out, exact[0.0]), "rmse_end": rmse(out, exact[end])})  # fmt: skip
    return rows


def lte_curves(
    model, x: Tensor, schedule: DiscreteSchedule, solver: str
) -> dict[str, tuple[list[float], list[float]]]:
    """sigma_i and the local error of each interval, for the paper's 8 steps and Karras rho = 7."""
    curves = {}
    for label, sigmas in (
        ("paper-8", preset("paper-8", schedule=schedule).sigmas),
        (
            "karras-8 (rho 7, to 0)",
            tuple(append_zero(karras(7, schedule.sigma_min, schedule.sigma_max)).tolist()),
        ),
    ):
        curves[label] = (list(sigmas[:-1]), local_errors(model, x, sigmas, solver))
    return curves


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    return plt


def _plot(path: str, rows: list[dict], curves: dict, solver: str) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for family in ("paper", *BASELINES):
        pts = [(r["steps"], r["rmse_x0"]) for r in rows if r["plan"].rsplit("-", 1)[0] == family]
        left.loglog(*zip(*pts, strict=True), "o-", label=family)
    left.set(xlabel="steps", ylabel="RMSE to exact x(0)", title="Global error, Gaussian mixture")
    left.set_xticks(STEP_COUNTS, [str(n) for n in STEP_COUNTS])
    left.minorticks_off()
    left.legend()
    for label, (sigmas, errs) in curves.items():
        right.loglog(sigmas, errs, "o-", label=label)
    right.invert_xaxis()
    right.set(
        xlabel="sigma at interval start",
        ylabel="local error (RMSE)",
        title=f"Local truncation error, {solver}",
    )
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.Parser(prog="python -m solvers.analyze", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--samples", type=cli.positive_int, default=256, help="starting points (default: 256)"
    )
    parser.add_argument(
        "--dim", type=cli.positive_int, default=16, help="data dimension of the mixture (default: 16)"
    )
    parser.add_argument(
        "--seed", type=cli.seed, default=0, help="seed of the mixture and the samples (default: 0)"
    )
    parser.add_argument(
        "--lte-solver",
        default="dpmpp_1s",
        type=cli.one_of(lambda: sorted(SOLVERS), "solver"),
        metavar="NAME",
        help="solver for the local-error curves (default: dpmpp_1s)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves (needs matplotlib)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    return cli.run(parser.prog, analyze, args, errors=(ValueError, OSError, ImportError))


def analyze(args: argparse.Namespace) -> None:
    if args.plot:
        _pyplot()  # refuse before the work, not after it
    schedule = DiscreteSchedule.sd()
    model = GaussianMixture.default(dim=args.dim, seed=args.seed)
    x = model.sample(args.samples, schedule.sigma_max, torch.Generator().manual_seed(args.seed + 1))
    print(f"Gaussian mixture ({len(model.weights)} components, dim {args.dim}), {args.samples} samples, "
          f"SD noise table sigma {schedule.sigma_max:.4f} -> {schedule.sigma_min:.4f}")  # fmt: skip
    print("Analytic denoiser: guidance and FreeU in the plans have no effect here.\n")

    rows = error_table(model, x, schedule)
    print(f"{'plan':<14}{'NFE':>4}{'sigma_end':>11}{'RMSE to x(0)':>14}{'RMSE to x(end)':>16}")
    for r in rows:
        print(
            f"{r['plan']:<14}{r['nfe']:>4}{r['sigma_end']:>11.4f}{r['rmse_x0']:>14.5f}{r['rmse_end']:>16.5f}"
        )

    curves = lte_curves(model, x, schedule, args.lte_solver)
    print(f"\nLocal truncation error per interval ({args.lte_solver}, one step vs 200 sub-steps):")
    for label, (sigmas, errs) in curves.items():
        print(f"  {label}")
        for s, e in zip(sigmas, errs, strict=True):
            print(f"    from sigma {s:8.4f}: {e:.5f}")
    if args.plot:
        _plot(args.plot, rows, curves, args.lte_solver)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
