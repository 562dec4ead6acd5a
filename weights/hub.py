"""Weights from the Hugging Face Hub, fetched by huggingface_hub into the cache it shares with
diffusers and transformers. The library brings the cache (HF_HUB_CACHE, else $HF_HOME/hub), offline
mode (HF_HUB_OFFLINE), the endpoint (HF_ENDPOINT), tokens (HF_TOKEN or `hf auth login`), proxies,
resumed downloads and Xet transfers; it reads the HF_* variables but HF_TOKEN once, when it is imported.

On top, this module checks each file it downloads against its sha256 (pinned in weights/catalog.py
for the files the project names, else the one the Hub announces for an LFS file; a file found in the
cache is taken as it is, without network access), picks the files of a diffusers folder one by one,
and words every failure as one line that says what to do. Nothing stays under a file's name in the
cache unless it was downloaded whole and checked; an interrupted download stays as huggingface_hub's
`.incomplete` blob, which the next call resumes.
"""

import re
import socket
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import FileMetadataError, HfHubHTTPError
from requests import Response
from requests.exceptions import ChunkedEncodingError

from weights.catalog import PINNED_SHA256
from weights.errors import WeightsError
from weights.fingerprint import hash_file
from weights.hub_spec import check_names

_WEIGHTS_HINT = "To use a local copy instead, pass --weights PATH (a .safetensors file or diffusers folder)."
_SHA256 = re.compile(r"[0-9a-f]{64}")


def hub_file(repo_id: str, filename: str, revision: str = "main") -> Path:
    """The path of `filename` in `repo_id` at `revision` in the Hugging Face cache, downloaded unless
    it is there already (then no network access at all). Raises WeightsError in one line."""
    label = f"{repo_id}/{filename} (revision {revision})"
    check_names(repo_id, filename, revision)
    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise WeightsError(
            f"{label} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and offline mode "
            f"(HF_HUB_OFFLINE) is on: turn it off to download the file. {_WEIGHTS_HINT}"
        )
    failed = f"could not download {label} from {constants.ENDPOINT}"
    try:
        path = Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
    except OSError as err:  # requests' and huggingface_hub's errors are all OSErrors
        status, reason = _reason(err)
        raise (NotOnHub if status == 404 else WeightsError)(f"{failed}: {reason}. {_WEIGHTS_HINT}") from None
    _verify(path, PINNED_SHA256.get((repo_id, filename)), failed)
    return path


def hub_folder(repo_id: str, files: list[tuple[tuple[str, ...], bool]], revision: str) -> Path:
    """The snapshot folder of `repo_id` at `revision` (a commit, so every file is of the same one)
    holding `files`: for each entry the first of its alternatives the Hub has (offline: the first one
    the cache has), each fetched by `hub_file`; an entry marked required must be found, the others may
    be missing."""
    for alternatives, required in files:
        if not any(_fetched(repo_id, name, revision) for name in alternatives) and required:
            if constants.HF_HUB_OFFLINE:  # hub_file words the offline refusal
                hub_file(repo_id, alternatives[0], revision)
            raise NotOnHub(
                f"{repo_id} (revision {revision}) has none of {', '.join(alternatives)}, so it is not a "
                f"complete diffusers folder. {_WEIGHTS_HINT}"
            )
    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision


class NotOnHub(WeightsError):
    """The Hub answered 404: no such repo, revision or file."""


def _fetched(repo_id: str, filename: str, revision: str) -> bool:
    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    if cached is huggingface_hub._CACHED_NO_EXIST or (constants.HF_HUB_OFFLINE and cached is None):
        return False  # known to be missing at this commit, or not cached while offline: no request
    try:
        hub_file(repo_id, filename, revision)
    except NotOnHub:
        return False
    return True


def _verify(path: Path, pinned: str | None, failed: str) -> None:
    """Check a fresh download against its pinned sha256, else against its blob's name where that is an
    LFS sha256 (a small git file is named by its git sha1), so that `weights.fingerprint` may trust
    the name; bytes that fail are deleted with their link, so nothing stays under the file's name."""
    blob = path.resolve()
    expected = pinned or (blob.name if _SHA256.fullmatch(blob.name) else None)
    if expected is None:
        return
    digest = hash_file(blob)
    if digest != expected:
        blob.unlink()
        path.unlink()
        why = "the pinned" if pinned else "the announced"
        raise WeightsError(
            f"{failed}: the downloaded bytes have sha256 {digest}, not {why} {expected} (deleted them). "
            f"{_WEIGHTS_HINT}"
        )


def _reason(err: BaseException) -> tuple[int | None, str]:
    """The HTTP status, if any, and the cause of a failed download in words: from the innermost error
    that huggingface_hub, requests and urllib3 chained."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return cause.response.status_code, _http_reason(cause.response)
        if isinstance(cause, FileMetadataError):
            return None, "the answer lacks the X-Repo-Commit, ETag or size of a Hub; check HF_ENDPOINT"
        if isinstance(cause, ChunkedEncodingError):
            return None, "the connection broke off mid-file; run again to resume the download"
        if isinstance(cause, socket.gaierror):
            return None, f"host name lookup failed ({cause.strerror}): no network, or a wrong HF_ENDPOINT"
        if isinstance(cause, TimeoutError):
            return None, "no answer in time: a slow network? HF_HUB_ETAG_TIMEOUT raises the limit"
        if isinstance(cause, OSError) and cause.strerror:
            return None, cause.strerror  # e.g. Connection refused
        err, cause = cause, cause.__cause__ or cause.__context__
    return None, " ".join(str(err).split()) or type(err).__name__


def _http_reason(response: Response) -> str:
    detail = " ".join(response.headers.get("X-Error-Message", "").split())  # the Hub's own words, one line
    reason = f"HTTP {response.status_code} {response.reason}" + (f" ({detail})" if detail else "")
    if response.status_code in (401, 403):
        return (
            f"{reason}; the repo is private, gated or misspelled: for a gated one accept its terms on the "
            "Hub and set HF_TOKEN to an access token"
        )
    if response.status_code == 404:
        return reason + "; check the repo id, file name and revision"
    if response.status_code >= 500:
        return reason + "; the server is in trouble, try again later"
    return reason
