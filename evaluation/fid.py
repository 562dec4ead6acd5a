"""Frechet Inception Distance (Heusel et al. 2017) with pytorch-fid's network and weights.

FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to the 2048-d pool
features of the two image sets. Features and their statistics are cached per folder in a `.npz`
keyed by a fingerprint of the file list, sizes, mtimes, the weights' hash and the protocol.
"""

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import safeio
from evaluation.images import image_batches, list_images
from evaluation.inception import FIDInception  # also evaluation.fid.FIDInception
from evaluation.runs import PROTOCOLS

WEIGHTS_ENV = "FEWSTEP_INCEPTION_WEIGHTS"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
# Bump when a protocol's preprocessing changes, so that old caches stop matching.
CACHE_VERSION = 1
# Eigenvalues of a covariance (or of S1^(1/2) S2 S1^(1/2)) below -PSD_RTOL * the largest one are not
# rounding error: the input is not a covariance matrix. pytorch-fid's analogue is an imaginary part
# of sqrtm(S1 S2) above 1e-3.
PSD_RTOL = 1e-6


def _psd_eigenvalues(eigenvalues: np.ndarray, what: str) -> np.ndarray:
    """Eigenvalues of a PSD matrix, cleaned of rounding: negatives beyond rounding are refused, and
    everything under the eigensolver's noise floor (n * eps * the largest) is set to 0, because the
    square root taken next would magnify that noise from ~1e-16 to ~1e-8 of the scale."""
    scale = max(float(np.abs(eigenvalues).max()), np.finfo(np.float64).tiny)
    if eigenvalues.min() < -PSD_RTOL * scale:
        raise ValueError(
            f"{what} is not positive semi-definite (eigenvalue {eigenvalues.min():.3g} of scale "
            f"{scale:.3g}); pass covariance matrices such as np.cov(features, rowvar=False)"
        )
    floor = len(eigenvalues) * np.finfo(np.float64).eps * scale
    return np.where(eigenvalues > floor, eigenvalues, 0.0)


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{name}: mean must be [d] and covariance [d, d]; got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance has NaN or infinite entries")
    if np.abs(sigma - sigma.T).max() > PSD_RTOL * max(np.abs(sigma).max(), 1e-300):
        raise ValueError(f"{name}: covariance is not symmetric; pass np.cov(features, rowvar=False)")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    The trace of the matrix square root uses the symmetric form
    Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2) = sum_i sqrt(lambda_i),
    valid because S1 S2 = S1^(1/2) (S1^(1/2) S2) has the eigenvalues of (S1^(1/2) S2) S1^(1/2), a PSD
    matrix (AB and BA share eigenvalues), so it needs two symmetric eigen-decompositions and no
    general `sqrtm`. This is how the cases pytorch-fid guards against are
    met here: a singular product (fewer samples than 2048 dimensions), for which pytorch-fid adds
    1e-6 I to both covariances when `sqrtm` returns non-finite values, needs no offset, because zero
    eigenvalues have the exact root 0; the complex part `sqrtm` picks up from rounding appears as
    tiny negative eigenvalues, dropped (set to 0), and large ones raise ValueError as pytorch-fid
    raises on a large imaginary component.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    _check_gaussian(mu1, sigma1, "first Gaussian")
    _check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the Gaussians have different dimensions: {mu1.size} and {mu2.size}")

    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(_psd_eigenvalues(w, "first covariance"))) @ v.T  # S1^(1/2)
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle
    lam = _psd_eigenvalues(np.linalg.eigvalsh(inner), "S1^(1/2) S2 S1^(1/2) (second covariance)")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(lam).sum())


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] of features [N, d], in float64 (as pytorch-fid)."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs features [N >= 2, d]; got shape {features.shape} (add more images)")
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


class MissingWeightsError(safeio.Worded, FileNotFoundError):
    """No FID Inception weights file: where to get one and how to name it."""


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The FID Inception weights file: `path`, else $FEWSTEP_INCEPTION_WEIGHTS; it must exist."""
    chosen = path or os.environ.get(WEIGHTS_ENV)
    if chosen and Path(chosen).is_file():
        return Path(chosen)
    found = f"{chosen} does not exist" if chosen else "none given"
    raise MissingWeightsError(
        "FID Inception weights: {found}; download {url} and give its path as {inception}, or set {env}=PATH",
        found=found,
        url=WEIGHTS_URL,
        env=WEIGHTS_ENV,
    )


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInception:
    """FIDInception with pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` state dict loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises several types for a file that is no state dict
        raise ValueError(
            f"cannot read {path} as a PyTorch state dict ({error}); pass {WEIGHTS_URL}"
        ) from error
    model = FIDInception()
    try:
        model.load_state_dict(state)
    except (RuntimeError, AttributeError, TypeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{path} does not fit the FID Inception: {detail}") from error
    return model.to(device)


def inception_features(
    paths: list[Path],
    model: FIDInception,
    protocol: str,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Pool features [N, 2048] (float32) of the images at `paths`, prepared by `protocol`."""
    chunks = []
    with torch.inference_mode(), tqdm(total=len(paths), unit="img", desc=protocol, leave=False) as bar:
        for batch in image_batches(paths, protocol, batch_size):
            chunks.append(model(batch.to(device)).float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(chunks)


@dataclass
class FolderStats:
    features: np.ndarray  # [N, 2048] float32
    mu: np.ndarray  # [2048] float64
    sigma: np.ndarray  # [2048, 2048] float64
    fingerprint: str
    cached: bool  # read from the cache file rather than computed

    @property
    def count(self) -> int:
        return len(self.features)


def cache_path(folder: str | Path, protocol: str, cache_dir: str | Path | None = None) -> Path:
    """`<cache_dir or the folder's parent>/<folder name>.<protocol>-inception.npz`."""
    folder = Path(folder).resolve()
    return Path(cache_dir or folder.parent) / f"{folder.name}.{protocol}-inception.npz"


def fingerprint(paths: list[Path], weights_sha256: str, protocol: str) -> str:
    files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    payload = {"version": CACHE_VERSION, "protocol": protocol, "weights": weights_sha256, "files": files}
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _read_cache(path: Path, key: str) -> FolderStats | None:
    """The statistics cached at `path` if they are whole and keyed by `key`; a damaged cache (truncated,
    a pickle, fields missing, mis-shaped, not finite floats) is ignored with a warning, never unpickled."""
    if not path.is_file():
        return None
    try:
        safeio.check_regular(path)
        with np.load(path, allow_pickle=False) as cached:
            if "fingerprint" not in cached.files or str(cached["fingerprint"]) != key:
                return None if "fingerprint" in cached.files else _damaged(path, "it has no fingerprint")
            features, mu, sigma = (cached[name] for name in ("features", "mu", "sigma"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        return _damaged(path, " ".join(str(error).split()) or type(error).__name__)
    d = features.shape[-1] if features.ndim == 2 else -1
    if features.ndim != 2 or mu.shape != (d,) or sigma.shape != (d, d) or len(features) < 2:
        return _damaged(path, f"its arrays have shapes {features.shape}, {mu.shape}, {sigma.shape}")
    if not all(np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() for a in (features, mu, sigma)):
        return _damaged(path, "its arrays are not all finite floating-point numbers")
    return FolderStats(features, mu, sigma, key, cached=True)


def _damaged(path: Path, why: str) -> None:
    warnings.warn(f"ignoring the damaged feature cache {path} ({why}); recomputing it", stacklevel=3)


def writable_cache_dir(folder: str | Path, cache_dir: str | Path | None) -> Path | None:
    """Where the caches of `folder` can go: `cache_dir` (refused if it cannot be written), else the
    folder's parent, else (read-only parent, with a note) the user cache $XDG_CACHE_HOME/fewstep-sd/fid.
    Checked before any feature is computed."""
    candidates = [Path(cache_dir)] if cache_dir else [Path(folder).resolve().parent, user_cache_dir()]
    for n, directory in enumerate(candidates):
        try:
            safeio.check_writable(directory)
        except OSError as error:
            if cache_dir:
                raise safeio.NoRoom(
                    "cannot write the feature cache folder {directory} ({reason}); give a writable "
                    "{cache_dir}",
                    directory=directory,
                    reason=safeio.reason(error),
                ) from None
            continue
        if n:
            warnings.warn(f"{candidates[0]} is not writable; feature caches go to {directory}", stacklevel=2)
        return directory
    raise safeio.NoRoom(
        "cannot write a feature cache beside {folder} nor in {user}; give a writable {cache_dir}",
        folder=folder,
        user=user_cache_dir(),
    )


def user_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "fewstep-sd" / "fid"


def folder_stats(
    folder: str | Path,
    model: FIDInception,
    weights_sha256: str,
    protocol: str,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
) -> FolderStats:
    """Features and statistics of an image folder, from its cache file when the fingerprint matches."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    paths = list_images(folder)
    key = fingerprint(paths, weights_sha256, protocol)
    path = cache_path(folder, protocol, writable_cache_dir(folder, cache_dir))
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    features = inception_features(paths, model, protocol, batch_size, device)
    mu, sigma = feature_statistics(features)
    safeio.remove_stale(path.parent, path.name)

    def write(file) -> None:
        np.savez(file, features=features, mu=mu, sigma=sigma, count=len(features), fingerprint=key)

    try:
        safeio.write_atomically(path, write)  # readers never see a half-written cache
    except OSError as error:
        raise safeio.NoRoom(
            "cannot write the feature cache {path} ({reason}); give a writable {cache_dir}",
            path=path,
            reason=safeio.reason(error),
        ) from None
    return FolderStats(features, mu, sigma, key, cached=False)
