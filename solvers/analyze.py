"""Truncation-error analysis of every solver x discretization on exact models, no network needed.

    python -m solvers.analyze [--samples 256] [--plot curves.png]
    python -m solvers.analyze --guidance [--plot curves.png]

(1) Every ODE solver x every discretization at 4, 5, 6, 8, 10 and 20 NFE on a Gaussian mixture under
SD's noise table: RMSE against the exact ODE solution from the same x_T, at sigma = 0 and at the
plan's own last sigma. (2) Every stochastic solver x discretization on a Gaussian: the distance of the
exact law of its output from the exact law, likewise. (3) The per-interval local truncation error of
the paper's 8-step schedule and of Karras rho = 7 at 8 steps, measured as in the paper's section 3.1:
one step against 200 sub-steps of the same solver on the same interval. With --guidance instead:
each guidance variant's few-step error on an exact guided model (solvers/guidance_analysis.py).
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

import cli
import safeio
from schedule import DISCRETIZATIONS, DiscreteSchedule, append_zero, exponential, karras
from solvers import guidance_analysis
from solvers.analytic import ConditionalMixture, Gaussian, GaussianMixture, rmse
from solvers.loop import sample
from solvers.plan import Plan
from solvers.presets import discretization_for, preset
from solvers.table import SOLVERS, Past, Step, no_noise

Model = Callable[..., Tensor]
NFE_COUNTS = (4, 5, 6, 8, 10, 20)
NOTES = (
    "to x(0): RMSE of the plan's output against the exact ODE solution at sigma = 0 from the same x_T "
    "(what the decoded image shows);",
    "/ x(end): the same against the exact solution at the plan's own last sigma, where that is > 0 "
    "(the steps' error without the noise left at sigma_end, which the paper decodes as is);",
    "W2: Wasserstein-2 distance (per dimension, RMS) of the exact law of a stochastic solver's output "
    "from the data law, computed exactly on a Gaussian (the output is affine in x_T and the noise);",
    "-: no plan of that discretization has exactly that NFE with that solver (2-call solvers);",
    "!: diverged, an error above 10, far beyond the data's scale (ipndm_v on linear_quadratic: its "
    "variable-step weights grow with the step ratio, docs/recipe.md section 9.3); the plot clips it.",
)
ODE_ONLY = "local truncation errors are defined for ODE solvers only"
DIVERGED = 10.0  # RMSE or W2 above this: the data have unit scale, so the solver has blown up
# Solver families for the plot, each one colour (members: one line style each); the first match wins.
FAMILIES = (
    ("Euler, Heun", r"euler|heun|euler_a"),
    ("DPM++ single-step", r"dpmpp_\ds"),
    ("DPM++ multistep", r"dpmpp_\dm(_exact)?"),
    ("DPM++ SDE", r"dpmpp_.*sde.*"),
    ("DEIS", r"deis_\d"),
    ("iPNDM", r"ipndm(_v)?"),
    ("UniPC bh1", r"unipc_bh1_\d"),
    ("UniPC bh2", r"unipc_bh2_\d"),
    ("Consistency (LCM, TCD)", r"lcm|tcd"),
)
LINE_STYLES = ("-", "--", ":", "-.")


def trajectory(model, x: Tensor, sigmas: Sequence[float]) -> list[Tensor]:
    """The exact (or reference) ODE solution at every sigma, starting from x at sigmas[0]."""
    points = [x]
    for s_from, s_to in pairwise(sigmas):
        points.append(model.solve(points[-1], s_from, s_to))
    return points


def local_errors(model, x: Tensor, sigmas: Sequence[float], solver: str, substeps: int = 200) -> list[float]:
    """Per-interval local truncation error: from the exact x(sigma_i), one solver step against
    `substeps` steps of the same solver, uniform in log sigma, on the same interval (paper sec. 3.1).

    Multistep solvers get the exact earlier x(sigma_j) and D(x(sigma_j); sigma_j) as their history.
    An interval into sigma = 0 is sub-stepped down to 1e-4 * sigma_i and then into 0.
    """
    exact = trajectory(model, x, sigmas)
    errors = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        history = tuple(Past(sigmas[j], exact[j], model(exact[j], sigmas[j])) for j in range(i))
        denoised = model(exact[i], s)
        step = Step(i, len(sigmas) - 1, s, s_next, history, model, no_noise(ODE_ONLY))
        one = denoised if s_next == 0 else SOLVERS[solver].rule(exact[i], denoised, step)
        fine_end = s_next if s_next > 0 else 1e-4 * s
        fine_sigmas = exponential(substeps if s_next > 0 else substeps - 1, fine_end, s)
        fine_sigmas = fine_sigmas if s_next > 0 else append_zero(fine_sigmas)
        fine = sample(model, exact[i], Plan(fine_sigmas, solver, guidance=1.0))
        errors.append(rmse(one, fine))
    return errors


def convergence_order(step_counts: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(step size), step size ~ 1 / N."""
    log_h = torch.tensor([-math.log(n) for n in step_counts], dtype=torch.float64)
    log_e = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    dh = log_h - log_h.mean()
    return float((dh * (log_e - log_e.mean())).sum() / (dh**2).sum())


@functools.cache
def _sigmas(kind: str, steps: int, schedule: DiscreteSchedule, model: str) -> tuple[float, ...] | None:
    try:
        return tuple(discretization_for(kind, steps, model).sigmas(schedule).tolist())
    except ValueError:  # e.g. GITS has no 1-step row, beta merges steps at large N
        return None


def plan_at_nfe(
    solver: str, kind: str, nfe: int, schedule: DiscreteSchedule, model: str = "sd1"
) -> Plan | None:
    """The plan of discretization `kind` with `solver` on every step that makes exactly `nfe`
    denoiser calls (a step into 0 makes one), or None if none does."""
    for steps in range(1, nfe + 1):
        sigmas = _sigmas(kind, steps, schedule, model)
        if sigmas is None:
            continue
        plan = Plan(sigmas, solver, name=f"{kind}-{SOLVERS[solver].short}-{steps}", guidance=1.0)
        if plan.nfe == nfe:
            return plan
    return None


def ode_table(
    model, x: Tensor, schedule: DiscreteSchedule, kinds=tuple(DISCRETIZATIONS), nfe_counts=NFE_COUNTS
) -> dict[tuple[str, str], dict[int, tuple[float, float | None]]]:
    """(kind, solver) -> NFE -> (RMSE to the exact x(0), RMSE to the exact x at the plan's last sigma
    or None when that sigma is 0), for every deterministic solver."""
    solvers = [name for name, entry in SOLVERS.items() if not entry.stochastic]
    plans = {
        (kind, solver, nfe): plan_at_nfe(solver, kind, nfe, schedule)
        for kind in kinds
        for solver in solvers
        for nfe in nfe_counts
    }
    ends = sorted({p.sigmas[-1] for p in plans.values() if p is not None} | {0.0}, reverse=True)
    exact = dict(zip(ends, trajectory(model, x, [schedule.sigma_max, *ends])[1:], strict=True))
    table: dict[tuple[str, str], dict[int, tuple[float, float | None]]] = {}
    for (kind, solver, nfe), plan in plans.items():
        row = table.setdefault((kind, solver), {})
        if plan is not None:
            out, end = sample(model, x.clone(), plan), plan.sigmas[-1]
            row[nfe] = (rmse(out, exact[0.0]), rmse(out, exact[end]) if end > 0 else None)
    return table


def moment_matched(mixture: GaussianMixture) -> Gaussian:
    """The Gaussian with the mixture's mean and (per-dimension) variance."""
    w = mixture.weights[:, None]
    mean = (w * mixture.means).sum(0)
    return Gaussian(mean, (w * (mixture.var[:, None] + mixture.means**2)).sum(0) - mean**2)


def exact_law(gaussian: Gaussian, plan: Plan) -> tuple[Tensor, Tensor]:
    """Mean and variance of the output of `plan` from x_T ~ N(mean, var + sigma_0^2), exactly.

    The Gaussian's D is affine in x, so the output is y = y_0 + a (x_T - mean) + sum_k g_k z_k in every
    dimension: one batch of N + 2 rows gives y_0 (x_T = mean, no noise), a (x_T = mean + 1) and each
    g_k (the k-th noise draw 1 on its own row).
    """
    rows = plan.steps + 2
    x = gaussian.mean.expand(rows, -1).clone()
    x[1] += 1
    draws = iter(range(2, rows))

    def impulse(like: Tensor) -> Tensor:
        z = torch.zeros_like(like)
        z[next(draws)] = 1
        return z

    y = sample(gaussian, x, plan, noise=impulse)
    a, g = y[1] - y[0], y[2:] - y[0]
    return y[0], a**2 * (gaussian.var + plan.sigmas[0] ** 2) + (g**2).sum(0)


def w2_to_data(gaussian: Gaussian, plan: Plan, sigma: float = 0.0) -> float:
    """W2 (per-dimension RMS) between the exact law of the plan's output and the data law noised to sigma."""
    mean, var = exact_law(gaussian, plan)
    target = (gaussian.var + sigma**2).sqrt()
    return float((((mean - gaussian.mean) ** 2 + (var.sqrt() - target) ** 2).mean()).sqrt())


def sde_table(
    gaussian: Gaussian, schedule: DiscreteSchedule, kinds=tuple(DISCRETIZATIONS), nfe_counts=NFE_COUNTS
) -> dict[tuple[str, str], dict[int, tuple[float, float | None]]]:
    """(kind, solver) -> NFE -> (W2 to the data law, W2 to the law at the plan's last sigma or None),
    for every stochastic solver."""
    table: dict[tuple[str, str], dict[int, tuple[float, float | None]]] = {}
    for kind in kinds:
        for solver in (name for name, entry in SOLVERS.items() if entry.stochastic):
            row = table.setdefault((kind, solver), {})
            for nfe in nfe_counts:
                plan = plan_at_nfe(solver, kind, nfe, schedule)
                if plan is not None:
                    end = plan.sigmas[-1]
                    row[nfe] = (
                        w2_to_data(gaussian, plan),
                        w2_to_data(gaussian, plan, end) if end > 0 else None,
                    )
    return table


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


def format_table(table: dict, nfe_counts: Sequence[int] = NFE_COUNTS) -> list[str]:
    """One line per (discretization, solver), one cell per NFE: "x0" or "x0/end"."""
    lines = [f"{'discretization':<17}{'solver':<18}" + "".join(f"{f'NFE {n}':>16}" for n in nfe_counts)]
    for (kind, solver), row in table.items():
        cells = []
        for n in nfe_counts:
            to_0, to_end = row.get(n, (None, None))
            cell = "-" if to_0 is None else f"{to_0:.4f}" + ("" if to_end is None else f"/{to_end:.4f}")
            cell += "!" if to_0 is not None and to_0 > DIVERGED else ""
            cells.append(f"{cell:>16}")
        lines.append(f"{kind:<17}{solver:<18}" + "".join(cells))
    return lines


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    return plt


def family(solver: str) -> str:
    """The solver's family in `FAMILIES`, "other" for a rule registered elsewhere."""
    return next((name for name, pattern in FAMILIES if re.fullmatch(pattern, solver)), "other")


def _styles(solvers: Sequence[str]) -> dict[str, tuple[str, str]]:
    """solver -> (colour, line style), family by family: one colour per family, one line style per member."""
    families = [*(name for name, _ in FAMILIES), "other"]
    styles, members = {}, {}
    for solver in sorted(solvers, key=lambda s: families.index(family(s))):
        kind = family(solver)
        k = members[kind] = members.get(kind, -1) + 1
        styles[solver] = (f"C{families.index(kind)}", LINE_STYLES[k % len(LINE_STYLES)])
    return styles


def _plot(path: str, ode: dict, sde: dict, curves: dict, solver: str, replace: bool) -> None:
    """One panel per discretization, error against NFE for every solver, then the local-error curves;
    one legend beside the panels. A panel with a diverged curve (an error above DIVERGED) ends its axis
    a little above the other curves' highest error: the diverged curve's points beyond it are drawn at
    that edge as triangles with their values, so it cannot flatten the others."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    rows = {**ode, **sde}
    kinds = list(dict.fromkeys(kind for kind, _ in rows))
    styles = _styles(list(dict.fromkeys(name for _, name in rows)))
    columns = 4
    fig, axes = plt.subplots(math.ceil((len(kinds) + 1) / columns), columns, figsize=(18, 14), squeeze=False)
    panels = axes.flatten()
    for panel, kind in zip(panels, kinds, strict=False):
        lines = {
            name: sorted((n, cell[0]) for n, cell in row.items())
            for (k, name), row in rows.items()
            if k == kind
        }
        diverged = {name for name, points in lines.items() if any(e > DIVERGED for _, e in points)}
        kept = [e for name, points in lines.items() if name not in diverged for _, e in points]
        top = 1.5 * max(kept, default=DIVERGED) if diverged else math.inf
        for name, points in lines.items():
            if not points:
                continue
            colour, style = styles[name]
            nfe, errors = zip(*points, strict=True)
            panel.loglog(nfe, [min(e, top) for e in errors], style, color=colour, marker=".")
            for k, (n, e) in enumerate(points):
                if e > top:  # the value below the triangle, staggered so neighbours do not overlap
                    panel.plot(n, top, "^", color=colour, markersize=8)
                    below = (0, -12 - 9 * (k % 2))
                    panel.annotate(f"{e:.3g}", (n, top), textcoords="offset points", xytext=below,
                                   ha="center", fontsize=7, color=colour)  # fmt: skip
        if diverged:
            panel.set_ylim(top=top)
        panel.set(title=kind, xlabel="NFE", ylabel="RMSE to x(0) (SDE solvers: W2)")
        panel.set_xticks(NFE_COUNTS, [str(n) for n in NFE_COUNTS])
        panel.minorticks_off()
    lte = panels[len(kinds)]
    for label, (sigmas, errs) in curves.items():
        lte.loglog(sigmas, errs, "o-", label=label)
    lte.invert_xaxis()
    lte.set(xlabel="sigma at interval start", ylabel="local error (RMSE)", title=f"Local error, {solver}")
    lte.legend(fontsize=8)
    for panel in panels[len(kinds) + 1 :]:
        panel.axis("off")
    handles = [Line2D([], [], color=c, linestyle=s, marker=".") for c, s in styles.values()]
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.legend(handles, list(styles), loc="center left", bbox_to_anchor=(0.88, 0.5), fontsize=9,
               frameon=False, title="solver (colour: family)")  # fmt: skip
    kind = Path(path).suffix.lstrip(".") or "png"
    safeio.write_atomically(path, lambda file: fig.savefig(file, dpi=110, format=kind), replace=replace)


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
        type=cli.one_of(lambda: sorted(n for n, s in SOLVERS.items() if not s.stochastic), "ODE solver"),
        metavar="NAME",
        help="solver for the local-error curves (default: dpmpp_1s)",
    )
    parser.add_argument(
        "--guidance",
        action="store_true",
        help="instead: each guidance variant's error at 4-10 NFE on an exact guided mixture",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves (needs matplotlib)")
    parser.add_argument("--force", action="store_true", help="replace an existing --plot file")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    return cli.run(parser.prog, analyze, args, errors=(ValueError, OSError, ImportError))


def analyze(args: argparse.Namespace) -> None:
    if args.plot:
        _pyplot()  # refuse before the work, not after it
        safeio.check_target(args.plot, "plot", args.force)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tens of thousands of tiny calls: a thread pool only adds overhead
    try:
        (_guidance_report if args.guidance else _report)(args)
    finally:
        torch.set_num_threads(threads)


def _report(args: argparse.Namespace) -> None:
    schedule = DiscreteSchedule.sd()
    model = GaussianMixture.default(dim=args.dim, seed=args.seed)
    x = model.sample(args.samples, schedule.sigma_max, torch.Generator().manual_seed(args.seed + 1))
    gaussian = moment_matched(model)
    print(f"Gaussian mixture ({len(model.weights)} components, dim {args.dim}), {args.samples} samples, "
          f"SD noise table sigma {schedule.sigma_max:.4f} -> {schedule.sigma_min:.4f}")  # fmt: skip
    print("Analytic denoisers: guidance and FreeU in the plans have no effect here.")
    print(*(f"  {note}" for note in NOTES), sep="\n")

    ode = ode_table(model, x, schedule)
    print("\nODE solvers on the mixture, RMSE to x(0) [/ x(end)]:")
    print(*format_table(ode), sep="\n")
    sde = sde_table(gaussian, schedule)
    print("\nStochastic solvers on the Gaussian with the mixture's mean and variance, W2 to the data law")
    print("[/ the law at sigma_end]:")
    print(*format_table(sde), sep="\n")

    curves = lte_curves(model, x, schedule, args.lte_solver)
    print(f"\nLocal truncation error per interval ({args.lte_solver}, one step vs 200 sub-steps):")
    for label, (sigmas, errs) in curves.items():
        print(f"  {label}")
        for s, e in zip(sigmas, errs, strict=True):
            print(f"    from sigma {s:8.4f}: {e:.5f}")
    if args.plot:
        _plot(args.plot, ode, sde, curves, args.lte_solver, args.force)
        print(f"\nwrote {args.plot}")


def _guidance_report(args: argparse.Namespace) -> None:
    schedule = DiscreteSchedule.sd()
    model = ConditionalMixture.default(dim=args.dim, seed=args.seed)
    x = model.unconditional.sample(
        args.samples, schedule.sigma_max, torch.Generator().manual_seed(args.seed + 1)
    )
    rows = guidance_analysis.plans()
    scale = rows[0].guidance[0]
    print(f"Conditional Gaussian mixture (dim {args.dim}), {args.samples} samples, CFG scale {scale:g}")
    print(guidance_analysis.__doc__.split("\n\n")[1].replace("\n", " "))
    table = guidance_analysis.guidance_table(model, x, rows)
    print("\nRMSE to the 200-step solution of the same guided ODE:")
    print(*guidance_analysis.format_guidance_table(table), sep="\n")
    if args.plot:
        _plot_guidance(args.plot, table)
        print(f"\nwrote {args.plot}")


def _plot_guidance(path: str, table: dict[str, dict[str, float]]) -> None:
    plt = _pyplot()
    variants = list(next(iter(table.values())))
    bases = guidance_analysis.BASELINES
    fig, axes = plt.subplots(1, len(bases), figsize=(7 * len(bases), 5), squeeze=False)
    for panel, base in zip(axes[0], bases, strict=True):
        for k, variant in enumerate(variants):
            color = f"C{k}"
            points = [(n, table[f"{base}-{n}"][variant]) for n in guidance_analysis.NFE_COUNTS]
            panel.semilogy(*zip(*points, strict=True), "-", marker=".", color=color, label=variant)
            presets = [(int(p.rsplit("-", 1)[1]), table[p][variant]) for p in guidance_analysis.PRESETS]
            panel.semilogy(*zip(*presets, strict=True), "*", markersize=10, color=color)
        panel.set(
            title=f"{base} (lines), paper presets (stars)", xlabel="NFE", ylabel="RMSE to the guided ODE"
        )
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
