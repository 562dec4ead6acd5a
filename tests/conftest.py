import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Caches the code keeps under XDG_CACHE_HOME (weights' sha256) go to a temporary folder, never
    to the user's home; a test that needs its own sets XDG_CACHE_HOME again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
