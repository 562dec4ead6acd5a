"""How weights on the Hugging Face Hub are written: `org/name[@revision][/path/in/repo]`, and which
strings mean a local path instead."""

from pathlib import Path
from urllib.parse import unquote

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from weights.catalog import SD15_FILE, SD15_REPO
from weights.errors import WeightsError

_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """`org/name[@revision][/path/in/repo]` -> (repo_id, path in repo or None, revision).

    A revision holding '/' (refs/pr/3) is written URL-encoded: `org/name@refs%2Fpr%2F3`.
    """
    org, _, rest = spec.partition("/")
    name_rev, _, filename = rest.partition("/")
    name, at, revision = name_rev.partition("@")
    if at and not revision:
        raise WeightsError(f"{spec!r} has an empty revision: write org/name@REVISION, or drop the '@'")
    repo_id, revision = f"{org}/{name}", unquote(revision) or "main"
    if not (_is_repo_id(repo_id) and _is_relative(revision)) or (filename and not _is_relative(filename)):
        raise WeightsError(
            f"{spec!r} is neither an existing path nor a Hub id: expected org/name, "
            f"org/name/file.safetensors or org/name@revision, e.g. {SD15_REPO}/{SD15_FILE}"
        )
    return repo_id, filename or None, revision


def is_local_path(spec: str) -> bool:
    """Whether `spec` means a local file or folder rather than a Hub repo: an existing path always wins;
    so do absolute, ./ and ~ paths, and `dir/file.safetensors`, which only a typo'd path looks like."""
    if Path(spec).expanduser().exists() or spec.startswith(("/", ".", "~")):
        return True
    try:
        repo_id, filename, _ = parse_hub_spec(spec)
    except WeightsError:
        return True
    return filename is None and repo_id.endswith(_WEIGHT_SUFFIXES)


def check_names(repo_id: str, filename: str, revision: str) -> None:
    """Refuse a repo id, file name or revision that is not one, or that could climb out of the cache."""
    if not _is_repo_id(repo_id):
        raise WeightsError(f"{repo_id!r} is not a Hub repo id: expected org/name, e.g. {SD15_REPO}")
    for what, value in (("file name", filename), ("revision", revision)):
        if not _is_relative(value):
            raise WeightsError(f"{value!r} is not a valid {what} in a Hub repo: use a path without '..'")


def _is_repo_id(repo_id: str) -> bool:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return repo_id.count("/") == 1


def _is_relative(name: str) -> bool:
    # a path inside the repo (or a revision like refs/pr/3) that cannot climb out of the cache
    parts = name.split("/")
    return "\\" not in name and "" not in parts and ".." not in parts
