"""How a torchrun launch splits work: this process's rank, its batches, its GPU.

Batch k goes to rank k mod WORLD_SIZE (torchrun's RANK / WORLD_SIZE / LOCAL_RANK; rank 0 of 1 without
them), fixed before any work, so no process group is needed and what a row gets never depends on the
number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from pipeline.batching import Batch
from pipeline.models import parse_device

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a torchrun launch: rank `rank` of `world_size`, GPU `local_rank`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Shard:
        """torchrun's RANK, WORLD_SIZE and LOCAL_RANK; rank 0 of 1 when they are unset."""
        values = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            text = environ.get(name)
            try:
                values[name] = None if text is None else int(text)
            except ValueError:
                raise ValueError(
                    f"environment variable {name}={text!r} is not an integer; "
                    "launch with torchrun, or unset it"
                ) from None
        world_size = 1 if values["WORLD_SIZE"] is None else values["WORLD_SIZE"]
        if world_size > 1 and values["RANK"] is None:
            raise ValueError(f"WORLD_SIZE is {world_size} but RANK is not set; launch with torchrun")
        rank = values["RANK"] or 0
        local_rank = rank if values["LOCAL_RANK"] is None else values["LOCAL_RANK"]
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(
                f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} is not a valid launch; "
                "need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"
            )
        return cls(rank, world_size, local_rank)


def shard_batches(batches: Sequence[Batch[T]], shard: Shard) -> list[Batch[T]]:
    """Batch k goes to rank k mod world_size: fixed before any work; shares differ by one batch at most."""
    return list(batches[shard.rank :: shard.world_size])


def pick_device(spec: str | None, shard: Shard) -> torch.device:
    """--device, default cuda if there is one; a CUDA device without an index is cuda:LOCAL_RANK."""
    device = parse_device(spec)
    if device.type == "cuda":
        device = torch.device("cuda", shard.local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"there is no {device}: this machine has {torch.cuda.device_count()} CUDA devices; "
                "start at most that many processes per node"
            )
        torch.cuda.set_device(device)
    return device
