"""The schedule search of solvers/search/ on a real SD model: `python -m solvers.search --weights ...`.

- Samples: sample k has prompt k mod P of the prompt list and seed S + k; its starting latent is that
  seed's noise (`initial_noise`, as generation draws it) at sigma_max.
- The denoiser: classifier-free guided, each sample with its own prompt, in U-Net batches of
  `batch_size` rows.
- The teacher: the fine solve of solvers/search/teacher.py, batch by batch (`pipeline.batches`), batch k
  on rank k mod WORLD_SIZE under torchrun (pipeline/sharding.py); each sample's trajectory goes into the
  cache folder as soon as its batch is done, so a killed run restarts where it stopped. Rank 0 then
  waits for the other ranks' trajectories and runs the search alone. A cache file that is damaged or
  does not hold this trajectory (another key, shape or dtype, values not finite) is removed with a
  one-line warning and solved again, never used. The cache folder is proved writable before the
  model loads, and to have room for the missing trajectories before the teacher starts.
- With `decoded`, final states are compared as the VAE decodes them, in [0, 1].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

import safeio
import weights
from model import SizeConditioning
from pipeline.batching import batches
from pipeline.generate import conditioning, decode_pixels, denoiser, initial_noise
from pipeline.limits import LATENT_FACTOR
from pipeline.runs import Job, Run
from pipeline.sharding import Shard, shard_batches
from solvers.search import Counted, Subject, Teacher, solve_teacher, states_problem

CACHE_FORMAT = 1
CACHE_FILE_OVERHEAD = 1 << 16  # bytes of a cache file beyond its states: the header with the key


def samples(prompts: Sequence[str], count: int, first_seed: int) -> list[Job]:
    """Sample k: prompt k mod len(prompts), seed first_seed + k."""
    return [Job(prompts[k % len(prompts)], first_seed + k) for k in range(count)]


def latents(sd: weights.StableDiffusion, rows: Sequence[Job], height: int, width: int) -> Tensor:
    """The starting latents at sigma_max, float32 on the model's device: each row's own seed's noise."""
    device = next(sd.unet.parameters()).device
    shape = (sd.unet.config.in_channels, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return initial_noise([row.seed for row in rows], shape, device) * sd.schedule.sigma_max


def batched_denoiser(
    sd: weights.StableDiffusion,
    rows: Sequence[Job],
    *,
    negative_prompt: str,
    batch_size: int,
    size: SizeConditioning | None = None,
    empty_negative: str | None = None,
) -> Callable[..., Tensor]:
    """D(x, sigma, **options) for x of len(rows) samples, row k guided by rows[k].prompt, in U-Net
    batches of `batch_size` rows; `size` and `empty_negative` as `conditioning` takes them."""
    parts = []
    for start in range(0, len(rows), batch_size):
        prompts = [row.prompt for row in rows[start : start + batch_size]]
        cond = conditioning(sd, prompts, negative_prompt, size=size, empty_negative=empty_negative)
        guided = denoiser(sd, *cond)
        parts.append((slice(start, start + len(prompts)), guided))

    def denoise(x: Tensor, sigma: float, **options: Any) -> Tensor:
        return torch.cat([part(x[where], sigma, **options) for where, part in parts])

    return denoise


def decoder(sd: weights.StableDiffusion, batch_size: int) -> Callable[[Tensor], Tensor]:
    """Latents -> the VAE's images in [0, 1], in batches of `batch_size`."""

    def decode(x: Tensor) -> Tensor:
        return torch.cat([(decode_pixels(sd, part) / 2 + 0.5).clamp(0, 1) for part in x.split(batch_size)])

    return decode


def default_cache() -> Path:
    """$XDG_CACHE_HOME/fewstep-sd/teachers (default ~/.cache/...)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "fewstep-sd" / "teachers"


@dataclass(frozen=True)
class TeacherCache:
    """One file per sample, `{folder}/{sha256 of what decides it}.safetensors`, holding its teacher
    states [len(grid), C, h, w] and, as metadata, that key in full; written atomically and never over
    an existing file."""

    folder: Path
    identity: Mapping[str, Any]  # all that decides a trajectory besides its prompt and seed
    shape: tuple[int, ...] = ()  # one sample's states: [len(grid), C, h, w]

    def key(self, sample: Job) -> str:
        return json.dumps(
            {"format": CACHE_FORMAT, **self.identity, "prompt": sample.prompt, "seed": sample.seed}
        )

    def path(self, sample: Job) -> Path:
        return self.folder / f"{hashlib.sha256(self.key(sample).encode()).hexdigest()}.safetensors"

    def load(self, sample: Job) -> Tensor | None:
        """The sample's cached states; None when there are none, or when the file is damaged or holds
        something else (then it is removed, with a warning, to be solved again)."""
        path = self.path(sample)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            safeio.check_regular(path)
            with safe_open(path, framework="pt") as file:
                metadata, names = file.metadata(), sorted(file.keys())
                states = file.get_tensor("states") if names == ["states"] else None
        except (OSError, SafetensorError) as err:
            return _damaged(path, f"unreadable: {' '.join(str(err).split())}")
        if not metadata or metadata.get("key") != self.key(sample):
            return _damaged(path, "it holds another trajectory")
        problem = f"it holds {names}, not one 'states' tensor" if states is None else None
        problem = problem or states_problem(states, self.shape)
        return _damaged(path, problem) if problem else states

    def save(self, sample: Job, states: Tensor) -> None:
        data = save({"states": states.contiguous().cpu()}, metadata={"key": self.key(sample)})
        with contextlib.suppress(FileExistsError):  # a link never replaces what another rank wrote
            safeio.write_atomically(self.path(sample), data, replace=False)


def _damaged(path: Path, reason: str) -> None:
    warnings.warn(
        f"ignoring the damaged teacher cache file {path} ({reason}); solving it again", stacklevel=3
    )
    with contextlib.suppress(OSError):
        path.unlink()


def cache_folder(cache: str | os.PathLike | None) -> Path:
    """The teacher cache folder: `cache` if given, else the default under $XDG_CACHE_HOME."""
    return Path(cache).expanduser() if cache else default_cache()


def check_cache_folder(folder: Path) -> None:
    """Create the teacher cache folder and prove it writable, before minutes go into loading weights."""
    try:
        safeio.check_writable(folder)
    except OSError as err:
        raise safeio.NoRoom(
            "cannot write the teacher cache folder {folder}: {reason}; give {cache} a writable folder",
            folder=folder,
            reason=safeio.reason(err),
        ) from None


def check_cache_space(cache: TeacherCache, rows: Sequence[Job]) -> None:
    """Refuse, before the teacher starts, a cache folder without room for the trajectories it lacks
    (float32 states and a header each)."""
    missing = sum(not cache.path(row).exists() for row in rows)
    need = missing * (4 * math.prod(cache.shape) + CACHE_FILE_OVERHEAD)
    free = shutil.disk_usage(cache.folder).free
    if free < need:
        raise safeio.NoRoom(
            "{folder}: No space left for the teacher cache ({free} bytes free, up to {need} needed for "
            "{missing} trajectories); free space, give {cache} a folder on another disk, or lower {samples}, "
            "{held_out} or {grid}",
            folder=cache.folder,
            free=free,
            need=need,
            missing=missing,
        )


def teachers(
    sd: weights.StableDiffusion,
    rows: Sequence[Job],
    cache: TeacherCache,
    options: Mapping[str, Any],
    guided: Callable[[Sequence[Job]], Callable[..., Tensor]],
    *,
    height: int,
    width: int,
    batch_size: int,
    shard: Shard,
    progress: Callable[[int], Any] | None = None,
) -> Teacher | None:
    """Solve this rank's missing teachers into the cache, `guided(rows)` being those rows' denoiser; on
    rank 0 then wait for every row's and return the Teacher of all rows (None on the other ranks)."""
    grid, solver, substeps = (
        tuple(cache.identity["grid"]),
        cache.identity["solver"],
        cache.identity["substeps"],
    )
    for batch in shard_batches(batches(list(rows), batch_size), shard):
        if all([cache.load(row) is not None for _, row in batch.jobs]):  # a list: every damaged file goes
            continue
        own = len(batch.slots)  # progress counts the batch's own samples, not the copies that pad it
        denoise = Counted(guided(batch.rows), None if progress is None else lambda _, own=own: progress(own))
        x = latents(sd, batch.rows, height, width)
        teacher = solve_teacher(denoise, x, grid, options, solver=solver, substeps=substeps)
        for k, row in batch.jobs:
            cache.save(row, teacher.states[:, k])
    if shard.rank != 0:
        return None
    device = next(sd.unet.parameters()).device
    return Teacher(grid, torch.stack([_wait(cache, row) for row in rows], dim=1).to(device), solver, substeps)


def _wait(cache: TeacherCache, row: Job) -> Tensor:
    """The row's cached states, once another rank has written them (torchrun stops every rank when one
    fails, so this ends). A file found damaged here was written by a rank that is done: the rerun
    solves it again."""
    told = False
    while True:
        written = cache.path(row).exists()
        states = cache.load(row)
        if states is not None:
            return states
        if written:
            raise ValueError(f"the teacher cache file of {row} was damaged; rerun to solve it again")
        if not told:
            print("rank 0: waiting for the other ranks' teacher trajectories", file=sys.stderr)
            told = True
        time.sleep(1.0)


def subject(
    run: Run,
    prompts: Sequence[str],
    search_samples: int,
    held_out: int,
    *,
    seed: int,
    cache: str | os.PathLike | None = None,
    decoded: bool = False,
    shard: Shard | None = None,
) -> Subject:
    """The model of `run` as `python -m solvers.search` searches it: samples 0..K-1 are searched on, the
    next `held_out` score the plans; the size, negative prompt, size conditioning, empty negative and
    U-Net batch size are the run's settings, as generation takes them. Call under
    torch.inference_mode()."""
    shard = shard or Shard()
    rows = samples(prompts, search_samples + held_out, seed)
    sd, settings = run.model, run.settings
    height, width, batch_size, size = settings.height, settings.width, settings.batch, settings.size()
    folder = cache_folder(cache)
    check_cache_folder(folder)
    parameter = next(sd.unet.parameters())
    guided = partial(
        batched_denoiser, sd, negative_prompt=settings.negative_prompt, batch_size=batch_size, size=size,
        empty_negative=settings.empty_negative,
    )  # fmt: skip

    def teach(
        grid: Sequence[float],
        options: Mapping[str, Any],
        solver: str,
        substeps: int,
        progress: Callable[[int], Any],
    ) -> Teacher | None:
        identity = {"weights_sha256": settings.weights_sha256, "negative_prompt": settings.negative_prompt,
                    "height": height, "width": width, "dtype": str(parameter.dtype).removeprefix("torch."),
                    "device": parameter.device.type, "options": dict(options), "grid": list(grid),
                    "solver": solver, "substeps": substeps, "empty_negative": settings.empty_negative,
                    "size_conditioning": settings.size_conditioning}  # fmt: skip
        latent = (sd.unet.config.in_channels, height // LATENT_FACTOR, width // LATENT_FACTOR)
        store = TeacherCache(folder, json.loads(json.dumps(identity)), (len(grid), *latent))
        check_cache_space(store, rows)
        return teachers(sd, rows, store, options, guided, height=height, width=width, batch_size=batch_size,
                        shard=shard, progress=progress)  # fmt: skip

    return Subject(
        sd.schedule,
        settings.model,
        guided(rows[:search_samples]),
        guided(rows[search_samples:]),
        teach,
        decode=decoder(sd, batch_size) if decoded else None,
    )
