"""weights.fingerprint: the sha256 that identifies a set of weights, computed once per file."""

import hashlib
import json
import os

import pytest

from tests.checkpoints import write_checkpoint
from weights.errors import WeightsError
from weights.fingerprint import cache_file, file_sha256, weights_sha256


@pytest.fixture(autouse=True)
def sha256_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {"diffusers": write_checkpoint(tmp_path_factory.mktemp("diffusers"), layout="diffusers")}


# -- the weights' sha256 ---------------------------------------------------------------------------------


def test_file_sha256_is_computed_once_and_recomputed_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    assert str(path.resolve()) in json.loads(cache_file().read_text())
    with monkeypatch.context() as patch:  # undo only this patch, not the env fixture's variables
        patch.setattr("weights.fingerprint.hash_file", lambda *a: pytest.fail("read again"))
        assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second!")
    assert file_sha256(path) == hashlib.sha256(b"second!").hexdigest()


def test_hugging_face_blob_name_is_its_sha256_without_reading_it(tmp_path):
    name = "ab" * 32
    blob = tmp_path / "blobs" / name
    blob.parent.mkdir()
    blob.write_bytes(b"not actually hashed")
    pointer = tmp_path / "snapshots" / "c0ffee" / "model.safetensors"
    pointer.parent.mkdir(parents=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    assert file_sha256(pointer) == name


def test_diffusers_folder_sha256_is_that_of_its_sha256sum_listing(checkpoints):
    folder = checkpoints["diffusers"]
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    listing = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    assert len(names) == 3
    assert weights_sha256(folder) == hashlib.sha256(listing.encode()).hexdigest()


def test_folder_without_weights_has_no_sha256(tmp_path):
    with pytest.raises(WeightsError, match=r"holds no \.safetensors files"):
        weights_sha256(tmp_path)
