"""weights.hub_spec: how weights on the Hub are written, and which strings are local paths instead."""

import pytest

from weights.errors import WeightsError
from weights.hub_spec import is_local_path, parse_hub_spec


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("org/name", ("org/name", None, "main")),
        ("org/name/", ("org/name", None, "main")),
        ("org/name/model.safetensors", ("org/name", "model.safetensors", "main")),
        ("org/name@v1.0", ("org/name", None, "v1.0")),
        ("org/name@abc123/unet/model.safetensors", ("org/name", "unet/model.safetensors", "abc123")),
        ("org/name@refs%2Fpr%2F3", ("org/name", None, "refs/pr/3")),
        (
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", None, "main"),
        ),
    ],
)
def test_parse_hub_spec(spec, parsed):
    assert parse_hub_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec", ["name", "/abs/path", "org/na me", "org/name@", "-org/name", "org/a--b", "org/n/../x"]
)
def test_parse_hub_spec_refuses_what_is_not_a_hub_id(spec):
    with pytest.raises(WeightsError, match="org/name"):
        parse_hub_spec(spec)


@pytest.mark.parametrize(
    ("spec", "local"),
    [
        ("org/name", False),
        ("org/name/model.safetensors", False),
        ("org/name@main", False),
        ("./org/name", True),
        ("~/models/sd.safetensors", True),
        ("/models/sd", True),
        ("models/v1-5-pruned-emaonly.safetensors", True),  # a mistyped local file, not a repo
        ("C:\\models\\sd.safetensors", True),
    ],
)
def test_is_local_path(spec, local):
    assert is_local_path(spec) == local


def test_existing_path_wins_over_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert is_local_path("org/name")
