"""The discretizations users ask for, each against its reference list or formula (ComfyUI's published
GITS rows, diffusers' multistep timesteps, k-diffusion's polyexponential, ComfyUI's beta_scheduler on
scipy's Beta quantiles), and the table that makes them usable by plans, presets and command lines."""

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import run_sample
from schedule import (
    DISCRETIZATIONS,
    GITS,
    RECORDS,
    VPSDE,
    Beta,
    Diffusers,
    DiscreteSchedule,
    Discretization,
    KLOptimal,
    LinearQuadratic,
    discretization,
    knob,
)
from schedule.discretizations import POSITIVE, from_dict, to_dict
from schedule.gits_tables import GITS_STEPS
from schedule.spacing import ramp
from solvers import Plan, Searched, preset
from solvers.presets import discretization_for
from tests.helpers import run_main

SD = DiscreteSchedule.sd()

# ComfyUI's published GITS rows (comfy_extras/nodes_gits.py NOISE_LEVELS): coeff 1.20, 2 to 20 steps,
# and the three rows stable-diffusion.cpp's copy of the table gets wrong (0.80 at 16 and 18 steps,
# 1.15 at 19: duplicated neighbours).
GITS_PUBLISHED = {
    (1.2, n): row
    for n, row in enumerate(
        [
            [14.61464119, 0.803307, 0.02916753],
            [14.61464119, 1.56271636, 0.52423614, 0.02916753],
            [14.61464119, 2.36326075, 0.92192322, 0.36617002, 0.02916753],
            [14.61464119, 2.84484982, 1.24153244, 0.59516323, 0.25053367, 0.02916753],
            [14.61464119, 5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083, 0.02916753],
            [14.61464119, 5.85520077, 2.45070267, 1.24153244, 0.64427125, 0.29807833, 0.09824532, 0.02916753],
            [
                14.61464119,
                5.85520077,
                2.45070267,
                1.36964464,
                0.803307,
                0.45573691,
                0.25053367,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                5.85520077,
                2.84484982,
                1.61558151,
                0.95350921,
                0.59516323,
                0.36617002,
                0.19894916,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                5.85520077,
                2.84484982,
                1.67050016,
                1.08895338,
                0.74807048,
                0.50118381,
                0.32104823,
                0.19894916,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                5.85520077,
                2.95596409,
                1.84880662,
                1.24153244,
                0.83188516,
                0.59516323,
                0.41087446,
                0.27464288,
                0.17026083,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                5.85520077,
                3.07277966,
                1.98035145,
                1.36964464,
                0.95350921,
                0.69515091,
                0.50118381,
                0.36617002,
                0.25053367,
                0.17026083,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                6.77309084,
                3.46139455,
                2.36326075,
                1.56271636,
                1.08895338,
                0.803307,
                0.59516323,
                0.45573691,
                0.34370604,
                0.25053367,
                0.17026083,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                6.77309084,
                3.46139455,
                2.45070267,
                1.61558151,
                1.162866,
                0.86115354,
                0.64427125,
                0.50118381,
                0.38853383,
                0.29807833,
                0.22545385,
                0.17026083,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                7.49001646,
                4.65472794,
                3.07277966,
                2.12350607,
                1.51179266,
                1.08895338,
                0.83188516,
                0.64427125,
                0.50118381,
                0.38853383,
                0.29807833,
                0.22545385,
                0.17026083,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                7.49001646,
                4.65472794,
                3.07277966,
                2.12350607,
                1.51179266,
                1.08895338,
                0.83188516,
                0.64427125,
                0.50118381,
                0.41087446,
                0.32104823,
                0.25053367,
                0.19894916,
                0.13792117,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                7.49001646,
                4.65472794,
                3.07277966,
                2.12350607,
                1.51179266,
                1.08895338,
                0.83188516,
                0.64427125,
                0.50118381,
                0.41087446,
                0.34370604,
                0.27464288,
                0.22545385,
                0.17026083,
                0.13792117,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                7.49001646,
                4.65472794,
                3.07277966,
                2.19988537,
                1.61558151,
                1.20157266,
                0.92192322,
                0.72133851,
                0.57119018,
                0.45573691,
                0.36617002,
                0.29807833,
                0.25053367,
                0.19894916,
                0.17026083,
                0.13792117,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                7.49001646,
                4.65472794,
                3.07277966,
                2.19988537,
                1.61558151,
                1.24153244,
                0.95350921,
                0.74807048,
                0.59516323,
                0.4783645,
                0.38853383,
                0.32104823,
                0.27464288,
                0.22545385,
                0.19894916,
                0.17026083,
                0.13792117,
                0.09824532,
                0.02916753,
            ],
            [
                14.61464119,
                7.49001646,
                4.65472794,
                3.07277966,
                2.19988537,
                1.61558151,
                1.24153244,
                0.95350921,
                0.74807048,
                0.59516323,
                0.50118381,
                0.41087446,
                0.34370604,
                0.29807833,
                0.25053367,
                0.22545385,
                0.19894916,
                0.17026083,
                0.13792117,
                0.09824532,
                0.02916753,
            ],
        ],
        start=2,
    )
}
GITS_PUBLISHED[0.8, 16] = [
    14.61464119,
    13.76078796,
    12.96784878,
    12.2308979,
    11.54541874,
    10.90732002,
    10.31284904,
    9.24142551,
    8.75849152,
    8.30717278,
    7.49001646,
    6.14220476,
    4.86714602,
    3.1956799,
    1.98035145,
    0.86115354,
    0.02916753,
]
GITS_PUBLISHED[0.8, 18] = [
    14.61464119,
    13.76078796,
    12.96784878,
    12.2308979,
    11.54541874,
    10.90732002,
    10.31284904,
    9.75859547,
    9.24142551,
    8.75849152,
    8.30717278,
    7.49001646,
    6.77309084,
    5.85520077,
    4.65472794,
    3.07277966,
    1.84880662,
    0.83188516,
    0.02916753,
]
GITS_PUBLISHED[1.15, 19] = [
    14.61464119,
    7.49001646,
    4.86714602,
    3.1956799,
    2.45070267,
    1.84880662,
    1.41535246,
    1.12534678,
    0.89115214,
    0.72133851,
    0.59516323,
    0.50118381,
    0.41087446,
    0.34370604,
    0.27464288,
    0.22545385,
    0.17026083,
    0.13792117,
    0.09824532,
    0.02916753,
]


@pytest.mark.parametrize("key", sorted(GITS_PUBLISHED), ids=str)
def test_gits_rows_are_comfyuis_published_sigmas(key):
    # The rows are stored as points of GITS' 101-point time grid; the published values were computed
    # from SD's float32 table, whose sigma_min is 1.3e-5 above the float64 one: 3e-5 relative.
    # The last published value is sigma(t = 0), which ComfyUI and sd.cpp (and we) replace by 0.
    coeff, n = key
    published = GITS_PUBLISHED[key]
    assert np.allclose(GITS(N=n, coeff=coeff).sigmas(SD).numpy(), [*published[:-1], 0], rtol=3e-5, atol=0)
    assert published[-1] == pytest.approx(SD.sigmas[0].item(), rel=3e-5)


def test_every_gits_row_has_its_step_count_and_descends_from_t_max_to_t_0():
    assert sorted(GITS_STEPS) == [round(0.8 + 0.05 * k, 2) for k in range(15)]
    for rows in GITS_STEPS.values():
        assert [len(row) for row in rows] == [n + 1 for n in range(2, 21)]
        assert all(row[0] == 0 and row[-1] == 100 and list(row) == sorted(set(row)) for row in rows)


def test_gits_beyond_20_steps_stretches_the_20_step_row_log_linearly_like_comfyui():
    # ComfyUI's loglinear_interp: np.interp of log sigma on linspace(0, 1) grids. 1e-12: rounding.
    row = np.array(GITS_PUBLISHED[1.2, 20])
    xs, new_xs = np.linspace(0, 1, len(row)), np.linspace(0, 1, 31)
    expected = np.exp(np.interp(new_xs, xs, np.log(row[::-1])))[::-1]
    plan = GITS(N=30).sigmas(SD)
    assert np.allclose(plan[:-1].numpy(), expected[:-1], rtol=3e-5, atol=0) and plan[-1] == 0


def test_gits_refuses_what_was_not_published():
    with pytest.raises(ValueError, match="N must be an integer >= 2"):
        GITS(N=1)
    with pytest.raises(ValueError, match=r"coeff must be one of 0\.8, 0\.85"):
        GITS(N=5, coeff=1.22)
    with pytest.raises(ValueError, match="the gits discretization needs a DiscreteSchedule"):
        GITS(N=5).sigmas(VPSDE())


def _comfy_beta_timesteps(n, alpha, beta):
    """ComfyUI's beta_scheduler: rint(scipy.stats.beta.ppf(1 - linspace(0, 1, N, endpoint=False)) * 999)."""
    stats = pytest.importorskip("scipy.stats")
    return np.rint(stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta) * 999).astype(int)


@pytest.mark.parametrize("alpha, beta", [(0.6, 0.6), (0.5, 0.7), (2.0, 1.0), (1.0, 1.0), (0.5, 0.5)])
def test_beta_picks_the_table_entries_comfyui_picks(alpha, beta):
    """The same entries, so the same values exactly, then 0, for N = 1..60; also where 999 ppf is a
    half-integer (a symmetric Beta's median, Beta(1, 1) at k / N, Beta(2, 1) at q = 1/36), where the
    last bit of scipy's quantile decides which neighbour rint picks."""
    for n in range(1, 61):
        ours = Beta(N=n, alpha=alpha, beta=beta).sigmas(SD)
        assert torch.equal(
            ours, torch.cat([SD.sigmas[_comfy_beta_timesteps(n, alpha, beta)], torch.zeros(1)])
        )


@pytest.mark.parametrize(
    "alpha, beta, steps, k, t",
    # scipy: 999 ppf = 499.4999999999999 (alpha = beta = 0.5 at q = 1/2), 166.50000000000009 (Beta(1, 1)
    # at q = 1/6), both one DDPM index off when rounded to 9 digits first as this project did.
    [(0.5, 0.5, n, n // 2, 499) for n in range(2, 61, 2)]
    + [(1.0, 1.0, n, n * 5 // 6, 167) for n in (6, 12, 18, 24, 36)],
)
def test_beta_rounds_half_integer_quantiles_as_comfyui(alpha, beta, steps, k, t):
    assert _comfy_beta_timesteps(steps, alpha, beta)[k] == t
    assert Beta(N=steps, alpha=alpha, beta=beta).sigmas(SD)[k] == SD.sigmas[t]


def test_beta_refuses_steps_that_would_share_a_timestep():
    with pytest.raises(ValueError, match="puts two of 300 steps on one timestep"):
        Beta(N=300).sigmas(SD)


def test_simple_and_sgm_uniform_follow_comfyuis_formulas():
    # simple: sigmas[-(1 + int(k * K / N))]; sgm_uniform: sigma(linspace(999, 0, N + 1)[:-1]), both
    # then 0. simple picks table entries (exact); sgm_uniform interpolates (1e-12: rounding).
    for n in range(1, 30):
        stride = len(SD.sigmas) / n
        expected = [float(SD.sigmas[-(1 + int(k * stride))]) for k in range(n)] + [0.0]
        assert discretization("simple", n).sigmas(SD).tolist() == expected
        t = torch.linspace(SD.t_max, 0, n + 1, dtype=torch.float64)[:-1]
        ours = discretization("sgm_uniform", n).sigmas(SD)
        assert torch.allclose(ours[:-1], SD.sigma(t), rtol=1e-12, atol=0) and ours[-1] == 0


def test_kl_optimal_is_uniform_in_arctan_sigma():
    # ComfyUI / A1111: tan(k/(N-1) atan(sigma_min) + (1 - k/(N-1)) atan(sigma_max)), then 0.
    for n in range(2, 25):
        k = torch.arange(n, dtype=torch.float64) / (n - 1)
        expected = torch.tan(k * math.atan(SD.sigma_min) + (1 - k) * math.atan(SD.sigma_max))
        ours = discretization("kl_optimal", n).sigmas(SD)
        assert torch.allclose(ours[:-1], expected, rtol=1e-12, atol=0) and ours[-1] == 0
    step = (math.atan(SD.sigma_min) - math.atan(SD.sigma_max)) / 3
    placed = KLOptimal(N=4).sigmas(SD)[:-1]
    assert torch.allclose(placed.atan().diff(), torch.full((3,), step, dtype=torch.float64))
    assert discretization("kl_optimal", 1).sigmas(SD).tolist() == [SD.sigma_max, 0.0]


@pytest.mark.parametrize("rho", [1.0, 0.5, 2.0])
def test_polyexponential_equals_k_diffusion(rho):
    # k-diffusion builds its ramp with torch.linspace in float32: 2e-6 relative.
    from tests.reference.samplers import k_diffusion

    for n in (1, 5, 8, 20):
        ref = k_diffusion().get_sigmas_polyexponential(n, SD.sigma_min, SD.sigma_max, rho)
        ours = discretization("polyexponential", n, rho=rho).sigmas(SD)
        assert torch.allclose(ours, ref.double(), rtol=2e-6, atol=0)
    assert torch.allclose(
        discretization("polyexponential", 7, rho=1.0).sigmas(SD)[:-1],
        torch.exp(torch.linspace(math.log(SD.sigma_max), math.log(SD.sigma_min), 7, dtype=torch.float64)),
        rtol=1e-12,
    )  # fmt: skip  (rho = 1 is exponential)


def _comfy_linear_quadratic(steps, sigma_max, threshold_noise=0.025, linear_steps=None):
    """ComfyUI's linear_quadratic_schedule (from genmo's Mochi), in float64."""
    if steps == 1:
        return [sigma_max, 0.0]
    if linear_steps is None:
        linear_steps = steps // 2
    linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    threshold_noise_step_diff = linear_steps - threshold_noise * steps
    quadratic_steps = steps - linear_steps
    quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps**2)
    linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (quadratic_steps**2)
    const = quadratic_coef * (linear_steps**2)
    quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
    return [(1.0 - s) * sigma_max for s in linear + quadratic + [1.0]]


def test_linear_quadratic_follows_comfyuis_formula():
    for n in range(1, 25):
        expected = _comfy_linear_quadratic(n, SD.sigma_max)
        assert np.allclose(LinearQuadratic(N=n).sigmas(SD).numpy(), expected, rtol=1e-12, atol=1e-15)
    expected = _comfy_linear_quadratic(10, SD.sigma_max, 0.05, 3)
    assert np.allclose(
        LinearQuadratic(N=10, threshold=0.05, linear=3).sigmas(SD).numpy(), expected, rtol=1e-12
    )
    with pytest.raises(ValueError, match="linear must leave a quadratic step"):
        LinearQuadratic(N=4, linear=4)


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                       "DEISMultistepScheduler"])  # fmt: skip
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("offset", [0, 1])
def test_diffusers_spacing_equals_its_multistep_schedulers_timesteps(scheduler, spacing, offset):
    # The integer timesteps exactly; the sigmas to 1e-4 (diffusers' float32 alphas_cumprod, see
    # test_schedule.test_discrete_schedule_equals_diffusers_sigmas). Euler spaces differently (uniform).
    diffusers = pytest.importorskip("diffusers")
    ref = getattr(diffusers, scheduler)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        timestep_spacing=spacing, steps_offset=offset)  # fmt: skip
    for n in (1, 2, 3, 5, 8, 10, 20, 25, 50):
        ref.set_timesteps(n)
        assert (
            Diffusers(N=n, spacing=spacing, offset=offset).timesteps(999).long().tolist()
            == ref.timesteps.tolist()
        )
        ours = discretization("diffusers", n, spacing=spacing, offset=offset).sigmas(SD)
        if scheduler != "DEISMultistepScheduler":  # DEIS repeats its last sigma instead of a 0
            assert torch.allclose(ours.float(), ref.sigmas.float(), rtol=1e-4, atol=0)


def test_ays_takes_the_models_own_table():
    # SDXL's AYS table differs from SD 1.5's; the preset path takes the model kind.
    sd1, sdxl = discretization_for("ays", 10), discretization_for("ays", 10, model="sdxl")
    assert (sd1.model, sdxl.model) == ("sd1", "sdxl")
    assert sdxl.sigmas(SD)[1].item() == pytest.approx(6.315) and sd1.sigmas(SD)[1].item() == pytest.approx(
        6.475
    )
    assert preset("ays-2m-10", model="sdxl").sigmas == tuple(sdxl.sigmas(SD).tolist())
    assert preset("ays-2m-10").discretization.model == "sd1"


@pytest.mark.parametrize("kind", sorted(DISCRETIZATIONS))
@pytest.mark.parametrize("n", [2, 5, 8, 20])
def test_every_discretization_makes_n_steps_that_strictly_decrease_and_round_trip(kind, n):
    d = discretization_for(kind, n)
    sigmas = d.sigmas(SD)
    assert sigmas.shape == (n + 1,) and sigmas.dtype == torch.float64 and (sigmas.diff() < 0).all()
    assert (sigmas[-1] > 0) == (kind == "paper")  # only the paper keeps x_N at sigma_stop > 0
    assert from_dict(to_dict(d)) == d and d.describe().startswith(kind)
    assert preset(f"{kind}-2m-{n}").sigmas == tuple(sigmas.tolist()) if kind != "paper" else True


@pytest.mark.parametrize(
    "kind, knobs, message",
    [
        ("beta", {"alpha": 0}, "alpha must be a finite number > 0"),
        ("diffusers", {"spacing": "middle"}, "spacing must be one of linspace, leading, trailing"),
        ("diffusers", {"offset": -1}, "offset must be an integer >= 0"),
        ("linear_quadratic", {"threshold": 1.5}, "threshold must be below 1"),
        ("polyexponential", {"rho": float("nan")}, "rho must be a finite number > 0"),
    ],
)
def test_a_bad_knob_is_refused_with_its_name_whether_from_a_flag_or_a_file(kind, knobs, message):
    with pytest.raises(ValueError, match=message):
        discretization(kind, 5, **knobs)
    with pytest.raises(ValueError, match=message):
        from_dict({"kind": kind, "N": 5, **knobs})


@pytest.fixture
def forget_new_kinds():
    """The kinds a test defines leave the tables when it ends."""
    before = set(RECORDS)
    yield
    for table in (RECORDS, DISCRETIZATIONS):
        for kind in set(table) - before:
            del table[kind]


def test_a_new_discretization_is_one_class_that_runs_from_the_flags_to_a_plan(forget_new_kinds, capsys):
    @dataclass(frozen=True)
    class Power(Discretization, kind="power", display="Power"):
        """log sigma from log sigma_max to log sigma_min as the ramp to the power gamma, then 0."""

        ending: ClassVar[str] = ", then 0"
        gamma: float = knob(1.0, POSITIVE, "the power of the ramp")

        def sigmas(self, schedule):
            lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
            return torch.cat([torch.exp(hi + ramp(self.N - 1) ** self.gamma * (lo - hi)), torch.zeros(1)])

    code, out, _ = run_main(run_sample.main, capsys, "--help")
    assert code == 0 and "power: the power of the ramp (default 1)" in " ".join(out.split())
    code, out, _ = run_main(
        run_sample.main, capsys, "--print-plan", "--steps", "4", "--discretization", "power", "--gamma", "2"
    )
    assert code == 0
    plan = Plan.from_json(out.splitlines()[0])  # the plan's JSON, read back with its new kind
    assert plan.discretization == Power(N=4, gamma=2.0)
    assert plan.sigmas == tuple(Power(N=4, gamma=2.0).sigmas(SD).tolist())
    assert plan.discretization.describe() == "power N=4 gamma=2, then 0"
    assert json.loads(out.splitlines()[0])["discretization"] == {"kind": "power", "N": 4, "gamma": 2.0}
    code, _, err = run_main(
        run_sample.main, capsys, "--print-plan", "--discretization", "power", "--gamma", "0"
    )
    assert code == 2 and "argument --gamma: gamma must be a finite number > 0, got 0.0" in err
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        from_dict({"kind": "power", "N": 4, "gamma": -1})
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        Power(N=0)


def test_a_plan_naming_the_searchs_record_reads_back_where_nothing_imported_the_search(tmp_path):
    # The record lives with the search (solvers/search/record.py); solvers registers it on import.
    record = Searched(
        N=2, solver="dpmpp_2m", nfe=2, cost="global", grid=10, samples=4, seed=0, stages=("dp",),
        teacher="exact", substeps=0,
    )  # fmt: skip
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**preset("karras-2m-2").to_dict(), "discretization": to_dict(record)}))
    read = f"from solvers.plan import Plan; print(Plan.from_json(open({str(path)!r}).read()).discretization)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", read], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == repr(record)
