"""Truncation-error analysis: the paper's claim about its schedule, and the analysis command."""

from itertools import pairwise

import pytest
import torch

from schedule import DISCRETIZATIONS, DiscreteSchedule, karras
from solvers import SOLVERS, Plan, analyze, generator_noise, guidance_analysis, sample
from solvers.analytic import GaussianMixture
from tests.reference.samplers import gits_ipndm

SD = DiscreteSchedule.sd()


@pytest.fixture(scope="module")
def mixture_and_start():
    model = GaussianMixture.default()
    return model, model.sample(16, SD.sigma_max, torch.Generator().manual_seed(1))


def test_paper_schedule_evens_out_the_local_truncation_error_that_karras_concentrates(mixture_and_start):
    """The property section 3.1 relies on: the global error is bounded by the largest local error
    (||e_N|| <= E max_i ||T_i||), so a schedule should even the local errors out instead of
    spending steps where they are tiny.

    Found true on the exact Gaussian-mixture model under SD's table (DPM++1S, one step vs 200
    sub-steps, 16 samples, seed 1):
    - paper-8: 0.021 0.027 0.029 0.028 0.031 0.023 0.018 0.034 (max/min 1.9)
    - Karras rho=7, 8 steps to 0: 0.013 0.028 0.057 0.100 0.059 0.036 0.0076 0.0011 (peak at
      sigma 1.9; its last two intervals, below sigma 0.11, make < 8% of the peak error).
    The paper's largest local error is 3x smaller than Karras's (seed 2: 0.029 vs 0.091).
    """
    model, x = mixture_and_start
    curves = analyze.lte_curves(model, x, SD, "dpmpp_1s")
    paper = curves["paper-8"][1]
    sigmas_k, karras = curves["karras-8 (rho 7, to 0)"]
    assert max(paper) < 0.5 * max(karras)
    assert max(paper) / min(paper) < 2.5
    peak = karras.index(max(karras))
    assert 0.5 < sigmas_k[peak] < 5
    assert max(karras[-2:]) < 0.1 * max(karras)


def test_local_errors_vanish_with_finer_steps(mixture_and_start):
    # Halving a DPM++1S interval (log-uniformly) cuts its local error ~4x (order 2): between 3x and 5x.
    model, x = mixture_and_start
    coarse = analyze.local_errors(model, x, [2.0, 1.0], "dpmpp_1s")[0]
    fine = analyze.local_errors(model, x, [2.0, 2**0.5], "dpmpp_1s")[0]
    assert 3 < coarse / fine < 5


def test_analyze_command_prints_every_solver_and_discretization_and_draws_the_curves(tmp_path, capsys):
    # One row per discretization x solver (the rows were paper-N and three baselines before the
    # solver menu grew), a column per NFE, what each number measures, and the local-error curves.
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert analyze.main(["--samples", "8", "--dim", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("discretization"))
    assert header.split()[3::2] == [str(n) for n in analyze.NFE_COUNTS]
    for kind in DISCRETIZATIONS:
        for solver in SOLVERS:
            [row] = [line for line in lines if line.split()[:2] == [kind, solver]]
            assert len(row.split()) == 2 + len(analyze.NFE_COUNTS)
    for note in analyze.NOTES:
        assert note in out
    paper_8 = next(line for line in lines if line.split()[:2] == ["paper", "dpmpp_2m"]).split()[5]
    karras_8 = next(line for line in lines if line.split()[:2] == ["karras", "dpmpp_2m"]).split()[5]
    assert "/" in paper_8 and "/" not in karras_8  # the paper stops at sigma_stop > 0, Karras at 0
    assert "Local truncation error per interval (dpmpp_1s" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_nfe_that_no_plan_of_a_2_call_solver_makes_is_left_out():
    # Heun into 0: 2 (N - 1) + 1 calls, so only odd NFE; ending at sigma_stop > 0: 2 N, only even.
    assert analyze.plan_at_nfe("heun", "karras", 5, SD).steps == 3
    assert analyze.plan_at_nfe("heun", "karras", 4, SD) is None
    assert analyze.plan_at_nfe("heun", "paper", 4, SD).steps == 2
    assert analyze.plan_at_nfe("dpmpp_2m", "gits", 1, SD) is None  # GITS starts at 2 steps


def test_the_exact_law_of_a_gaussian_run_matches_many_samples():
    # The affine-propagation law against 20000 sampled runs of Euler a: agreement within the
    # sampling error (4 standard errors of the mean and of the variance).
    gaussian = analyze.moment_matched(GaussianMixture.default(dim=3))
    plan = Plan(karras(6, SD.sigma_min, SD.sigma_max), "euler_a", guidance=1.0)
    mean, var = analyze.exact_law(gaussian, plan)
    x = gaussian.sample(20000, SD.sigma_max, torch.Generator().manual_seed(0))
    out = sample(gaussian, x, plan, noise=generator_noise(torch.Generator().manual_seed(1)))
    assert ((out.mean(0) - mean).abs() < 4 * (var / 20000).sqrt()).all()
    assert ((out.var(0) - var).abs() < 4 * var * (2 / 20000) ** 0.5).all()


def test_convergence_order_fits_the_slope():
    errors = [3.0 / n**2 for n in (4, 8, 16)]
    assert analyze.convergence_order([4, 8, 16], errors) == pytest.approx(2.0, abs=1e-12)


def test_ipndm_v_diverges_on_linear_quadratic_exactly_as_the_published_formulas_do(mixture_and_start):
    """Not a bug: ComfyUI's sample_ipndm_v (GITS' ipndm_v_sampler) computes the same variable-step
    weights; on linear_quadratic's 6 steps (three equal steps of 0.12 near sigma_max, then one 13.7
    times longer) their order-4 weights are 211, -632, 640, -218 (7 in all on equal steps), and the
    output blows up. Fixed-weight iPNDM on the same sigmas does not. Same float64 operations in
    another order: equal to 1e-12."""
    model, x = mixture_and_start
    sigmas = DISCRETIZATIONS["linear_quadratic"](N=6).sigmas(SD).tolist()
    ours = sample(model, x, Plan(sigmas, "ipndm_v", guidance=1.0))
    published = gits_ipndm(model, x, sigmas, variable=True)
    assert torch.allclose(ours, published, rtol=1e-12, atol=1e-12)
    exact = analyze.trajectory(model, x, sigmas)[-1]
    assert analyze.rmse(ours, exact) > analyze.DIVERGED
    assert analyze.rmse(sample(model, x, Plan(sigmas, "ipndm", guidance=1.0)), exact) < 1
    steps = [a - b for a, b in pairwise(sigmas)]
    assert steps[3] / steps[2] > 10


def test_the_table_marks_a_diverged_error():
    table = {("linear_quadratic", "ipndm_v"): {4: (0.7096, None), 6: (378.8, None)}}
    assert analyze.format_table(table, (4, 6))[1].split() == [
        "linear_quadratic",
        "ipndm_v",
        "0.7096",
        "378.8000!",
    ]


def test_every_solver_of_the_table_has_a_family_colour_and_its_own_line():
    assert all(analyze.family(name) != "other" for name in SOLVERS)
    styles = analyze._styles(list(SOLVERS))
    assert len(set(styles.values())) == len(SOLVERS)
    assert {colour for colour, _ in styles.values()} == {f"C{k}" for k in range(len(analyze.FAMILIES))}


def test_analyze_guidance_prints_each_variants_error_for_presets_and_baselines_and_draws_it(
    tmp_path, capsys, monkeypatch
):
    # One preset and one baseline NFE keep it fast; the command's rows and columns are the same code.
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(guidance_analysis, "PRESETS", ("paper-5",))
    monkeypatch.setattr(guidance_analysis, "NFE_COUNTS", (5,))
    png = tmp_path / "guidance.png"
    assert analyze.main(["--guidance", "--samples", "4", "--dim", "4", "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("plan"))
    assert all(variant in header for variant in guidance_analysis.VARIANTS)
    for name in ("paper-5", "karras-2m-5", "karras-euler-5"):
        [row] = [line for line in lines if line.split()[:1] == [name]]
        assert len(row.split()) == 1 + len(guidance_analysis.VARIANTS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
