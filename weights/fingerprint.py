"""The sha256 that identifies a set of weights (A1111's "Model hash" is its first 10 hex digits).

- A single file: the sha256 of its bytes. A file in the Hugging Face cache is a link to
  `blobs/{sha256}`, verified when it was downloaded, so its name is the answer and nothing is read.
  Any other file is read once (streamed, with a progress bar when large) and the result is cached in
  `$XDG_CACHE_HOME/fewstep-sd/sha256.json` (default `~/.cache/...`), keyed by the absolute path and
  checked against the file's size and modification time.
- A diffusers folder: the sha256 of the text that `sha256sum` prints for its `*.safetensors` files,
  relative paths sorted, i.e. of `cd FOLDER && find . -name '*.safetensors' -printf '%P\\n' |
  LC_ALL=C sort | xargs sha256sum` (lines `{sha256}  {relative/path}\\n`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from tqdm import tqdm

import safeio
from weights.errors import WeightsError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_PROGRESS_FROM = 256 << 20  # files this large get a progress bar: reading 4 GB takes ~10 s


def cache_file() -> Path:
    """Where computed hashes are kept: $XDG_CACHE_HOME/fewstep-sd/sha256.json."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "fewstep-sd" / "sha256.json"


def weights_sha256(path: str | os.PathLike, progress: bool = True) -> str:
    """The sha256 of a weight file, or of a diffusers folder as defined in this module's docstring."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.safetensors") if p.is_file())
        if not files:
            raise WeightsError(
                f"{path} holds no .safetensors files; pass a weight file or a diffusers folder"
            )
        listing = "".join(f"{file_sha256(path / name, progress)}  {name}\n" for name in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    return file_sha256(path, progress)


def file_sha256(path: str | os.PathLike, progress: bool = True) -> str:
    """The sha256 of one file's bytes: from its Hugging Face blob name, the cache, or by reading it."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return real.name
    try:
        stat = real.stat()
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror}; give a readable file") from None
    key, stamp = str(real), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and {k: cached.get(k) for k in stamp} == stamp:
        return cached["sha256"]
    digest = hash_file(real, progress)
    _remember(key, {**stamp, "sha256": digest})
    return digest


def hash_file(path: Path, progress: bool = True) -> str:
    """The sha256 of a file's bytes, read now, with a progress bar if the file is large."""
    digest = hashlib.sha256()
    try:
        with (
            open(path, "rb") as file,
            tqdm(
                total=path.stat().st_size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"sha256 {path.name}",
                disable=not progress or path.stat().st_size < _PROGRESS_FROM,
                file=sys.stderr,
            ) as bar,
        ):
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                bar.update(len(chunk))
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror}; give a readable file") from None
    return digest.hexdigest()


def _read_cache() -> dict:
    # A missing, unreadable or half-written cache only costs a recomputation.
    try:
        data = safeio.read_json(cache_file(), "")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _remember(key: str, entry: dict) -> None:
    """Add one entry; written to a temporary file and renamed, so readers never see half a file.
    Two processes writing at once may drop each other's new entry, which is only recomputed later."""
    path = cache_file()
    data = _read_cache()
    data[key] = entry
    # an unwritable cache folder is not an error: the hash is simply not remembered
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        safeio.write_atomically(path, json.dumps(data, indent=1, sort_keys=True))
