"""Weights from the Hugging Face Hub through huggingface_hub, into the cache it shares with diffusers
and transformers: a file by `hf_hub_download`; a diffusers folder by one listing of the repo, to pick
the files, and one `snapshot_download` of exactly those. The library brings the cache (HF_HUB_CACHE,
else $HF_HOME/hub), offline mode (HF_HUB_OFFLINE), the endpoint (HF_ENDPOINT), tokens (HF_TOKEN or
`hf auth login`), proxies, resumed downloads and Xet transfers; it reads the HF_* variables but
HF_TOKEN once, when it is imported.

On top: what the cache holds is taken as it is, without network access; a fresh download is checked
against its sha256 (pinned in weights/catalog.py, else the one the Hub announces for an LFS file) and
deleted with its link if it fails, so nothing stays under a file's name unless it came whole and
checked (an interrupted download stays as huggingface_hub's `.incomplete` blob, which the next call
resumes); every failure is one line that says what to do.
"""

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import FileMetadataError
from requests.exceptions import ChunkedEncodingError, HTTPError

from weights.catalog import PINNED_SHA256
from weights.errors import WeightsError
from weights.fingerprint import hash_file
from weights.hub_spec import check_names

_HINT = "To use a local copy instead, give its path (a .safetensors file or a diffusers folder)."
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GATED = "; for a private or gated repo, accept its terms on the Hub and set HF_TOKEN"
_HTTP_HINTS = {401: _GATED, 403: _GATED, 404: "; check the repo id, file name and revision"}


class NotOnHub(WeightsError):
    """The Hub answered 404: no such repo, revision or file."""


def hub_file(repo_id: str, filename: str, revision: str = "main") -> Path:
    """The path of `filename` in `repo_id` at `revision` in the Hugging Face cache, downloaded unless
    it is there already (then no network access at all). Raises WeightsError in one line."""
    check_names(repo_id, filename, revision)
    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    label = f"{repo_id}/{filename} (revision {revision})"
    _refuse_offline(label)
    with _one_line(label):
        path = Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
    if wrong := _verify(repo_id, filename, revision, path):
        raise WeightsError(wrong)
    return path


def hub_folder(repo_id: str, files: list[tuple[tuple[str, ...], bool]], revision: str) -> Path:
    """The snapshot folder of `repo_id` at `revision` (a commit, so every file is of the same one)
    holding `files`: for each entry the first of its alternatives the repo has (offline: the first
    the cache has); an entry marked required must be found, the others may be missing. Where the
    cache cannot tell which, one listing of the repo picks them and one snapshot_download fetches them."""
    repo_cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot, label = repo_cache / "snapshots" / revision, f"{repo_id} (revision {revision})"
    cached = {name: _cached(repo_id, name, revision) for alternatives, _ in files for name in alternatives}
    if all(cached[name] for name in _pick(repo_id, files, revision, cached)):
        return snapshot
    with _one_line(label):
        info = huggingface_hub.HfApi().model_info(repo_id, revision=revision)
    listed = {entry.rfilename for entry in info.siblings}
    for missing in (repo_cache / ".no_exist" / revision / name for name in cached.keys() - listed):
        missing.parent.mkdir(parents=True, exist_ok=True)  # as huggingface_hub records a 404, so that
        missing.touch()  # the next call settles from the cache
    picked = _pick(repo_id, files, revision, {name: name in listed for name in cached})
    try:
        with _one_line(label):
            huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=picked)
    finally:  # every fresh file is checked, those that came before a failure too
        checks = [_verify(repo_id, name, revision, snapshot / name) for name in picked if not cached[name]]
        if wrong := next(filter(None, checks), None):
            raise WeightsError(wrong)
    return snapshot


def _cached(repo_id: str, filename: str, revision: str) -> bool | None:
    """Whether the cache holds `filename` at `revision`; None where only the Hub can tell (online, a
    file neither cached nor recorded as missing)."""
    found = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(found, str):
        return True
    return False if found is huggingface_hub._CACHED_NO_EXIST or constants.HF_HUB_OFFLINE else None


def _pick(
    repo_id: str, files: list[tuple[tuple[str, ...], bool]], revision: str, there: dict[str, bool | None]
) -> list[str]:
    """For each entry of `files` its first alternative not known to be missing from `there`; an entry
    marked required without one is refused."""
    picked = []
    for alternatives, required in files:
        name = next((name for name in alternatives if there[name] is not False), None)
        if name is not None:
            picked.append(name)
        elif required:
            _refuse_offline(f"{repo_id}/{alternatives[0]} (revision {revision})")
            raise NotOnHub(
                f"{repo_id} (revision {revision}) has none of {', '.join(alternatives)}, so it is not a "
                f"complete diffusers folder. {_HINT}"
            )
    return picked


def _refuse_offline(label: str) -> None:
    if constants.HF_HUB_OFFLINE:
        raise WeightsError(
            f"{label} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and offline mode "
            f"(HF_HUB_OFFLINE) is on: turn it off to download the file. {_HINT}"
        )


def _verify(repo_id: str, filename: str, revision: str, path: Path) -> str | None:
    """Check a fresh download against its pinned sha256, else against its blob's name where that is an
    LFS sha256 (a small git file is named by its git sha1), so that `weights.fingerprint` may trust
    the name; bytes that fail are deleted with their link, and the failure returned in words."""
    blob, pinned = path.resolve(), PINNED_SHA256.get((repo_id, filename))
    expected = pinned or (blob.name if _SHA256.fullmatch(blob.name) else None)
    if not blob.is_file() or expected is None or (digest := hash_file(blob)) == expected:
        return None  # not downloaded (or deleted as another file's blob), or as expected
    blob.unlink()
    path.unlink()
    return (
        f"could not download {repo_id}/{filename} (revision {revision}) from {constants.ENDPOINT}: the "
        f"downloaded bytes have sha256 {digest}, not {'the pinned' if pinned else 'the announced'} "
        f"{expected} (deleted them). {_HINT}"
    )


@contextmanager
def _one_line(label: str) -> Iterator[None]:
    """A failed request as one WeightsError (NotOnHub for a 404) naming `label`, the endpoint and why."""
    try:
        yield
    except OSError as err:  # requests' and huggingface_hub's errors are all OSErrors
        status, reason = _reason(err)
        error = NotOnHub if status == 404 else WeightsError
        raise error(f"could not download {label} from {constants.ENDPOINT}: {reason}. {_HINT}") from None


def _reason(err: BaseException) -> tuple[int | None, str]:
    """The HTTP status, if any, and the cause in words: the first one found walking in along the chain
    of errors that huggingface_hub, requests and urllib3 built."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, HTTPError) and cause.response is not None:  # huggingface_hub's or requests' own
            answer = cause.response
            detail = " ".join(answer.headers.get("X-Error-Message", "").split())  # the Hub's own words
            reason = f"HTTP {answer.status_code} {answer.reason}" + (f" ({detail})" if detail else "")
            later = "; the Hub is in trouble, try again later" if answer.status_code >= 500 else ""
            return answer.status_code, reason + _HTTP_HINTS.get(answer.status_code, later)
        if isinstance(cause, socket.gaierror):
            return None, f"host name lookup failed ({cause.strerror}): no network, or a wrong HF_ENDPOINT"
        if isinstance(cause, FileMetadataError):
            return None, "the answer lacks the X-Repo-Commit, ETag or size of a Hub; check HF_ENDPOINT"
        if isinstance(cause, ChunkedEncodingError):
            return None, "the connection broke off mid-file; run again to resume the download"
        if isinstance(cause, OSError) and cause.strerror:
            return None, cause.strerror  # e.g. Connection refused
        err, cause = cause, cause.__cause__ or cause.__context__
    return None, " ".join(str(err).split()) or type(err).__name__
