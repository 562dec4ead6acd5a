"""Plans: validation with one-line reasons, exact JSON round trips, presets."""

import json

import numpy as np
import pytest
import torch

from schedule import DiscreteSchedule, Paper, append_zero, karras
from solvers import Plan, PlanError, Recipe, preset
from solvers.presets import PAPER_FREEU, PAPER_RECIPES, XL_FREEU_LAST, discretization_for, paper_rule

SD = DiscreteSchedule.sd()
FREEU = {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}


def test_scalar_settings_apply_to_every_step():
    plan = Plan([3.0, 2.0, 1.0], solver="heun", guidance=5.5, freeu=FREEU)
    assert plan.steps == 2 and plan.solver == ("heun", "heun") and plan.guidance == (5.5, 5.5)
    assert plan.freeu == (FREEU, FREEU)


def test_sigmas_accept_tensors_and_stay_float64_exact():
    sigmas = karras(7, 0.03, 14.6)
    plan = Plan(sigmas)
    assert torch.equal(torch.tensor(plan.sigmas, dtype=torch.float64), sigmas)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigmas": [1.0]}, "at least 2 sigmas"),
        ({"sigmas": [1.0, 1.0]}, "strictly decrease"),
        ({"sigmas": [1.0, 2.0]}, "strictly decrease"),
        ({"sigmas": [1.0, -0.5]}, "finite and >= 0"),
        ({"sigmas": [float("nan"), 0.5]}, "finite and >= 0"),
        ({"sigmas": [float("inf"), 0.5]}, "finite and >= 0"),
        ({"sigmas": [2.0, 1.0, 0.0], "solver": ["euler"]}, "solver has 1 entries for 2 steps"),
        (
            {"sigmas": [2.0, 1.0], "solver": "dpm_fast"},
            r"unknown solver 'dpm_fast' at step 1; did you mean dpmpp_2s or dpmpp_1s\? choose from",
        ),
        ({"sigmas": [2.0, 1.0], "guidance": -1.0}, "guidance of step 1: must be a finite number >= 0"),
        ({"sigmas": [2.0, 1.0, 0.5], "guidance": [1.0]}, "guidance has 1 entries for 2 steps"),
        ({"sigmas": [2.0, 1.0], "guidance": float("nan")}, "finite number"),
        ({"sigmas": [2.0, 1.0], "final": "zero"}, "final must be one of"),
        ({"sigmas": [2.0, 0.0], "final": "denoise"}, "already ends at sigma = 0"),
        ({"sigmas": [2.0, 1.0], "mask": float("inf")}, "mask of step 1 is inf; options must be finite"),
        ({"sigmas": [2.0, 1.0], "freeu": float("inf")}, "freeu of step 1: FreeU must be null .off. or an"),
        ({"sigmas": [2.0, 1.0], "mask": object()}, "mask of step 1 is <object.*JSON cannot hold"),
        ({"sigmas": [2.0, 1.0], "cfg_rescale": [0.5, 0.7]}, "cfg_rescale has 2 entries for 1 steps"),
    ],
)
def test_bad_plans_are_rejected_with_a_one_line_reason(kwargs, message):
    with pytest.raises(PlanError, match=message) as info:
        Plan(**kwargs)
    assert "\n" not in str(info.value)


def test_json_round_trip_is_exact_for_every_preset():
    for name in (
        "paper-5",
        "paper-6",
        "paper-8",
        "paper-xl-8",
        "paper-xl-6",
        "paper-11",
        "karras-2m-20",
        "ays-3m-7",
    ):
        plan = preset(name, guidance=5.5)
        again = Plan.from_json(plan.to_json())
        assert again == plan
        # bit-exact sigmas, not just close
        assert np.array_equal(np.array(again.sigmas).view(np.int64), np.array(plan.sigmas).view(np.int64))


def test_json_names_every_sigma_solver_option_and_the_discretization():
    data = json.loads(preset("paper-xl-6").to_json())
    # format 3 since "dpmpp_3m" became the published rule (was 2)
    assert data["format"] == 3 and data["name"] == "paper-xl-6" and data["final"] == "keep"
    options = data["options"]
    assert (
        len(data["sigmas"]) == 7
        and len(data["solver"]) == len(options["guidance"]) == len(options["freeu"]) == 6
    )
    assert data["discretization"] == {"kind": "paper", "N": 6, "stop": 1, "p1": 1.2, "p2": 5, "grid": None,
                                      "index": 6}  # fmt: skip


def test_format_1_json_reads_as_the_same_plan_without_a_discretization():
    plan = preset("paper-xl-6")
    old = {"format": 1, "name": plan.name, "sigmas": list(plan.sigmas), "solver": list(plan.solver),
           "guidance": list(plan.guidance), "freeu": list(plan.freeu), "final": plan.final}  # fmt: skip
    again = Plan.from_json(json.dumps(old))
    assert again == plan.replace(discretization=None) and again.discretization is None


@pytest.mark.parametrize("plan_format", [1, 2])
def test_dpmpp_3m_of_a_format_1_or_2_plan_reads_as_the_exact_quadratic_rule_it_meant(plan_format):
    # Until format 3 "dpmpp_3m" named the exact-quadratic rule; a stored plan must keep its pixels.
    plan = Plan([3.0, 2.0, 1.0, 0.5], ["dpmpp_2m", "dpmpp_3m_exact", "dpmpp_3m_exact"], guidance=1.0)
    stored = {**plan.to_dict(), "format": plan_format, "solver": ["dpmpp_2m", "dpmpp_3m", "dpmpp_3m"]}
    if plan_format == 1:
        options = stored.pop("options")
        stored = {**stored, "guidance": options["guidance"], "freeu": options["freeu"]}
        del stored["discretization"]
    assert Plan.from_json(json.dumps(stored)) == plan
    single = {**stored, "solver": "dpmpp_3m"}
    assert Plan.from_json(json.dumps(single)).solver == ("dpmpp_3m_exact",) * 3


def test_dpmpp_3m_of_a_format_3_plan_is_the_published_rule():
    plan = preset("karras-3m-8")
    assert plan.solver == ("dpmpp_3m",) * 8 and Plan.from_json(plan.to_json()).solver == ("dpmpp_3m",) * 8


def test_any_option_is_stored_per_step_and_round_trips():
    plan = Plan(
        [3.0, 2.0, 1.0], "euler", guidance=5.5, cfg_rescale=[0.0, 0.7], mask={"kind": "box", "size": [2, 3]}
    )
    assert plan.step_options(1) == {"guidance": 5.5, "freeu": None, "cfg_rescale": 0.7,
                                    "mask": {"kind": "box", "size": [2, 3]}}  # fmt: skip
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.replace(cfg_rescale=0.5).options["cfg_rescale"] == (0.5, 0.5)


def test_replace_changes_only_what_it_names_and_new_sigmas_drop_the_discretization():
    plan = preset("paper-8")
    assert plan.replace(name="mine") == Plan(plan.sigmas, plan.solver, plan.final, "mine",
                                             plan.discretization, guidance=plan.guidance,
                                             freeu=plan.freeu)  # fmt: skip
    moved = plan.replace(sigmas=[2 * s for s in plan.sigmas])
    assert moved.discretization is None and moved.options == plan.options


def test_a_discretization_must_have_the_plans_step_count():
    with pytest.raises(PlanError, match="the discretization has 5 steps but the plan 1"):
        Plan([2.0, 1.0], discretization=Paper(N=5))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"format": 4}', "unsupported plan format 4; this version reads formats 1, 2, 3"),
        ('{"format": 1, "sigmas": [1, 0]}', "plan keys must be"),
        ('{"format": 2, "sigmas": [1, 0]}', "plan keys must be"),
    ],
)
def test_bad_plan_json_is_rejected_with_a_reason(text, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_json(text)


def test_nfe_counts_two_calls_for_heun_and_2s_but_not_into_zero():
    assert Plan([3.0, 2.0, 1.0, 0.0], "heun").nfe == 5
    assert Plan([3.0, 2.0, 1.0], "dpmpp_2s", final="denoise").nfe == 5
    assert Plan([3.0, 2.0, 1.0, 0.0], "dpmpp_2m").nfe == 3


def test_replacing_the_guidance_changes_only_the_guidance():
    plan = preset("paper-5")
    assert plan.replace(guidance=5.5) == preset("paper-5", guidance=5.5)


# The recipe table's reference sigma lists; the last entry is the table's 4-digit sigma_stop.
REFERENCE = {
    "paper-8": [14.615, 6.712, 3.608, 2.172, 1.404, 0.937, 0.617, 0.373, 0.1471],
    "paper-5": [14.615, 4.519, 1.962, 1.001, 0.502, 0.1320],
    "paper-6": [14.615, 5.341, 2.523, 1.388, 0.805, 0.437, 0.1320],
    "paper-xl-8": [14.615, 6.548, 3.467, 2.067, 1.324, 0.871, 0.560, 0.317, 0.0598],
    "paper-xl-6": [14.615, 5.341, 2.523, 1.388, 0.805, 0.437, 0.1320],
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_paper_preset_equals_the_recipe_sigmas_within_0_2_percent(name):
    assert np.allclose(preset(name).sigmas, REFERENCE[name], rtol=2e-3, atol=0)


def test_paper_presets_use_the_recipes_solvers_and_freeu():
    assert preset("paper-5").solver == ("dpmpp_1s",) * 5 and preset("paper-5").freeu == (PAPER_FREEU,) * 5
    assert preset("paper-6").freeu == (PAPER_FREEU,) * 6
    assert preset("paper-8").solver == ("dpmpp_2m",) * 8 and preset("paper-8").freeu == (None,) * 8
    xl6 = preset("paper-xl-6")
    assert xl6.solver == ("dpmpp_1s",) * 4 + ("euler",) * 2
    assert xl6.freeu == (None, PAPER_FREEU, PAPER_FREEU, PAPER_FREEU, None, XL_FREEU_LAST)
    assert PAPER_FREEU == {"b1": 1.1, "b2": 1.1, "s1": 0.9, "s2": 0.2, "version": 1, "placement": "channels"}
    assert XL_FREEU_LAST == {**PAPER_FREEU, "b1": 1.3, "b2": 1.4}  # v1 too: the authors' code has no v2
    for name in REFERENCE:
        plan = preset(name)
        assert plan.final == "keep" and plan.sigmas[-1] > 0 and plan.nfe == plan.steps


def test_paper_with_steps_uses_the_tuned_rows_and_the_rule_elsewhere():
    assert preset("paper", steps=5) == preset("paper-5")
    assert preset("paper", steps=6) == preset("paper-6")
    assert preset("paper", steps=8) == preset("paper-8")
    # The rule: 7 steps -> stop 3, rho_stop 7, n_grid 11, j_stop 8, DPM++2M, no FreeU.
    seven_rule = paper_rule(7)
    assert seven_rule == Recipe(Paper(N=7, stop=3, p2=7), "dpmpp_2m", None)
    assert (seven_rule.discretization.grid_size, seven_rule.discretization.stop_index) == (11, 8)
    four_rule = paper_rule(4)
    assert four_rule == Recipe(Paper(N=4, stop=2, p2=5), "dpmpp_1s", PAPER_FREEU)
    assert (four_rule.discretization.grid_size, four_rule.discretization.stop_index) == (7, 5)
    seven = preset("paper", steps=7)
    stop = karras(10, SD.sigma_min, SD.sigma_max, 7)[8].item()
    assert seven.name == "paper-7" and seven.sigmas[-1] == pytest.approx(stop, rel=1e-12)
    # The tuned 6-step row is not the rule's (n_grid 8, j_stop 6 instead of 9, 7).
    rule_6, tuned_6 = paper_rule(6).discretization, PAPER_RECIPES["paper-6"].discretization
    assert (rule_6.grid_size, rule_6.p2, rule_6.stop_index) == (9, 5, 7)
    assert (tuned_6.grid_size, tuned_6.p2, tuned_6.stop_index) == (8, 5, 6)


def test_rule_gives_the_tuned_rows_for_5_and_8_steps():
    for n in (5, 8):
        assert paper_rule(n) == PAPER_RECIPES[f"paper-{n}"]


def test_every_paper_row_records_its_discretization_with_the_papers_symbols():
    for name, recipe in PAPER_RECIPES.items():
        plan = preset(name)
        assert plan.discretization == recipe.discretization
        assert plan.sigmas == tuple(recipe.discretization.sigmas(SD).tolist())
    xl8 = PAPER_RECIPES["paper-xl-8"].discretization
    assert (xl8.N, xl8.stop, xl8.p1, xl8.p2, xl8.grid_size, xl8.stop_index) == (8, 3, 1.2, 12, 12, 10)


def test_karras_2m_20_is_kdiffusions_20_step_schedule_ending_at_zero():
    plan = preset("karras-2m-20")
    assert plan.steps == 20 and plan.sigmas[-1] == 0 and plan.solver == ("dpmpp_2m",) * 20
    assert plan.sigmas == tuple(append_zero(karras(19, SD.sigma_min, SD.sigma_max)).tolist())


def test_ays_baseline_replaces_the_tables_last_value_by_zero():
    plan = preset("ays-2m-10")
    assert plan.steps == 10 and plan.sigmas[-1] == 0 and plan.sigmas[-2] == pytest.approx(0.152)


def test_unknown_presets_list_the_valid_names():
    with pytest.raises(
        ValueError,
        match=r"unknown preset 'paper-fast'; did you mean paper-8 or paper-6 or paper-5\? choose from "
        r"paper-5, paper-6, paper-8.*karras",
    ):
        preset("paper-fast")
    with pytest.raises(ValueError, match="steps= only goes with preset 'paper'"):
        preset("karras-2m-20", steps=5)
    with pytest.raises(ValueError, match="asks for 0 steps"):
        preset("paper-0")


def test_discretization_for_names_the_placements_the_presets_use():
    assert tuple(discretization_for("paper", 8).sigmas(SD).tolist()) == preset("paper-8").sigmas
    assert tuple(discretization_for("karras", 20).sigmas(SD).tolist()) == preset("karras-2m-20").sigmas
    assert discretization_for("linspace", 1).sigmas(SD).tolist() == [SD.sigma_max, 0.0]
    with pytest.raises(ValueError, match="unknown discretization 'cosine'; choose from paper, karras"):
        discretization_for("cosine", 5)
