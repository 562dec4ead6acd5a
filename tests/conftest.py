import pytest
import torch
from huggingface_hub import constants


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Caches the code keeps under XDG_CACHE_HOME (weights' sha256) go to a temporary folder, never
    to the user's home; a test that needs its own sets XDG_CACHE_HOME again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(autouse=True)
def _hub_offline(tmp_path_factory, monkeypatch):
    """No test reaches the Hugging Face Hub or the user's Hub cache and token. huggingface_hub reads
    HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN_PATH once, at import, into its constants, so a test
    sets those, not the variables (HF_TOKEN it reads on each request); tests/weights/test_hub.py goes online
    against its own server on 127.0.0.1."""
    cache = tmp_path_factory.mktemp("hf-hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
