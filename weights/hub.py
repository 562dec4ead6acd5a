"""Fetch files of a Hugging Face Hub repo (one file, or the files of a diffusers folder that
`weights.load` reads) into the cache that huggingface_hub, diffusers and transformers share, so a
file any of them downloaded is reused and the other way round.

Cache layout (huggingface_hub's), under `hub_cache_dir()`:

    models--{org}--{name}/
        refs/{revision}                  the commit a branch or tag pointed to when fetched
        blobs/{etag}                     the bytes; etag = sha256 for LFS files, git sha1 otherwise
        blobs/{etag}.incomplete          a download under way, resumed with an HTTP Range request
        snapshots/{commit}/{filename}    relative symlink to ../../blobs/{etag}
    .locks/models--{org}--{name}/{etag}.lock

Needs symlinks and fcntl.flock, i.e. Linux or macOS.
"""

import fcntl
import hashlib
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

from tqdm import tqdm

from weights.errors import WeightsError

DEFAULT_ENDPOINT = "https://huggingface.co"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_FILE = "v1-5-pruned-emaonly.safetensors"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_FILE = "sd_xl_base_1.0.safetensors"  # fp16, 6.94 GB
DREAMSHAPER_XL_REPO = "Lykon/dreamshaper-xl-1-0"  # a diffusers folder only (the paper's SDXL model)
SDXL_VAE_FIX_REPO = "madebyollin/sdxl-vae-fp16-fix"
SDXL_VAE_FIX_FILE = "sdxl_vae.safetensors"  # the file the paper's SDXL code loads (docs/model-facts.md 10.1)
# The weights of a repo named without a file: its single file; any other repo is a diffusers folder.
SINGLE_FILES = {
    SD15_REPO: SD15_FILE,
    SDXL_REPO: SDXL_FILE,
    SDXL_VAE_FIX_REPO: SDXL_VAE_FIX_FILE,
    "stabilityai/sdxl-vae": "sdxl_vae.safetensors",
}
SHORT_NAMES = {  # --weights / --vae NAME
    "sd15": SD15_REPO,
    "sdxl": SDXL_REPO,
    "dreamshaper-xl": DREAMSHAPER_XL_REPO,
    "sdxl-vae-fp16-fix": SDXL_VAE_FIX_REPO,
}

_WEIGHTS_HINT = "To use a local copy instead, pass --weights PATH (a .safetensors file or diffusers folder)."
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub accepts as true in HF_* variables
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN_NAME = re.compile(r"[\w-]+", re.ASCII)
_REPO_PART = re.compile(r"\w([\w.-]*\w)?", re.ASCII)
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_TIMEOUT_S = 10.0  # per connect and per read, as huggingface_hub
_MAX_REDIRECTS = 10
_ATTEMPTS = 5  # consecutive body requests that deliver nothing before giving up
_RETRY_WAIT_S = 1.0  # before retrying a request that delivered nothing
_CHUNK = 1 << 20


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return _hf_home() / "hub"


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


def hub_file(
    repo_id: str,
    filename: str,
    revision: str = "main",
    *,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> Path:
    """The local path of `filename` in `repo_id` at `revision`, downloading it into the Hugging Face cache
    unless it is there already (then no network access at all).

    endpoint: default HF_ENDPOINT, else https://huggingface.co. token: default HF_TOKEN, else the file
    `huggingface-cli login` wrote; sent only to the endpoint's host, never to the CDN it redirects to.
    offline: default HF_HUB_OFFLINE; when true, a file missing from the cache is an error.
    Raises WeightsError with a one-line message on any failure.
    """
    if not _is_repo_id(repo_id):
        raise WeightsError(f"{repo_id!r} is not a Hub repo id: expected org/name, e.g. {SD15_REPO}")
    for what, value in (("file name", filename), ("revision", revision)):
        if not _is_relative(value):
            raise WeightsError(f"{value!r} is not a valid {what} in a Hub repo: use a path without '..'")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    label = f"{repo_id}/{filename} (revision {revision})"

    cached = _cached(repo_dir, revision, filename)
    if cached is not None:
        return cached
    if offline is None:
        offline = _env_true("HF_HUB_OFFLINE")
    if offline:
        raise WeightsError(
            f"{label} is not in the Hugging Face cache {cache} and offline mode (HF_HUB_OFFLINE) is on: "
            f"turn it off to download the file. {_WEIGHTS_HINT}"
        )

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    auth = _Auth(_origin(endpoint), token or _env_token())
    url = f"{endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
    try:
        remote = _remote(url, auth)
        blob = repo_dir / "blobs" / remote.etag
        with _locked(cache / ".locks" / repo_dir.name / f"{remote.etag}.lock"):
            if not blob.exists():  # else shared with another revision, or another process just fetched it
                partial = blob.with_name(blob.name + ".incomplete")
                _download(remote, partial, auth, Path(filename).name if progress else None)
                _verify(partial, remote)
                os.replace(partial, blob)
            return _link(repo_dir, revision, remote.commit, filename, blob)
    except _Missing as err:
        raise NotOnHub(f"could not download {label} from {endpoint}: {err}. {_WEIGHTS_HINT}") from None
    except _Failed as err:
        reason = str(err)
    except (OSError, HTTPException) as err:
        reason = _network_reason(err)
    raise WeightsError(f"could not download {label} from {endpoint}: {reason}. {_WEIGHTS_HINT}")


def hub_folder(
    repo_id: str,
    files: list[tuple[tuple[str, ...], bool]],
    revision: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> Path:
    """The snapshot folder of `repo_id` at `revision` (a commit, so every file is of the same one)
    holding `files`: for each entry the first of its alternatives the Hub has (offline: the first one
    the cache has), each fetched by `hub_file` (resumed, checked); an entry marked required must be
    found, the others may be missing."""
    if offline is None:
        offline = _env_true("HF_HUB_OFFLINE")
    repo_dir = (Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()) / (
        "models--" + repo_id.replace("/", "--")
    )
    for alternatives, required in files:
        found = None
        for name in alternatives:
            if offline and _cached(repo_dir, revision, name) is None:
                continue
            try:
                found = hub_file(
                    repo_id, name, revision, cache_dir=cache_dir, offline=offline, progress=progress
                )
                break
            except NotOnHub:
                continue
        if found is None and required:
            if offline:  # hub_file words the offline refusal
                hub_file(repo_id, alternatives[0], revision, cache_dir=cache_dir, offline=True)
            raise NotOnHub(
                f"{repo_id} (revision {revision}) has none of {', '.join(alternatives)}, so it is not a "
                f"complete diffusers folder. {_WEIGHTS_HINT}"
            )
    return repo_dir / "snapshots" / revision


class NotOnHub(WeightsError):
    """The Hub answered 404: no such repo, revision or file."""


class _Failed(Exception):
    """Why a download failed, worded to follow 'could not download X from Y: '."""


class _Missing(_Failed):
    """The Hub has no such file (HTTP 404)."""


@dataclass(frozen=True)
class _Auth:
    origin: str  # scheme://host:port of the endpoint, the only place the token goes
    token: str | None

    def header(self, url: str) -> dict[str, str]:
        # a redirect target elsewhere (the CDN) gets a signed URL, never the user's token
        if self.token and _origin(url) == self.origin:
            return {"Authorization": f"Bearer {self.token}"}
        return {}


@dataclass(frozen=True)
class _Remote:
    commit: str
    etag: str
    size: int
    url: str  # where the bytes are: the CDN the Hub redirects to, or the resolve URL itself


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _hf_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(os.environ.get("HF_HOME") or default).expanduser()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").upper() in _TRUE


def _env_token() -> str | None:
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"].strip()
    path = Path(os.environ.get("HF_TOKEN_PATH") or _hf_home() / "token").expanduser()
    return (path.read_text().strip() or None) if path.is_file() else None


def _is_repo_id(repo_id: str) -> bool:
    # the Hub's rule: org/name of word characters, '-' and '.', no '--' or '..', at most 96 characters
    parts = repo_id.split("/")
    return (
        len(parts) == 2
        and all(_REPO_PART.fullmatch(part) for part in parts)
        and "--" not in repo_id
        and ".." not in repo_id
        and len(repo_id) <= 96
    )


def _is_relative(name: str) -> bool:
    # a path inside the repo (or a revision like refs/pr/3) that cannot climb out of the cache
    parts = name.split("/")
    return "\\" not in name and "" not in parts and ".." not in parts


def _cached(repo_dir: Path, revision: str, filename: str) -> Path | None:
    # a branch or tag is looked up through refs/; a commit hash names its snapshot directly
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    pointer = repo_dir / "snapshots" / commit / filename
    return pointer if pointer.exists() else None  # exists() follows the link: a dangling one is a miss


def _request(method: str, url: str, auth: _Auth, headers: dict[str, str] | None = None) -> HTTPResponse:
    """Send one request, following redirects. A HEAD stops at the Hub's own answer (the one carrying
    X-Repo-Commit) even when that is a redirect: its Location is where the bytes are."""
    opener = urllib.request.build_opener(_AnyStatus())
    for _ in range(_MAX_REDIRECTS):
        # identity: no compression, so Content-Length is the file's size
        sent = {"Accept-Encoding": "identity", "User-Agent": "fewstep-sd", **(headers or {})}
        sent.update(auth.header(url))
        response = opener.open(urllib.request.Request(url, headers=sent, method=method), timeout=_TIMEOUT_S)
        location = response.headers.get("Location")
        hub_answer = method == "HEAD" and "X-Repo-Commit" in response.headers
        if not (300 <= response.status < 400 and location) or hub_answer:
            return response
        response.close()
        url = urljoin(url, location)
    raise _Failed(f"more than {_MAX_REDIRECTS} redirects")


class _AnyStatus(urllib.request.HTTPErrorProcessor):
    """Hands back every response as it is, so redirects and HTTP errors are handled here."""

    def http_response(self, request, response):
        return response

    https_response = http_response


def _remote(url: str, auth: _Auth) -> _Remote:
    """What the Hub says of the file: commit, etag and size, from a HEAD of its resolve URL."""
    with _request("HEAD", url, auth) as response:
        headers = response.headers
        if response.status >= 400:
            raise (_Missing if response.status == 404 else _Failed)(_http_reason(response))
        location = headers.get("Location") if 300 <= response.status < 400 else None
        commit = headers.get("X-Repo-Commit", "")
        # an LFS file's own sha256 is X-Linked-Etag; ETag is that of the redirect or of a small git file
        etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"')
        size = headers.get("X-Linked-Size") or headers.get("Content-Length") or ""
        # commit and etag become directory and file names: accept plain names only
        if not (_PLAIN_NAME.fullmatch(commit) and _PLAIN_NAME.fullmatch(etag) and size.isdigit()):
            raise _Failed(
                f"the answer lacks valid X-Repo-Commit, ETag or size headers of a Hugging Face Hub "
                f"(HTTP {response.status}); check HF_ENDPOINT"
            )
        return _Remote(commit, etag, int(size), urljoin(response.url, location) if location else response.url)


def _download(remote: _Remote, partial: Path, auth: _Auth, progress_label: str | None) -> None:
    """Fill `partial` up to remote.size bytes. A request that drops mid-body is resumed with a Range
    request at once; after _ATTEMPTS requests in a row that deliver nothing, give up and keep the bytes."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.touch()  # so an empty file, which needs no request, still gets a blob
    done = partial.stat().st_size
    free = shutil.disk_usage(partial.parent).free
    if free < remote.size - done:
        raise _Failed(
            f"it needs {(remote.size - done) / 1e9:.2f} GB but {partial.parent} has {free / 1e9:.2f} GB "
            "free; free some space or point HF_HUB_CACHE at a larger disk"
        )
    bar = tqdm(
        total=remote.size,
        initial=done,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=progress_label,
        disable=progress_label is None,
        file=sys.stderr,
    )
    with bar:
        fruitless, last = 0, ""
        while done < remote.size:
            if fruitless == _ATTEMPTS:
                raise _Failed(
                    f"the connection failed {_ATTEMPTS} times in a row ({last}); the {done} bytes received "
                    f"are kept in {partial} and the next run resumes from there"
                )
            if fruitless:
                time.sleep(_RETRY_WAIT_S)
            try:
                _append(remote, partial, done, auth, bar)
                last = "the server closed the connection early"
            except (OSError, HTTPException) as err:
                last = _network_reason(err)
            before, done = done, partial.stat().st_size
            fruitless = 0 if done > before else fruitless + 1


def _append(remote: _Remote, partial: Path, done: int, auth: _Auth, bar: tqdm) -> None:
    """One GET of the bytes from `done` on, appended to `partial`; a server that ignores Range and
    answers 200 sends the whole file, which then replaces the partial one."""
    with _request("GET", remote.url, auth, {"Range": f"bytes={done}-"} if done else None) as response:
        resumed = response.status == 206
        got = response.headers.get("Content-Range", "")
        if resumed and not got.startswith(f"bytes {done}-"):
            raise _Failed(f"asked for bytes {done}- but got Content-Range {got!r}")
        if response.status != 200 and not resumed:
            raise _Failed(_http_reason(response))
        if not resumed:
            bar.reset()
        with open(partial, "ab" if resumed else "wb") as file:
            while chunk := response.read(_CHUNK):
                file.write(chunk)
                bar.update(len(chunk))


def _verify(partial: Path, remote: _Remote) -> None:
    """Check the size and, for LFS files (whose etag is their sha256), the sha256; a file that fails is
    deleted, since resuming it would only keep the bad bytes."""
    size = partial.stat().st_size
    if size != remote.size:
        partial.unlink()
        raise _Failed(f"got {size} bytes, not the announced {remote.size} (deleted them; run again)")
    if _SHA256.fullmatch(remote.etag):
        digest = hashlib.sha256()
        with open(partial, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != remote.etag:
            partial.unlink()
            raise _Failed(
                f"the downloaded bytes have sha256 {digest.hexdigest()}, not the announced {remote.etag} "
                "(deleted them; run again to download afresh)"
            )


def _link(repo_dir: Path, revision: str, commit: str, filename: str, blob: Path) -> Path:
    pointer = repo_dir / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)  # a dangling link left by a deleted blob
    os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    if revision != commit:  # refs exist for branch and tag names only
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            ref.write_text(commit)
    return pointer


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`, the lock huggingface_hub (via filelock) takes too, so two
    processes fetching the same blob take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


def _http_reason(response: HTTPResponse) -> str:
    detail = " ".join(response.headers.get("X-Error-Message", "").split())  # the Hub's own words, one line
    reason = f"HTTP {response.status} {response.reason}" + (f" ({detail})" if detail else "")
    if response.status in (401, 403):
        return (
            f"{reason}; the repo is private, gated or misspelled: for a gated one accept its terms on the "
            "Hub and set HF_TOKEN to an access token"
        )
    if response.status == 404:
        return reason + "; check the repo id, file name and revision"
    if response.status >= 500:
        return reason + "; the server is in trouble, try again later"
    return reason


def _network_reason(err: BaseException) -> str:
    cause = err.reason if isinstance(err, urllib.error.URLError) else err  # URLError wraps the socket error
    if isinstance(cause, socket.gaierror):
        return f"host name lookup failed ({cause.strerror}): no network, or a wrong HF_ENDPOINT"
    if isinstance(cause, TimeoutError):
        return f"no answer within {_TIMEOUT_S:g} s"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror  # e.g. Connection refused
    return " ".join(str(cause).split()) or type(cause).__name__
