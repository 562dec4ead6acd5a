"""The schedule search (solvers/search/): the DP against brute force, the call counts, the plan it writes,
DMN against its authors' formula and scipy, and the gain over the presets on held-out samples.

Small problems on the exact Gaussian-mixture denoiser under SD's noise table, one CPU thread (these
are many small float64 ops, which two threads on a shared machine only slow down).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from schedule import DiscreteSchedule, time_uniform
from solvers import Plan, PlanError, Searched, sample
from solvers.analytic import GaussianMixture
from solvers.analyze import convergence_order
from solvers.eval_shift import EVAL_SHIFT, MAX_SHIFT
from solvers.presets import BASELINE_DISCRETIZATIONS
from solvers.search import (
    Counted,
    Problem,
    baselines,
    brute_force,
    candidate_grid,
    compare,
    dmn_plan,
    estimate,
    gain,
    presets_at,
    rules,
    search,
    solve_teacher,
    whole_menu,
)
from solvers.search.dmn import bound, dmn_sigmas
from solvers.search.dp import dynamic_program, objective, paths
from tests.helpers import one_thread

SD = DiscreteSchedule.sd()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


class Boosted:
    """The mixture with an option `boost` that scales D's departure from x: an on/off bit that matters."""

    def __init__(self, model: GaussianMixture):
        self.model = model

    def __call__(self, x, sigma, boost=None, **options):
        d = self.model(x, sigma)
        return d if boost is None else x + (d - x) * boost

    def solve(self, x, sigma_from, sigma_to):
        return self.model.solve(x, sigma_from, sigma_to)


def start(n: int, dim: int, seed: int) -> torch.Tensor:
    return (
        torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SD.sigma_max
    )


@pytest.fixture(scope="module")
def tiny():
    """A 12-point grid (11 levels + 0) and the exact teacher of 32 samples of an 8-dim mixture."""
    model = Boosted(GaussianMixture.default(dim=8))
    return model, solve_teacher(model, start(32, 8, 0), candidate_grid(SD, 11), {})


def problem(tiny, solver, nfe=3, bit=False):
    model, teacher = tiny
    return Problem(Counted(model), teacher, solver, nfe, {}, ("boost", 1.05) if bit else None)


# -- the DP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["local", "global"])
@pytest.mark.parametrize(
    "solver, bit", [("dpmpp_1s", False), ("dpmpp_1s", True), ("heun", False), ("euler,heun,dpmpp_2s", False)]
)
def test_dp_equals_brute_force_for_one_step_rules(tiny, solver, bit, cost):
    """3 NFE on 12 grid points: every path (165 for DPM++1S, 1320 with the bit, more with a rule per
    step) scored exactly; for global by `solvers.sample` itself. One-step rules carry no history, so the
    DP is exact for local (additive) and, here, for global too (its one-state-per-node assumption holds
    on this problem), also when each step picks its rule among one- and two-call ones."""
    p = problem(tiny, solver, bit=bit)
    path, value = dynamic_program(p, cost)
    best, best_value = brute_force(p, cost)
    assert path == best
    assert value == pytest.approx(best_value, rel=1e-12)  # the DP's own bookkeeping, to rounding


@pytest.mark.parametrize("cost", ["local", "global"])
def test_the_multistep_history_approximation_stays_near_the_optimum(tiny, cost):
    """DPM++2M reads the previous step's D, so a step's cost depends on the path before it; each node
    carries the history of its best path only. Measured on this problem: the DP's path is the
    optimum's runner-up for global (0.1048 vs 0.1008, rank 2 of 165) and third for local (0.3317 vs
    0.3176). Pinned: within 10% of the optimum and among the best 5 of 165, and the DP's value is the
    exact cost of the path it returns."""
    p = problem(tiny, "dpmpp_2m")
    path, value = dynamic_program(p, cost)
    _, best_value = brute_force(p, cost)
    values = sorted(objective(p, other, cost) for other in paths(p))
    assert value == pytest.approx(objective(p, path, cost), rel=1e-12)
    assert best_value <= value <= 1.10 * best_value
    assert values.index(objective(p, path, cost)) < 5 and len(values) == 165


def test_the_terminal_level_is_free_and_the_budget_exact(tiny):
    """A plan ends at any sigma_N > 0 keeping x_N, or with a step into 0 (one call, whatever the
    solver), and spends exactly the budget: with Heun's two calls an odd budget ends at 0, an even one
    keeps x_N."""

    def ends(solver, nfe):
        p = problem(tiny, solver, nfe)
        assert {p.plan(p.sigmas(path), path.bits, path.rules).nfe for path in paths(p)} == {nfe}
        return {p.grid[path.nodes[-1]] > 0 for path in paths(p)}

    assert ends("dpmpp_1s", 3) == {True, False}
    assert ends("heun", 3) == {False} and ends("heun", 4) == {True}


@pytest.mark.parametrize("cost", ["local", "global"])
@pytest.mark.parametrize(
    "solver, bit",
    [
        ("dpmpp_2m", True),
        ("heun", False),
        ("dpmpp_2s", True),
        ("auto", False),
        ("heun,dpmpp_2m,unipc_bh1_3", True),
    ],
)
def test_the_estimate_counts_every_denoiser_call(tiny, solver, bit, cost):
    model, teacher = tiny
    expected = estimate(teacher.grid, solver, 4, cost=cost, bit=bit)
    counted = Counted(model)
    result = search(counted, teacher, solver=solver, nfe=4, cost=cost, bit=("boost", 1.05) if bit else None)
    dp, *refinement = result.stages
    assert (expected.teacher, dp.calls) == (0, expected.dp)
    assert sum(stage.calls for stage in refinement) <= expected.refine
    assert counted.calls == sum(stage.calls for stage in result.stages)


def test_a_fine_teacher_solve_counts_its_calls_and_converges_to_the_exact_solution(tiny):
    """40 levels, M DPM++2M steps per interval (39 M + 1 calls). At the positive levels the error to the
    exact solution falls at second order in M (measured 8.6e-4, 2.2e-4, 5.6e-5 for M = 2, 4, 8: slope
    1.98); x(0) stays 1.2e-3 RMS away whatever M, the last step from sigma_min into 0 returning
    D(x; sigma_min) as every sampler ending at 0 does: within 2e-3."""
    model, _ = tiny
    grid, x = candidate_grid(SD, 40), start(32, 8, 0)
    exact = solve_teacher(model, x, grid, {})
    errors = []
    for substeps in (2, 4, 8):
        counted = Counted(model)
        fine = solve_teacher(counted, x, grid, {}, solver="dpmpp_2m", substeps=substeps)
        assert counted.calls == estimate(grid, "dpmpp_2m", 5, teacher="dpmpp_2m", substeps=substeps).teacher
        assert counted.calls == 39 * substeps + 1 and fine.states.shape == exact.states.shape == (41, 32, 8)
        assert ((fine.x0 - exact.x0) ** 2).mean().sqrt() < 2e-3
        errors.append(float(((fine.states[:-1] - exact.states[:-1]) ** 2).mean().sqrt()))
    assert convergence_order([2, 4, 8], errors) == pytest.approx(2.0, abs=0.2)


# -- the plan it writes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tiny):
    model, teacher = tiny
    return search(model, teacher, solver="dpmpp_2m", nfe=4, options={"guidance": 5.5}, seed=3, model="m:f")


def test_the_plan_records_the_search_and_round_trips_exactly(searched):
    plan = searched.plan
    assert plan.name == "searched-2m-4" and plan.nfe == 4 and plan.final == "keep"
    assert plan.solver == ("dpmpp_2m",) * plan.steps and plan.guidance == (5.5,) * plan.steps
    assert plan.discretization == Searched(
        N=plan.steps, solver="dpmpp_2m", nfe=4, cost="global", grid=11, samples=32, seed=3,
        stages=("dp", "grid", "polish"), teacher="exact", substeps=0, model="m:f",
    )  # fmt: skip
    assert Plan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json())["discretization"]["stages"] == ["dp", "grid", "polish"]
    assert "searched dpmpp_2m 4 NFE: global cost on 11 levels + 0, 32 samples (seed 3)" in plan.describe()


def test_every_stage_lowers_the_search_cost_and_keeps_the_budget(searched, tiny):
    model, teacher = tiny
    costs = [stage.cost for stage in searched.stages]
    assert [stage.name for stage in searched.stages] == ["dp", "grid", "polish"]
    assert costs == sorted(costs, reverse=True)
    for stage in searched.stages:
        assert stage.plan.nfe == 4 and stage.plan.sigmas[0] == SD.sigma_max
        x = sample(model, teacher.states[0], stage.plan)
        assert float(((x - teacher.x0) ** 2).mean().sqrt()) == pytest.approx(stage.cost, rel=1e-12)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"cost": "median"}, "cost must be one of local, global"),
        ({"stages": ["grid"]}, "stages must be dp, then any of grid, polish"),
        ({"stages": ["dp", "polish", "grid"]}, "stages must be dp, then any of grid, polish"),
        ({"grid": 1}, "grid must be an integer >= 2"),
        ({"samples": 0}, "samples must be an integer >= 1"),
        ({"decoded": "yes"}, "decoded must be true or false"),
        ({"solver": ""}, "solver must be a non-empty string"),
        ({"unknown": 1}, "unknown fields \\['unknown'\\]"),
    ],
)
def test_a_bad_search_record_in_a_plan_file_is_refused(searched, change, message):
    data = json.loads(searched.plan.to_json())
    data["discretization"].update(change)
    with pytest.raises(PlanError, match=f"plan discretization: .*{message}"):
        Plan.from_dict(data)


def test_a_searched_plan_file_is_read_like_any_plan(searched, tmp_path):
    from pipeline import read_plan_file

    path = tmp_path / "plan.json"
    path.write_text(searched.plan.to_json())
    assert read_plan_file(path) == searched.plan


# -- a rule per step and the evaluation level ------------------------------------------------------------


@pytest.fixture(scope="module")
def mixture_3nfe():
    """A 16-level grid, the exact teachers of 64 search and 512 held-out samples of an 8-dim mixture."""
    model = CoarseSolve.default(dim=8)
    search_teacher = solve_teacher(model, start(64, 8, 0), candidate_grid(SD, 16), {})
    return model, search_teacher, solve_teacher(model, start(512, 8, 1), (SD.sigma_max, 0.0), {})


def test_auto_chooses_the_rule_per_step_and_beats_the_single_solver_search(mixture_3nfe):
    """3 NFE, dp + grid: the plan of `auto` mixes rules, runs as any plan (its JSON read back and
    sampled gives the cost the search saw) and is below DPM++2M's searched plan on held-out samples.
    Measured 0.132 vs 0.180 held out (DEIS-2, UniPC bh1-1, iPNDM-v); pinned: 10% below."""
    model, teacher, held = mixture_3nfe
    held_out = {}
    for solver in ("dpmpp_2m", "auto"):
        result = search(model, teacher, solver=solver, nfe=3, stages=("dp", "grid"))
        held_out[solver] = Problem(Counted(model), held, solver, 3, {}).score(result.plan)
    plan = Plan.from_json(result.plan.to_json())
    assert plan == result.plan and plan.nfe == 3 and len(set(plan.solver[: plan.steps - 1])) > 1
    assert plan.discretization.solver == "auto" and plan.discretization.rules == rules("auto")
    assert "searched auto (15 rules per step) 3 NFE" in plan.describe()
    x = sample(model, teacher.states[0], plan)
    assert float(((x - teacher.x0) ** 2).mean().sqrt()) == pytest.approx(result.stages[-1].cost, rel=1e-12)
    assert held_out["auto"] <= 0.9 * held_out["dpmpp_2m"], held_out


def test_the_shift_stage_gains_on_held_out_samples_where_the_sigmas_are_done(mixture_3nfe):
    """DPM++2M at 3 NFE: after dp, grid and polish have placed the sigmas, each step's eval_shift takes
    the held-out RMSE from 0.162 to 0.121 (measured); pinned: at least 10% lower, and the plan records
    one shift per step, each within the bound and evaluating D inside the noise table."""
    model, teacher, held = mixture_3nfe
    result = search(model, teacher, solver="dpmpp_2m", nfe=3, stages=("dp", "grid", "polish", "shift"))
    scored = {
        stage.name: Problem(Counted(model), held, "dpmpp_2m", 3, {}).score(stage.plan)
        for stage in result.stages
    }
    assert scored["shift"] <= 0.9 * scored["polish"], scored
    shifts = result.plan.options[EVAL_SHIFT]
    assert len(shifts) == result.plan.steps and any(shifts) and max(map(abs, shifts)) <= MAX_SHIFT
    levels = [sigma * math.exp(shift) for sigma, shift in zip(result.plan.sigmas, shifts, strict=False)]
    assert all(SD.sigma_min <= level <= SD.sigma_max for level in levels)  # where a real model's table is
    assert "eval_shift" not in result.stages[-2].plan.options  # the earlier stages' plans are plain


def test_eval_shift_round_trips_and_is_bitwise_neutral_at_zero():
    """A plan's eval_shift column reads back from JSON exactly; at 0 on every step the run is bitwise the
    plan without it, through a denoiser that takes only the options it knows (the loop consumes the
    shift: the denoiser never sees it)."""
    model = GaussianMixture.default(dim=4)

    def plain(x, sigma, **options):  # a network's options; the loop keeps eval_shift to itself
        assert "eval_shift" not in options
        return model(x, sigma)

    plan = Plan([14.6, 3.0, 0.7, 0.03], ["dpmpp_2m", "unipc_bh1_3", "euler"], final="keep")
    shifted = plan.replace(eval_shift=[0.25, -0.125, 0.0])
    assert Plan.from_json(shifted.to_json()) == shifted
    assert json.loads(shifted.to_json())["options"]["eval_shift"] == [0.25, -0.125, 0.0]
    x = start(8, 4, 2)
    assert torch.equal(sample(plain, x, plan.replace(eval_shift=0.0)), sample(plain, x, plan))
    assert not torch.equal(sample(plain, x, shifted), sample(plain, x, plan))
    # the shift is the level D is evaluated at, nothing else: step 0 of `shifted` sees D(x; 14.6 e^0.25)
    seen = []
    sample(lambda x, sigma, **options: seen.append(sigma) or model(x, sigma), x, shifted)
    assert seen == [14.6 * math.exp(0.25), 3.0 * math.exp(-0.125), 0.7]


@pytest.mark.parametrize(
    "value, message",
    [(2.0, "eval_shift of step 1: must lie in [-1, 1], got 2.0"),
     ("0.1", "eval_shift of step 1: must be a number (a shift in log sigma, 0 for none), got '0.1'"),
     (True, "eval_shift of step 1: must be a number (a shift in log sigma, 0 for none), got True")],
)  # fmt: skip
def test_a_bad_eval_shift_is_refused_naming_the_step(value, message):
    with pytest.raises(PlanError, match=re.escape(message)):
        Plan([14.6, 1.0, 0.0], "dpmpp_2m", eval_shift=value)


# -- DMN -------------------------------------------------------------------------------------------------


def published_bound(lambdas: np.ndarray) -> float:
    """StepOptim.sel_lambdas_lof_obj of LD3's samplers/general_solver.py, as its authors wrote it
    (latent models: data error sigma^2 / alpha), transcribed loop by loop."""
    n_steps, h, e = len(lambdas) - 1, np.diff(lambdas), np.exp(lambdas)
    alpha, sigma = 1 / np.sqrt(1 + np.exp(-2 * lambdas)), 1 / np.sqrt(1 + np.exp(2 * lambdas))
    d = sigma**2 / alpha

    def h0(v):
        return np.exp(v) - 1

    def h1(v):
        return np.exp(v) * v - h0(v)

    def h2(v):
        return np.exp(v) * v * v - 2 * h1(v)

    trunc, res, c = (3 if n_steps <= 7 else 0), 0.0, np.zeros(n_steps)
    for s in range(n_steps):
        if s in (0, n_steps - 1):
            res += abs((e[s + 1] - e[s]) * d[s])
        elif s in (1, n_steps - 2):
            n = s - 1
            j0 = -e[n + 1] * h1(h[n + 1]) / h[n]
            j1 = e[n + 1] * (h1(h[n + 1]) + h[n] * h0(h[n + 1])) / h[n]
            if s >= trunc:
                c[n] += d[n] * j0
                c[n + 1] += d[n + 1] * j1
            else:
                res += np.sqrt((d[n] * j0) ** 2 + (d[n + 1] * j1) ** 2)
        else:
            n = s - 2
            j0 = e[n + 2] * (h2(h[n + 2]) + h[n + 1] * h1(h[n + 2])) / (h[n] * (h[n] + h[n + 1]))
            j1 = -e[n + 2] * (h2(h[n + 2]) + (h[n] + h[n + 1]) * h1(h[n + 2])) / (h[n] * h[n + 1])
            j2 = (
                e[n + 2]
                * (
                    h2(h[n + 2])
                    + (2 * h[n + 1] + h[n]) * h1(h[n + 2])
                    + h[n + 1] * (h[n] + h[n + 1]) * h0(h[n + 2])
                )
                / (h[n + 1] * (h[n] + h[n + 1]))
            )
            if s >= trunc:
                c[n : n + 3] += d[n : n + 3] * np.array([j0, j1, j2])
            else:
                res += np.sqrt((d[n] * j0) ** 2 + (d[n + 1] * j1) ** 2 + (d[n + 2] * j2) ** 2)
    return res + np.abs(c).sum()


@pytest.mark.parametrize("steps", [2, 3, 5, 7, 8, 10])
def test_dmn_bound_is_the_published_objective(steps):
    """On SD's steps uniform in time (DMN's own start) and on a random monotone lambda list: equal to
    float64 rounding (1e-12 relative)."""
    for lambdas in (
        -time_uniform(steps, SD).log(),
        torch.linspace(-math.log(SD.sigma_max), -math.log(SD.sigma_min), steps + 1)
        + 0.01 * torch.rand(steps + 1),
    ):
        lambdas = lambdas.double().sort().values
        assert bound(lambdas).item() == pytest.approx(published_bound(lambdas.numpy()), rel=1e-12)


@pytest.mark.filterwarnings("ignore:delta_grad == 0.0")  # scipy's quasi-Newton update on a flat stretch
@pytest.mark.parametrize("steps", [4, 5, 6, 8])
def test_dmn_reaches_the_published_optimiser_s_bound(steps):
    """The authors minimise with scipy's trust-constr under a monotonicity constraint; L-BFGS over
    softmax increments reaches the same bound (measured: equal to 1e-11 at 4 and 5 steps, 0.01% lower at
    6, 0.23% higher at 8, where the bound is flat and not smooth), within 1% here."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    start_ = -time_uniform(steps, SD).log().numpy()
    ends = (start_[0], start_[-1])
    constraint = np.zeros((steps, steps - 1))
    for i in range(steps - 1):
        constraint[i, i], constraint[i + 1, i] = 1.0, -1.0
    lower = np.zeros(steps)
    lower[0], lower[-1] = ends[0], -ends[1]
    result = scipy_optimize.minimize(
        lambda inner: published_bound(np.concatenate(([ends[0]], inner, [ends[1]]))),
        start_[1:-1],
        method="trust-constr",
        constraints=[scipy_optimize.LinearConstraint(constraint, lower, np.inf)],
    )
    ours = dmn_sigmas(SD, steps)
    assert ours[0] == SD.sigma_max and ours[-1] == SD.sigma_min and (ours[1:] < ours[:-1]).all()
    assert bound(-ours.log()).item() <= 1.01 * result.fun


def test_dmn_is_a_zero_evaluation_baseline_at_the_budget():
    plan = dmn_plan("dpmpp_2m", 6, SD, {"guidance": 7.5})
    assert plan.name == "dmn-2m-6" and plan.nfe == 6 and plan.sigmas[-1] == SD.sigma_min
    assert dmn_plan("heun", 5, SD, {}) is None  # 2 calls a step: no step count spends exactly 5


def test_a_dmn_plan_whose_optimiser_collapsed_steps_is_left_out(monkeypatch):
    """At 9 steps of order 3 (12 s to solve) L-BFGS drives DMN's bound to sigmas that repeat sigma_max
    and sigma_min: no plan, so the whole menu compares the others. Those sigmas, given directly."""
    collapsed = (SD.sigma_max, SD.sigma_max, SD.sigma_min, SD.sigma_min)
    monkeypatch.setattr(sys.modules["solvers.search.compare"], "_dmn", lambda *_: collapsed)
    assert dmn_plan("deis_3", 3, SD, {}) is None


def test_presets_are_compared_at_the_same_solver_and_nfe():
    """The paper's discretization and every baseline kind of the table, with the searched solver, FreeU
    off, at the step count that spends the budget; then DMN."""
    rows = baselines("dpmpp_2m", 5, SD, {"guidance": 7.5, "freeu": None})
    names = [row.plan.name for row in rows]
    assert names[0] == "paper-5+solver=dpmpp_2m" and names[-1] == "dmn-2m-5"
    assert (
        {"karras-2m-5", "ays-2m-5"}
        <= set(names[1:-1])
        <= {f"{kind}-2m-5" for kind in BASELINE_DISCRETIZATIONS}
    )
    for row in rows:
        assert row.plan.nfe == 5 and set(row.plan.solver) == {"dpmpp_2m"} and row.plan.freeu == (None,) * 5
    heun = presets_at("heun", 5, SD, {})  # two calls a step: the paper's keeps x_N, so no N spends 5
    assert heun and all(plan.nfe == 5 and plan.sigmas[-1] == 0 for plan in heun)


# -- the command -----------------------------------------------------------------------------------------


MIXTURE = "solvers.analytic:GaussianMixture.default"


def command(capsys, *argv: str) -> tuple[int, str, str]:
    from solvers.search.__main__ import main

    try:
        code = main(list(argv))
    except SystemExit as exited:  # argparse
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_searches_an_analytic_denoiser_and_writes_the_plan(capsys, tmp_path):
    out = tmp_path / "plan.json"
    code, stdout, err = command(
        capsys, "--denoiser", MIXTURE, "--shape", "16", "--steps", "3", "--samples", "16", "--held-out", "16",
        "--grid", "6", "--stages", "dp,polish", "--cost", "local", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    # dp: the teacher's D at the 6 levels a step leaves from, and one run of its plan (3); polish: at
    # most 4 halvings x 8 passes x 2 moves x 3 levels runs of 3 calls; scoring: the 2 stages' plans and
    # every fixed plan of the whole menu, 3 calls each
    scoring = 2 * 3 + 3 * len(whole_menu("dpmpp_2m", 3, SD, {}))
    assert lines[:2] == [
        f"python -m solvers.search: dpmpp_2m at 3 NFE on {MIXTURE}: local cost, 6 candidate levels + 0, "
        "stages dp+polish, 16 search samples, 16 held out",
        "cost in denoiser calls: teacher: the exact solution (6 intervals, no denoiser calls), search 9 (dp) "
        f"+ at most 576 (refinement) x 16, scoring {scoring} x 16",
    ]
    plan = Plan.from_json(out.read_text())
    assert plan.nfe == 3 and plan.discretization.model == MIXTURE and plan.discretization.cost == "local"
    assert f"wrote {out}; sample with it: python run_sample.py --plan {out} --prompt ..." in lines


def test_the_command_shows_each_stage_ending_at_100_percent(capsys, monkeypatch):
    """On a terminal one bar per stage, the exact teacher's moving per grid interval; each ends at 100%
    (the refinement's total is only a bound). Elsewhere one line of the report as each stage starts."""
    argv = ["--denoiser", MIXTURE, "--shape", "16", "--steps", "2", "--samples", "8", "--held-out", "8",
            "--grid", "4", "--stages", "dp,grid"]  # fmt: skip
    code, out, err = command(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.splitlines()[2:5] == ["teacher ...", "search (dp+grid) ...", "scoring ..."]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws only on a terminal
    code, _, err = command(capsys, *argv)
    assert code == 0
    assert "teacher: 100%" in err and " 64/64 [" in err  # 4 grid intervals x 16 samples
    assert "search (dp+grid): 100%" in err and "scoring: 100%" in err


def test_auto_reports_the_searched_plan_against_the_best_fixed_plan_of_the_whole_menu(capsys, tmp_path):
    """The first line after the cost is "searched: X; best fixed plan of the whole menu: Y (its name)",
    Y the lowest held-out RMSE of every fixed plan scored (every deterministic solver on every
    discretization at the NFE, the paper's, DMN); the estimate is the one `estimate` gives for auto."""
    out = tmp_path / "plan.json"
    code, stdout, err = command(
        capsys, "--denoiser", MIXTURE, "--shape", "16", "--steps", "3", "--samples", "16", "--held-out", "32",
        "--grid", "6", "--solver", "auto", "--stages", "dp,grid,shift", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    expected = estimate(candidate_grid(SD, 6), "auto", 3, stages=("dp", "grid", "shift"))
    assert f"search {expected.dp} (dp) + at most {expected.refine} (refinement) x 16" in lines[1]
    first = re.fullmatch(
        r"searched: (\d\.\d{5}) \(searched-auto-3\); best fixed plan of the whole menu: (\d\.\d{5}) "
        r"\((\S+)\), [+-]\d+\.\d%",
        lines[6],
    )
    assert lines[2:5] == ["teacher ...", "search (dp+grid+shift) ...", "scoring ..."]
    assert lines[5] == "" and first, lines[6]
    table = stdout[stdout.index("plan   ") : stdout.index("\ntime: ")].splitlines()[1:]
    rows = {line.split()[0]: float(line.split()[-2]) for line in table if line}
    assert rows["shift"] == float(first[1]) and rows[first[3]] == float(first[2]) == min(
        value for name, value in rows.items() if name not in ("dp", "grid", "shift")
    )
    assert {"paper-3", "dmn-3m_exact-3"} & set(rows) and len(rows) > 10  # the paper's, DMN, each solver
    plan = Plan.from_json(out.read_text())
    assert plan.discretization.solver == "auto" and EVAL_SHIFT in plan.options


def plain_denoiser():
    """A user's own denoiser D(x, sigma), without options (the command passes it none)."""
    model = GaussianMixture.default(dim=4)
    return lambda x, sigma: model(x, sigma)


def test_a_plain_denoiser_without_an_exact_solution_gets_a_fine_teacher(capsys):
    code, stdout, err = command(
        capsys, "--denoiser", "tests.solvers.test_search:plain_denoiser", "--shape", "4", "--steps", "2",
        "--samples", "8", "--held-out", "8", "--grid", "4", "--stages", "dp", "--teacher-substeps", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "teacher 7 x 16 samples (dpmpp_2m, 2 per interval)" in stdout  # 3 intervals x 2 + the step into 0
    plan = Plan.from_json(stdout.splitlines()[-1])  # no --out: the plan's JSON, last
    assert (plan.discretization.teacher, plan.discretization.substeps) == ("dpmpp_2m", 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give one of --denoiser MODULE:CALLABLE (with --shape) or --weights PATH (with --prompts)"),
        (["--denoiser", MIXTURE], "--denoiser needs --shape, the shape of one sample, e.g. --shape 16"),
        (["--denoiser", "nowhere:f", "--shape", "4"], "--denoiser nowhere:f: cannot import nowhere"),
        (["--denoiser", "solvers.analytic", "--shape", "4"], "is not MODULE:CALLABLE, e.g. solvers.analytic"),
        (["--denoiser", "solvers.analytic:Nothing", "--shape", "4"], "solvers.analytic has no Nothing"),
        (["--denoiser", MIXTURE, "--shape", "4"], "fails on samples of --shape 4: The size of tensor"),
        (["--denoiser", MIXTURE, "--shape", "16", "--prompts", "p.txt"], "--prompts goes with --weights"),
        (["--denoiser", "tests.solvers.test_search:plain_denoiser", "--shape", "4", "--freeu-bit"],
         "--freeu-bit: the denoiser of tests.solvers.test_search:plain_denoiser takes no freeu option"),
        (["--denoiser", MIXTURE, "--shape", "16", "--stages", "grid"], "stages must be dp, then any of grid"),
        (["--denoiser", MIXTURE, "--shape", "16", "--solver", "dpm_fast"], "unknown solver 'dpm_fast'"),
        (["--denoiser", MIXTURE, "--shape", "16", "--solver", "aut"],
         "unknown solver 'aut'; did you mean auto?"),
        (["--denoiser", MIXTURE, "--shape", "16", "--solver", "euler,dpmpp2m"],
         "unknown solver 'dpmpp2m'; did you mean dpmpp_2m or "),
        (["--denoiser", MIXTURE, "--shape", "16", "--solver", "euler,euler"], "'euler,euler' names a rule"),
        (["--denoiser", MIXTURE, "--shape", "16", "--solver", "euler,euler_a"],
         "euler_a adds noise at every step; the search compares deterministic paths only"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_refusals_before_any_work(capsys, argv, message):
    code, stdout, err = command(capsys, *argv, "--steps", "3")
    assert (code, stdout) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith("python -m solvers.search: error: ") and message in err


def test_a_solver_list_takes_a1111_names_as_the_single_solver_flag_does():
    from solvers.search.__main__ import build_parser

    def solver(text: str) -> str:
        return build_parser().parse_args(["--steps", "5", "--solver", text]).solver

    assert solver("DPM++ 2M") == "dpmpp_2m" and solver("auto") == "auto"
    assert solver("UniPC,DPM++ 2M, euler") == "unipc_bh1_3,dpmpp_2m,euler"


def test_an_existing_plan_file_is_never_replaced(capsys, tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("mine")
    code, _, err = command(capsys, "--denoiser", MIXTURE, "--shape", "16", "--steps", "3", "--out", str(out))
    assert code == 2 and out.read_text() == "mine"
    assert f"--out {out} exists; pass another file name (nothing written is replaced)" in err


def test_the_analytic_command_never_loads_the_real_weights_side():
    code = (
        "import runpy, sys\nsys.argv = ['x', '--help']\ntry:\n    runpy.run_module('solvers.search', "
        "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('pipeline.search' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "False"


# -- the proof: searched plans against the presets, on held-out samples ---------------------------------


class CoarseSolve(GaussianMixture):
    """The mixture, its exact solution integrated with RK4 steps of 0.2 in log sigma instead of 0.01:
    on 256 samples of the 128-dim mixture 2.5e-5 RMS (3.6e-4 at most) from the finer solution, a
    hundredth of the smallest difference compared here, at a twentieth of the cost (the gains below are
    the same with either to 0.1 points)."""

    def solve(self, x, sigma_from, sigma_to, max_step=0.2):
        return super().solve(x, sigma_from, sigma_to, max_step)


@pytest.mark.slow
def test_the_searched_plan_beats_every_preset_on_held_out_samples():
    """GaussianMixture.default(dim=128), searched on 512 samples with the command's defaults (40 levels,
    global cost, dp + grid + polish), scored on 2048 others against the paper's discretization and
    every baseline with the same solver at the same NFE.

    Measured (1 - RMSE / best preset's): DPM++2M 4-10 NFE +40.7 +27.4 +23.5 +15.1 +6.2%, DPM++1S
    +23.0 +22.7 +17.8 +20.6 +18.7% (with 1024 held-out samples 2M at 10 NFE is only +0.8%: fewer would
    not tell). Pinned: the issue's claims, at least 25% (2M) and 15% (1S) lower at
    5 NFE and no worse anywhere; each stage lowers the search samples' cost. (On the 16-dim default
    mixture 1S gains only ~10% at 5 NFE: the paper's own 5-step 1S recipe is close to the best fixed
    schedule there; benchmarks/RESULTS.md.)"""
    model = CoarseSolve.default(dim=128)
    teacher = solve_teacher(model, start(512, 128, 0), candidate_grid(SD, 40), {})
    held = solve_teacher(model, start(2048, 128, 1), (SD.sigma_max, 0.0), {})
    gains = {}
    for solver in ("dpmpp_2m", "dpmpp_1s"):
        for nfe in (4, 5, 6, 8, 10):
            result = search(model, teacher, solver=solver, nfe=nfe)
            costs = [stage.cost for stage in result.stages]
            assert costs == sorted(costs, reverse=True)
            held_out = Problem(Counted(model), held, solver, nfe, {})
            gains[solver, nfe] = gain(compare(result, held_out, baselines(solver, nfe, SD, {})))
    assert gains["dpmpp_2m", 5] >= 0.25 and gains["dpmpp_1s", 5] >= 0.15, gains
    assert min(gains.values()) >= 0, gains
