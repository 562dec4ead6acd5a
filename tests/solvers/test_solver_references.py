"""Every step rule against its reference implementation (k-diffusion, diffusers, the published
iPNDM formulas), on the same sigma lists and the same exact denoiser, in float64.

Tolerances are relative (tests.helpers.rel_err). The agreement measured is float64 round-off:
<= 2.6e-15 for every rule, list and option here but DEIS, 2.6e-14 for DEIS (its weights are
differences of antiderivatives, in ours and in diffusers). The bounds (1e-10 against k-diffusion and
the published formulas, 1e-8 against diffusers) leave room for other BLAS / torch versions and still
catch any wrong coefficient, whose effect is >= 1e-4 on these lists.
"""

from functools import partial

import pytest
import torch

from schedule import DiscreteSchedule, append_zero, karras
from solvers import SOLVERS, Plan, preset, sample
from solvers.adams import deis
from solvers.analytic import GaussianMixture
from solvers.steps import dpmpp_3m
from solvers.stochastic import dpmpp_2m_sde, euler_a
from solvers.table import Solver, register
from solvers.unipc import unipc
from tests.helpers import rel_err
from tests.reference.samplers import diffusers_multistep, gits_ipndm, k_diffusion_sample

diffusers = pytest.importorskip("diffusers")
# diffusers' DEIS takes np.log of torch tensors, which numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

SD = DiscreteSchedule.sd()
MIXTURE = GaussianMixture.default(dim=6)
X = MIXTURE.sample(8, SD.sigma_max, torch.Generator().manual_seed(0))
# k-diffusion's and diffusers' convention (a last step to 0), the paper's (it keeps x_N at
# sigma_stop > 0), and a longer list that ends at sigma_min.
TO_ZERO = tuple(append_zero(karras(7, SD.sigma_min, SD.sigma_max)).tolist())
PAPER = preset("paper-8").sigmas
LONG = tuple(karras(16, SD.sigma_min, SD.sigma_max).tolist())
POSITIVE = {"paper-8": PAPER, "karras-16 to sigma_min": LONG}
LISTS = {"karras-8 to 0": TO_ZERO, **POSITIVE}


@pytest.fixture
def variant():
    """Register partial(rule, **options) under a fresh name for one test; returns the name."""
    names = []

    def make(rule, stochastic=False, **options):
        name = f"reference_variant_{len(names)}"
        names.append(register(Solver(name, partial(rule, **options), 1, 1, name, name, stochastic)).name)
        return name

    yield make
    for name in names:
        del SOLVERS[name]


def _ours(solver: str, sigmas, noises=None) -> torch.Tensor:
    draws = iter(noises or [])
    return sample(MIXTURE, X.clone(), Plan(sigmas, solver, guidance=1.0), noise=lambda like: next(draws))


def _noises(count: int = 20) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(X.shape, dtype=torch.float64, generator=g) for _ in range(count)]


@pytest.mark.parametrize("sigmas", LISTS.values(), ids=LISTS)
@pytest.mark.parametrize(
    "solver, reference, options",
    [
        ("euler", "euler", {}),
        ("dpmpp_1s", "euler", {}),  # DDIM in data prediction is Euler's step in this parametrisation
        ("heun", "heun", {}),
        ("dpmpp_2s", "dpmpp_2s_ancestral", {"eta": 0.0}),
        ("dpmpp_2m", "dpmpp_2m", {}),
        ("dpmpp_3m", "dpmpp_3m_sde", {"eta": 0.0}),
    ],
)
def test_ode_rules_equal_k_diffusion(solver, reference, options, sigmas):
    expected = k_diffusion_sample(reference, MIXTURE, X.clone(), sigmas, **options)
    assert rel_err(_ours(solver, sigmas), expected) < 1e-10


def test_the_exact_quadratic_3m_is_not_the_published_one():
    # The reason for the rename: 4.3% apart on the 8 Karras steps to 0.
    published = k_diffusion_sample("dpmpp_3m_sde", MIXTURE, X.clone(), TO_ZERO, eta=0.0)
    assert rel_err(_ours("dpmpp_3m_exact", TO_ZERO), published) > 0.01


@pytest.mark.parametrize("sigmas", LISTS.values(), ids=LISTS)
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize(
    "rule, options, reference, reference_options",
    [
        (euler_a, {}, "euler_ancestral", {}),
        (dpmpp_2m_sde, {}, "dpmpp_2m_sde", {"solver_type": "midpoint"}),
        (dpmpp_2m_sde, {"heun": True}, "dpmpp_2m_sde", {"solver_type": "heun"}),
        (dpmpp_3m, {}, "dpmpp_3m_sde", {}),
    ],
    ids=["euler_a", "2m_sde", "2m_sde_heun", "3m_sde"],
)
def test_stochastic_rules_equal_k_diffusion_fed_the_same_noise(
    rule, options, reference, reference_options, eta, sigmas, variant
):
    noises = _noises()
    expected = k_diffusion_sample(reference, MIXTURE, X.clone(), sigmas, noises, eta=eta, **reference_options)
    assert rel_err(_ours(variant(rule, True, eta=eta, **options), sigmas, noises), expected) < 1e-10


def test_the_registered_stochastic_rules_are_k_diffusions_defaults():
    noises = _noises()
    for solver, reference, options in (
        ("euler_a", "euler_ancestral", {}),
        ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
        ("dpmpp_2m_sde_heun", "dpmpp_2m_sde", {"solver_type": "heun"}),
        ("dpmpp_3m_sde", "dpmpp_3m_sde", {}),
    ):
        expected = k_diffusion_sample(reference, MIXTURE, X.clone(), TO_ZERO, noises, **options)
        assert rel_err(_ours(solver, TO_ZERO, noises), expected) < 1e-10, solver


def _unipc(variant_name: str, order: int, lower_order_final: bool = True):
    return diffusers.UniPCMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", solver_order=order,
        solver_type=variant_name, predict_x0=True, lower_order_final=lower_order_final,
    )  # fmt: skip


@pytest.mark.parametrize("sigmas", POSITIVE.values(), ids=POSITIVE)
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant_name", ["bh1", "bh2"])
def test_unipc_equals_diffusers(variant_name, order, lower_order_final, sigmas, variant):
    """diffusers keeps its sigmas in float32 after set_timesteps; the reference sets them in float64,
    and with float64 samples nothing else in its step() rounds to float32."""
    expected = diffusers_multistep(_unipc(variant_name, order, lower_order_final), MIXTURE, X.clone(), sigmas)
    solver = (
        f"unipc_{variant_name}_{order}"
        if lower_order_final
        else variant(unipc, variant=variant_name, order=order, lower_order_final=False)
    )
    assert rel_err(_ours(solver, sigmas), expected) < 1e-8


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_into_sigma_0_equals_diffusers_final_zero(order):
    """Into 0 diffusers' order-1 last step returns D of the uncorrected x, as the loop's step into 0
    does. (Its bh1 variant divides by B(h) = h = -inf there and returns NaN; bh2's B(h) is -1.)"""
    expected = diffusers_multistep(_unipc("bh2", order), MIXTURE, X.clone(), TO_ZERO)
    assert rel_err(_ours(f"unipc_bh2_{order}", TO_ZERO), expected) < 1e-8


@pytest.mark.parametrize("sigmas", [PAPER, LONG], ids=["paper-8 (lower_order_final)", "karras-16 (not)"])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_equals_diffusers(order, lower_order_final, sigmas, variant):
    """diffusers applies lower_order_final only to runs of fewer than 15 steps; paper-8 has 8, the
    Karras list 16."""
    scheduler = diffusers.DEISMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", solver_order=order,
        lower_order_final=lower_order_final,
    )  # fmt: skip
    expected = diffusers_multistep(scheduler, MIXTURE, X.clone(), sigmas)
    registered = order > 1 and lower_order_final
    solver = (
        f"deis_{order}" if registered else variant(deis, order=order, lower_order_final=lower_order_final)
    )
    assert rel_err(_ours(solver, sigmas), expected) < 1e-8


def test_deis_of_order_1_is_dpmpp_1s(variant):
    # DEIS-1 is DDIM, so it is not registered a second time. 1e-12: rounding.
    assert rel_err(_ours("dpmpp_1s", PAPER), _ours(variant(deis, order=1), PAPER)) < 1e-12


@pytest.mark.parametrize("sigmas", LISTS.values(), ids=LISTS)
@pytest.mark.parametrize("solver, variable", [("ipndm", False), ("ipndm_v", True)])
def test_ipndm_equals_the_published_formulas(solver, variable, sigmas):
    expected = gits_ipndm(MIXTURE, X.clone(), sigmas, variable)
    assert rel_err(_ours(solver, sigmas), expected) < 1e-10
