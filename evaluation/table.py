"""The paper-style results table of generation runs, as Markdown.

    python -m evaluation.table runs/paper-5 runs/paper-8 runs/karras-2m-20 [--protocol paper|clean]

Each RUN_DIR is a folder `python -m evaluation.generate --out RUN_DIR` made: its `run.json` gives the
method (the plan's name), NFE and guidance. The metrics are the JSON files that these commands write
into it (the convention of this table):

    python -m evaluation.metrics fid --generated RUN_DIR --reference REF_DIR --json RUN_DIR/fid.json
    python -m evaluation.metrics clip --images RUN_DIR --manifest M --weights CLIP --json RUN_DIR/clip.json
    python -m evaluation.metrics prd --generated RUN_DIR --reference REF_DIR --json RUN_DIR/prd.json

A metric whose file is missing shows as "-". The PRD columns (F_8, F_1/8) appear when a run has
prd.json; the model's columns (Weights, with a U-Net file that replaced the checkpoint's; LoRAs with
their strengths; Sampler) when the runs differ in weights or LoRAs or one has a LoRA or U-Net file,
as a table of the paper's comparison, base model beside distilled ones, does. FID and PRD are read
for one protocol (--protocol, default the paper's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cli
import safeio
from evaluation.runs import PROTOCOLS, RUN_FILE, read_run

PROG = "python -m evaluation.table"
METRIC_FILES = {"fid": "fid.json", "clip": "clip.json", "prd": "prd.json"}
MISSING = "-"


@dataclass(frozen=True)
class Row:
    """One run's line of the table; None where its metric file is missing."""

    method: str
    nfe: int
    guidance: float | list[float]
    fid: float | None
    clip: float | None
    prd: tuple[float, float] | None  # (F_8, F_1/8)
    weights: str = MISSING  # the model's display name, + a U-Net file's name
    loras: str = MISSING  # "file x strength", comma-separated
    sampler: str = MISSING  # the PNG's Sampler (run.json before it was recorded: "-")
    adapted: bool = False  # a LoRA or U-Net file changed the weights


def read_row(run_dir: str | Path, protocol: str = "paper") -> Row:
    """The table row of `run_dir`: run.json and whichever metric files are there."""
    run_dir = Path(run_dir)
    run = read_run(run_dir / RUN_FILE, "write it again with python -m evaluation.generate")
    if run is None:
        raise ValueError(
            f"{run_dir} has no {RUN_FILE}; pass folders written by python -m evaluation.generate --out DIR"
        )
    if not all(k in run for k in ("method", "nfe", "guidance")):
        raise ValueError(
            f"{run_dir / RUN_FILE} lacks method, nfe or guidance; "
            "write it again with python -m evaluation.generate"
        )
    paths = {metric: run_dir / name for metric, name in METRIC_FILES.items()}
    records = {metric: _read_json(path, metric) for metric, path in paths.items()}
    fid = clip = prd = None
    if records["fid"] is not None:
        value = _for_protocol(records["fid"], "fid", protocol, paths["fid"])
        fid = None if value is None else _number(value, "the FID", paths["fid"])
    if records["clip"] is not None:
        clip = _number(records["clip"].get("clip_score"), "clip_score", paths["clip"])
    if records["prd"] is not None:
        scores = _for_protocol(records["prd"], "prd", protocol, paths["prd"])
        if scores is not None:
            scores = scores if isinstance(scores, dict) else {}
            prd = tuple(_number(scores.get(key), key, paths["prd"]) for key in ("f_8", "f_1/8"))
    loras = run.get("loras") or []
    unet = run.get("unet")
    weights = str(run.get("model") or MISSING) + (f" + U-Net {Path(unet).name}" if unet else "")
    lora_text = ", ".join(f"{lora['file']} x{lora['strength']:g}" for lora in loras) or MISSING
    sampler = str(run.get("sampler") or MISSING)
    return Row(
        run["method"],
        run["nfe"],
        run["guidance"],
        fid,
        clip,
        prd,
        weights,
        lora_text,
        sampler,
        bool(loras or unet),
    )


def markdown(rows: Sequence[Row]) -> str:
    """| Method | NFE | Guidance | FID | CLIP | [F_8 | F_1/8 |]: FID and CLIP to 2 decimals as the paper
    prints them, F scores to 3; text left-aligned, numbers right-aligned."""
    with_prd = any(row.prd is not None for row in rows)
    with_model = any(row.adapted for row in rows) or len({(row.weights, row.loras) for row in rows}) > 1
    header = ["Method"] + (["Weights", "LoRAs", "Sampler"] if with_model else []) + ["NFE", "Guidance"]
    header += ["FID", "CLIP"] + (["F_8", "F_1/8"] if with_prd else [])
    text = 4 if with_model else 1  # Method (and Weights, LoRAs, Sampler)
    lines = [header, [":---"] * text + ["---:"] * (len(header) - text)]
    for row in rows:
        model = [text.replace("|", "\\|") for text in (row.weights, row.loras, row.sampler)]
        cells = [
            row.method.replace("|", "\\|"),
            *(model if with_model else []),
            str(row.nfe),
            _guidance_text(row.guidance),
            _number_text(row.fid, 2),
            _number_text(row.clip, 2),
        ]
        if with_prd:
            f8, f1_8 = (None, None) if row.prd is None else row.prd
            cells += [_number_text(f8, 3), _number_text(f1_8, 3)]
        lines.append(cells)
    return "".join(f"| {' | '.join(cells)} |\n" for cells in lines)


def _guidance_text(guidance: float | list[float]) -> str:
    values = guidance if isinstance(guidance, list) else [guidance]
    return "/".join(f"{g:g}" for g in values)  # per-step guidance: one value per step


def _number_text(value: float | None, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def _read_json(path: Path, what: str) -> dict | None:
    """The JSON object in `path` (the result of metric `what`); None if there is no such file."""
    command = f"python -m evaluation.metrics {what} --force --json"  # --force: the file is there
    if not path.exists():
        return None
    record = safeio.read_json(path, f"write it again with {command}")
    if not isinstance(record, dict) or record.get("metric") != what:
        raise ValueError(f"{path} is not a {what} record; write it with {command}")
    return record


def _number(value: object, what: str, path: Path) -> float:
    try:
        return safeio.number(value)
    except ValueError:
        raise ValueError(
            f"{path}: {what} is {safeio.short(value)}, not a number; rewrite it with python -m "
            "evaluation.metrics (--force replaces the file)"
        ) from None


def _for_protocol(record: dict, key: str, protocol: str, path: Path) -> object:
    """record[key][protocol]; None, with a note on stderr, when the file holds other protocols only."""
    values = record.get(key)
    if not isinstance(values, dict):
        raise ValueError(
            f"{path} has no {key!r} values; rewrite it with python -m evaluation.metrics (--force replaces "
            "the file)"
        )
    if protocol not in values:
        print(
            f"{PROG}: note: {path} has no {protocol}-protocol value (it has {', '.join(values)}); "
            f"rerun python -m evaluation.metrics {key} with --protocol {protocol} or both, and --force to "
            "replace it",
            file=sys.stderr,
        )
        return None
    return values[protocol]


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="folders made by python -m evaluation.generate"
    )
    p.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="paper",
        help="which FID / PRD protocol to show (default: paper)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table; exit status 2 with a one-line message when a run folder or file is unusable."""
    args = build_parser().parse_args(argv)
    return cli.run(PROG, show, args)


def show(args: argparse.Namespace) -> None:
    print(markdown([read_row(run_dir, args.protocol) for run_dir in args.run_dirs]), end="")


if __name__ == "__main__":
    sys.exit(main())
