"""`DIR/run.json`, the record a generation run leaves in its folder: what the table reads. Plain JSON,
no models, so reading results imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

import safeio

RUN_FILE = "run.json"
RUN_FORMAT = 1
# The FID / PRD protocols a metric record may hold (docs/evaluation.md section 3).
PROTOCOLS = {
    "paper": "pytorch-fid; PIL bicubic to 512x512 without crop, bilinear to 299 in the network",
    "clean": "clean-fid 'clean'; center crop, PIL Lanczos to 256x256, float PIL bicubic to 299x299",
}


def read_run(path: Path, fix: str) -> dict | None:
    """The run record at `path`, None if there is none; refused (with `fix`, what to do) if it is
    not a record of this format."""
    if not path.exists():
        return None
    record = safeio.read_json(path, fix)
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} is not a run record of format {RUN_FORMAT}; {fix}")
    return record
