"""Fuzzing the parsers of outside JSON (hypothesis, derandomized: the same examples on every run): a
plan file or a PNG's plan and settings chunks either give a valid object or raise the project's own
error, PlanError, whose message is one line; never another exception."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import png_metadata, read_plan_file
from pipeline.provenance import PLAN_KEY, SETTINGS_KEY, Settings, replay_from_text
from solvers import Plan, PlanError, preset

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))

# Any JSON value, small: the wrong kinds in every place a parser reads.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["dpmpp_2m", "euler", "keep", "denoise", "paper", "karras", "float32", "round"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)

VALID_PLAN = preset("paper-5").to_dict()
SETTINGS = Settings(
    prompt="a cat", negative_prompt="", seed=1, width=64, height=64, weights="w.safetensors",
    weights_sha256="0" * 64, model="w", dtype="float32", device="cpu", compile=False, batch=1, batch_index=0,
)  # fmt: skip
VALID_SETTINGS = json.loads(SETTINGS.to_json())


def _mutated(valid: dict, data) -> dict:
    """`valid` with one key replaced by any JSON value, or dropped, or a key added, or a nested
    value of the discretization / options replaced."""
    mutated = json.loads(json.dumps(valid))
    key = data.draw(st.sampled_from([*valid, "extra"]))
    action = data.draw(st.sampled_from(["replace", "drop", "nested"]))
    if action == "drop":
        mutated.pop(key, None)
    elif action == "nested" and isinstance(mutated.get(key), dict) and mutated[key]:
        inner = data.draw(st.sampled_from(sorted(mutated[key])))
        mutated[key][inner] = data.draw(json_values)
    else:
        mutated[key] = data.draw(json_values)
    return mutated


def _one_line(error: PlanError) -> None:
    assert "\n" not in str(error) and str(error)


@FUZZ
@given(st.data())
def test_a_fuzzed_plan_file_is_read_or_refused_with_a_plan_error(tmp_path_factory, data):
    text = (
        json.dumps(_mutated(VALID_PLAN, data))
        if data.draw(st.booleans())
        else json.dumps(data.draw(json_values))
    )
    path = tmp_path_factory.mktemp("plans") / "plan.json"
    path.write_text(text)
    try:
        plan = read_plan_file(path)
    except PlanError as error:
        _one_line(error)
    else:
        assert isinstance(plan, Plan) and Plan.from_json(plan.to_json()) == plan


@FUZZ
@given(st.data())
def test_fuzzed_png_metadata_is_replayed_or_refused_with_a_plan_error(data):
    plan = json.dumps(_mutated(VALID_PLAN, data)) if data.draw(st.booleans()) else json.dumps(VALID_PLAN)
    chosen = _mutated(VALID_SETTINGS, data) if data.draw(st.booleans()) else data.draw(json_values)
    text = {PLAN_KEY: plan, SETTINGS_KEY: json.dumps(chosen)}
    try:
        settings_read, plan_read = replay_from_text(text, "x.png")
    except PlanError as error:
        _one_line(error)
        assert "x.png" in str(error)
    else:
        assert replay_from_text(png_metadata(plan_read, settings_read)) == (settings_read, plan_read)


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_bytes_as_a_plan_are_refused_with_a_plan_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("plans") / "plan.json"
    path.write_bytes(raw)
    try:
        read_plan_file(path)
    except PlanError as error:
        _one_line(error)
