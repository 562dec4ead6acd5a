"""The one place a run's images are cut into U-Net batches.

Every batch of a run has the same number of rows, the short one padded with copies: batched GEMMs
block (and so round) by the batch's shape and an image's row in it, not by the other rows' values,
so an image has the same pixels in any run with that batch size, and a replay that rebuilds its
batch shape and row (Settings.batch, Settings.batch_index) is bitwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Batch(Generic[T]):
    """One U-Net batch: `rows` (all of them run), of which `slots` hold jobs of their own."""

    rows: tuple[T, ...]
    slots: range

    @property
    def jobs(self) -> list[tuple[int, T]]:
        """(row, job) for the rows that are not padding."""
        return [(k, self.rows[k]) for k in self.slots]


def batches(jobs: Sequence[T], size: int, offset: int = 0) -> list[Batch[T]]:
    """The jobs in order, in batches of `size` rows: each batch's jobs from row `offset` on (a replay
    puts its one job back at the row it was made in), the other rows copies of the nearest job."""
    if not jobs:
        return []
    if not 0 <= offset < size:
        raise ValueError(f"batch row {offset} does not exist in a batch of {size}")
    per_batch = size - offset
    cut = [list(jobs[i : i + per_batch]) for i in range(0, len(jobs), per_batch)]
    return [
        Batch(
            tuple(part[:1] * offset + part + part[-1:] * (per_batch - len(part))),
            range(offset, offset + len(part)),
        )
        for part in cut
    ]
