"""Step rules and the sampling loop: exactness, convergence order, call counting, guidance."""

import math

import pytest
import torch

from schedule import DiscreteSchedule, karras
from solvers import Plan, guided, sample
from solvers.analytic import Gaussian, GaussianMixture
from solvers.analyze import convergence_order, rmse
from solvers.table import SOLVERS

SD = DiscreteSchedule.sd()
# Per-dimension variances from 0.05 to 2 so no single time scale dominates the error.
GAUSSIAN = Gaussian(torch.tensor([0.5, -1.0, 0.2, 0.0]), torch.tensor([0.05, 0.3, 1.0, 2.0]))


def _start(n=32, sigma=SD.sigma_max, seed=0):
    return GAUSSIAN.sample(n, sigma, torch.Generator().manual_seed(seed))


class CountingDenoiser:
    """Wraps a model and records every call's sigma and options."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, sigma, **options):
        self.calls.append((sigma, options))
        return self.model(x, sigma)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_rule_is_exact_when_the_data_is_a_single_point(solver):
    # D(x; sigma) = c for all x, sigma: the ODE solution is c + (x - c) sigma' / sigma, and every
    # rule integrates a constant D exactly (1e-12: float64 rounding over a few steps).
    c = torch.tensor([0.3, -0.7])
    x = torch.randn(5, 2, dtype=torch.float64) * 14.6 + c
    sigmas = karras(6, 0.1, 14.6)
    out = sample(lambda x_, s_, **_: c.expand_as(x_).double(), x, Plan(sigmas, solver, 1.0))
    assert torch.allclose(out, c + (x - c) * 0.1 / 14.6, atol=1e-12, rtol=0)


def test_dpmpp_1s_is_euler_in_this_parametrisation():
    # With x = x0 + sigma eps (s = 1), DDIM in data prediction and Euler in sigma coincide:
    # (sigma'/sigma) x + (1 - sigma'/sigma) D both ways. 1e-14: rounding only.
    x, d = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    a = SOLVERS["euler"].rule(x, d, 2.0, 0.7, [], None)
    b = SOLVERS["dpmpp_1s"].rule(x, d, 2.0, 0.7, [], None)
    assert torch.allclose(a, b, atol=1e-14, rtol=0)


@pytest.mark.parametrize(
    "solver, order, tolerance",
    [("euler", 1, 0.15), ("dpmpp_1s", 1, 0.15), ("heun", 2, 0.2), ("dpmpp_2s", 2, 0.2), ("dpmpp_2m", 2, 0.2)],
)
def test_global_error_converges_at_the_solvers_order(solver, order, tolerance):
    """Karras rho = 7 over SD's range refined 8 -> 128 steps; error at sigma_min against the
    Gaussian's closed-form ODE solution. Measured slopes: Euler/1S 0.97, Heun 2.05, 2S 1.95, 2M 2.02."""
    x = _start()
    exact = GAUSSIAN.solve(x, SD.sigma_max, SD.sigma_min)
    steps = [8, 16, 32, 64, 128]
    errors = [
        rmse(sample(GAUSSIAN, x, Plan(karras(n, SD.sigma_min, SD.sigma_max), solver, 1.0)), exact)
        for n in steps
    ]
    assert convergence_order(steps, errors) == pytest.approx(order, abs=tolerance)


def test_dpmpp_3m_global_error_is_at_least_second_order():
    """3M starts with a first- and a second-order step, so its global order is only guaranteed >= 2
    (measured 2.91 here)."""
    x = _start()
    exact = GAUSSIAN.solve(x, SD.sigma_max, SD.sigma_min)
    steps = [8, 16, 32, 64, 128]
    errors = [rmse(sample(GAUSSIAN, x, Plan(karras(n, SD.sigma_min, SD.sigma_max), "dpmpp_3m", 1.0)), exact)
              for n in steps]  # fmt: skip
    assert convergence_order(steps, errors) >= 2.0


@pytest.mark.parametrize(
    "solver, local_order", [("dpmpp_1s", 2), ("dpmpp_2m", 3), ("dpmpp_3m", 4), ("heun", 3)]
)
def test_one_step_fed_exact_history_has_local_error_of_order_p_plus_one(solver, local_order):
    """Steps of size h = log(sigma/sigma') on a geometric grid around sigma = 1, history taken from
    the exact solution: local error ~ h^(p+1). Measured slopes 1.93, 2.93, 4.05, 2.91 (+-0.3 allowed:
    h runs from 0.4 down to 0.025, not yet fully asymptotic)."""
    x1 = _start(sigma=1.0)
    hs = [0.4, 0.2, 0.1, 0.05, 0.025]
    errors = []
    for h in hs:
        grid = [math.exp(2 * h), math.exp(h), 1.0, math.exp(-h)]
        xs = [GAUSSIAN.solve(x1, 1.0, s) for s in grid]
        history = [(grid[0], GAUSSIAN(xs[0], grid[0])), (grid[1], GAUSSIAN(xs[1], grid[1]))]
        out = SOLVERS[solver].rule(xs[2], GAUSSIAN(xs[2], 1.0), 1.0, grid[3], history, GAUSSIAN)
        errors.append(rmse(out, xs[3]))
    steps = [1 / h for h in hs]  # convergence_order takes step counts ~ 1/h
    assert convergence_order(steps, errors) == pytest.approx(local_order, abs=0.3)


def test_step_into_zero_returns_the_denoised_estimate():
    model = CountingDenoiser(GAUSSIAN)
    x = _start(4, sigma=0.5)
    out = sample(model, x, Plan([0.5, 0.0], "heun", 1.0))
    assert torch.equal(out, GAUSSIAN(x, 0.5))
    assert len(model.calls) == 1  # Heun's correction is skipped when there is no next sigma


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("final", ["keep", "denoise"])
def test_plan_nfe_counts_the_denoiser_calls_honestly(solver, final):
    sigmas = (
        karras(5, 0.05, 14.6) if final == "denoise" else torch.cat([karras(4, 0.05, 14.6), torch.zeros(1)])
    )
    plan = Plan(sigmas, solver, 1.0, final=final)
    model = CountingDenoiser(GAUSSIAN)
    sample(model, _start(2), plan)
    assert len(model.calls) == plan.nfe


def test_each_call_gets_its_own_steps_guidance_and_freeu():
    freeu = {"b1": 1.1, "b2": 1.1, "s1": 0.9, "s2": 0.2}
    plan = Plan(karras(3, 0.1, 14.6), ["dpmpp_1s", "heun", "euler"], [7.5, 5.0, 1.0], [None, freeu, None])
    model = CountingDenoiser(GAUSSIAN)
    sample(model, _start(2), plan)
    seen = [(round(s, 6), o["guidance"], o["freeu"]) for s, o in model.calls]
    s = [round(v, 6) for v in plan.sigmas]
    assert seen == [(s[0], 7.5, None), (s[1], 5.0, freeu), (s[2], 5.0, freeu), (s[2], 1.0, None)]


def test_final_denoise_returns_d_at_the_last_sigma():
    x = _start(4)
    plan_keep = Plan(karras(4, 0.2, 14.6), "dpmpp_2m", 1.0, final="keep")
    plan_denoise = Plan(karras(4, 0.2, 14.6), "dpmpp_2m", 1.0, final="denoise")
    last = plan_keep.sigmas[-1]
    assert torch.equal(sample(GAUSSIAN, x, plan_denoise), GAUSSIAN(sample(GAUSSIAN, x, plan_keep), last))


def test_callback_sees_index_sigmas_x_and_denoised_before_each_step():
    seen = []
    plan = Plan(karras(3, 0.1, 14.6), "dpmpp_2m", 1.0)
    x = _start(2)
    sample(GAUSSIAN, x, plan, callback=seen.append)
    assert [i.index for i in seen] == [0, 1, 2]
    assert [(i.sigma, i.sigma_next) for i in seen] == list(
        zip(plan.sigmas[:-1], plan.sigmas[1:], strict=True)
    )
    assert torch.equal(seen[0].x, x) and torch.equal(seen[0].denoised, GAUSSIAN(x, plan.sigmas[0]))


def test_2m_reuses_the_previous_estimate_and_starts_first_order():
    # First step: no history, identical to 1S. Second step: differs (it extrapolates).
    x = _start(3)
    sigmas = karras(2, 0.5, 14.6)
    d0 = GAUSSIAN(x, sigmas[0].item())
    first = SOLVERS["dpmpp_2m"].rule(x, d0, sigmas[0].item(), sigmas[1].item(), [], None)
    assert torch.equal(first, SOLVERS["dpmpp_1s"].rule(x, d0, sigmas[0].item(), sigmas[1].item(), [], None))
    out_2m = sample(GAUSSIAN, x, Plan(sigmas, "dpmpp_2m", 1.0))
    out_1s = sample(GAUSSIAN, x, Plan(sigmas, "dpmpp_1s", 1.0))
    assert not torch.allclose(out_2m, out_1s)


def test_sampling_mixture_with_many_steps_reaches_the_reference_solution():
    # 200 DPM++2M steps on the Gaussian mixture: second order, error ~1e-4 against RK4.
    model = GaussianMixture.default(dim=8)
    x = model.sample(16, SD.sigma_max, torch.Generator().manual_seed(3))
    out = sample(model, x, Plan(karras(200, SD.sigma_min, SD.sigma_max), "dpmpp_2m", 1.0))
    assert rmse(out, model.solve(x, SD.sigma_max, SD.sigma_min)) < 1e-3


class RecordingModel:
    """A batched 'network': D = x * w(cond) with w(cond) = cond.mean(); records every batch."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, cond, **options):
        self.batches.append((x.shape[0], cond, options))
        weight = cond.flatten(1).mean(1) if torch.is_tensor(cond) else cond["y"].flatten(1).mean(1)
        return x * weight.view(-1, *[1] * (x.ndim - 1))


def test_guidance_runs_uncond_and_cond_as_one_batch_and_combines_them():
    model = RecordingModel()
    cond, uncond = torch.full((3, 2), 2.0), torch.full((1, 2), 0.5)  # uncond of batch 1 serves all
    x = torch.randn(3, 4)
    out = guided(model, cond, uncond)(x, 1.5, guidance=7.5, freeu="f")
    assert len(model.batches) == 1
    n, batch_cond, options = model.batches[0]
    assert n == 6 and torch.equal(batch_cond[:3], uncond.expand(3, 2)) and torch.equal(batch_cond[3:], cond)
    assert options == {"freeu": "f"}
    # D_u + w (D_c - D_u) with D_u = 0.5 x, D_c = 2 x; 1e-6: float32 arithmetic.
    assert torch.allclose(out, 0.5 * x + 7.5 * (2 * x - 0.5 * x), atol=1e-6)


def test_guidance_one_runs_only_the_conditional_half():
    model = RecordingModel()
    x = torch.randn(2, 4)
    out = guided(model, torch.full((2, 2), 2.0), torch.zeros(2, 2))(x, 1.0, guidance=1.0)
    assert model.batches[0][0] == 2 and torch.equal(out, 2 * x)


def test_guidance_batches_dict_conditioning_and_per_sample_sigmas():
    model = RecordingModel()
    cond = {"context": torch.ones(2, 3), "y": torch.full((2, 2), 3.0)}
    uncond = {"context": torch.zeros(1, 3), "y": torch.ones(1, 2)}
    seen_sigma = []

    def wrapped(x, sigma, c, **o):
        seen_sigma.append(sigma)
        return model(x, sigma, c, **o)

    out = guided(wrapped, cond, uncond)(torch.ones(2, 1), torch.tensor([1.0, 2.0]), guidance=2.0)
    assert model.batches[0][1]["context"].shape == (4, 3)
    assert torch.equal(seen_sigma[0], torch.tensor([1.0, 2.0, 1.0, 2.0]))
    assert torch.allclose(out, torch.full((2, 1), 1 + 2 * (3 - 1.0)))


def test_sample_with_guidance_wrapper_passes_each_steps_scale():
    model = RecordingModel()
    plan = Plan(karras(2, 0.5, 14.6), "euler", [3.0, 1.0])
    sample(guided(model, torch.ones(1, 2), torch.zeros(1, 2)), torch.randn(1, 4), plan)
    assert [b[0] for b in model.batches] == [2, 1]  # step 0 guided (2B), step 1 at w = 1 (B)


def test_any_option_of_a_plan_reaches_the_denoiser_unnamed_by_the_loop():
    plan = Plan(karras(2, 0.1, 14.6), "euler", 1.0, cfg_rescale=[0.0, 0.7], mask={"box": [1, 2]})
    model = CountingDenoiser(GAUSSIAN)
    sample(model, _start(2), plan)
    assert [o["cfg_rescale"] for _, o in model.calls] == [0.0, 0.7]
    assert all(o["mask"] == {"box": [1, 2]} for _, o in model.calls)
