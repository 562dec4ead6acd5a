"""Evaluation prompt sets, written once as JSONL manifests so every later step reads the same list.

    python -m evaluation.prompts coco --captions captions_val2014.json --instances instances_val2014.json \\
        --out coco14.jsonl [--images-dir val2014] [--count 10000] [--seed 0] [--force]
    python -m evaluation.prompts laion --captions laion.csv --out laion.jsonl [--images-dir D] \\
        [--count 10000] [--sample] [--seed 0] [--force]

A manifest line is {"index", "prompt", "seed", "reference"} (+ "image_id" for COCO) with
seed = base seed + index. Beside `NAME.jsonl` goes `NAME.reference.txt`, the real images of the
set one per line (the FID reference set).

COCO selection, as the paper authors' script does it through pycocotools (read in pycocotools
2.0.11 `coco.py` and in `customed_timeschedule_sampler.py` of TheLovesOfLadyPurple/
Hyperparameter-is-all-you-need), reproduced here with plain `json`:
  1. `COCO(instances).getImgIds()` is `list(self.imgs)`, a dict filled from the `images` array:
     image ids in file order (a repeated id keeps its first place).
  2. Python's `random.seed(42)` (their `seed_everything(42)`), then `random.shuffle(ids)`;
     the first 10,000 ids are the selected images (all 5,000 for val2017).
  3. `COCO(captions).getAnnIds(imgIds=ids)` chains `imgToAnns[id]` over `ids` in the given
     order, and `imgToAnns` lists each image's annotations in file order; `loadAnns` keeps that
     order. So the flat caption list is image by image in the SHUFFLED order, not annotation-file
     order filtered by image. Images with no caption are skipped.
  4. Keep the captions at positions 0, 5, 10, ... of that flat list, then the first 10,000.
LAION selection: the authors sampled their parquet with pandas `df.sample(n=10000,
random_state=42)`, which is `numpy.random.RandomState(42).permutation(len(df))[:10000]` (checked
against pandas 3.1.1); `--sample --seed 42` gives that order.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from collections import defaultdict
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

import cli
import safeio

COCO_SHUFFLE_SEED = 42  # the authors' `seed_everything(42)` seeds Python's `random` with it
CAPTION_STRIDE = 5  # every 5th caption of the flat list (idx % 5 == 0)
CAPTION_COLUMNS = ("caption", "text", "prompt")
IMAGE_COLUMNS = ("image", "image_path", "path", "file_name", "filename", "url")


@dataclass(frozen=True)
class Prompt:
    """One manifest line. `reference` is the real image the prompt describes (a path, or None when
    the caption file names no image); `image_id` is COCO's id, None elsewhere."""

    index: int
    prompt: str
    seed: int
    reference: str | None
    image_id: int | None = None


@dataclass(frozen=True)
class PromptSet:
    prompts: list[Prompt]
    references: list[str]  # the FID reference images (COCO: every selected image, not one per prompt)


def coco_prompts(
    captions_path: str | Path,
    instances_path: str | Path,
    count: int = 10_000,
    images_dir: str | Path | None = None,
    base_seed: int = 0,
) -> PromptSet:
    """The COCO prompt set of the paper (module docstring): `count` images chosen by the seed-42
    shuffle, every 5th of their captions, at most `count` prompts."""
    _check_count(count)
    captions = _read_json(captions_path, "captions")
    instances = _read_json(instances_path, "instances")
    ids = list(dict.fromkeys(img["id"] for img in _records(instances, "images", instances_path, ("id",))))
    random.Random(COCO_SHUFFLE_SEED).shuffle(ids)  # same draws as random.seed(42); random.shuffle(ids)
    selected = ids[:count]

    file_names = {
        img["id"]: img["file_name"]
        for img in _records(captions, "images", captions_path, ("id", "file_name"))
    }
    by_image = defaultdict(list)
    for ann in _records(captions, "annotations", captions_path, ("image_id", "caption")):
        by_image[ann["image_id"]].append(ann)
    missing = [i for i in selected if i not in file_names]
    if missing:
        raise ValueError(
            f"{len(missing)} selected image ids (first {missing[0]}) of {instances_path} are not in the "
            f"images of {captions_path}; pass the captions and instances files of the same split"
        )

    flat = [ann for image_id in selected for ann in by_image.get(image_id, [])]
    chosen = flat[::CAPTION_STRIDE][:count]

    def path(image_id: int) -> str:
        name = file_names[image_id]
        return str(Path(images_dir) / name) if images_dir is not None else name

    prompts = [
        Prompt(i, ann["caption"], base_seed + i, path(ann["image_id"]), ann["image_id"])
        for i, ann in enumerate(chosen)
    ]
    return PromptSet(prompts, [path(image_id) for image_id in selected])


def laion_prompts(
    captions_path: str | Path,
    count: int = 10_000,
    sample: bool = False,
    images_dir: str | Path | None = None,
    base_seed: int = 0,
) -> PromptSet:
    """Captions from a txt (one per line), csv/tsv (a caption column and optionally an image
    column, named as in CAPTION_COLUMNS / IMAGE_COLUMNS, any case) or parquet file: the first
    `count`, or with `sample` the rows `RandomState(base_seed).permutation(n)[:count]`
    (= pandas `df.sample(n=count, random_state=base_seed)`)."""
    _check_count(count)
    rows = _read_caption_table(Path(captions_path))
    if not rows:
        raise ValueError(f"{captions_path} holds no captions")
    order = np.random.RandomState(base_seed).permutation(len(rows)) if sample else np.arange(len(rows))
    prompts = []
    for i, row in enumerate(order[:count].tolist()):
        caption, image = rows[row]
        if image is not None and images_dir is not None:
            image = str(Path(images_dir) / image)
        prompts.append(Prompt(i, caption, base_seed + i, image))
    return PromptSet(prompts, [p.reference for p in prompts if p.reference is not None])


def write_manifest(prompt_set: PromptSet, out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write `out` (JSONL) and `reference_list_path(out)`; refuse to replace either unless `force`."""
    out = Path(out)
    references = reference_list_path(out)
    for path in (out, references):
        if path.is_dir() or (path.is_symlink() and not path.is_file()):
            raise ValueError(f"{path} is a folder (or a link to no file); pass a file name to --out")
        if path.exists() and not force:
            raise FileExistsError(f"{path} already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    safeio.remove_stale(out.parent)
    lines = []
    for p in prompt_set.prompts:
        record = asdict(p)
        if record["image_id"] is None:
            del record["image_id"]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    safeio.write_atomically(out, "".join(lines), replace=force)
    safeio.write_atomically(references, "".join(f"{r}\n" for r in prompt_set.references), replace=force)
    return out, references


def read_manifest(path: str | Path) -> list[Prompt]:
    """The rows of a manifest, checked: every line a record with the Prompt fields, each index once.
    Blank lines are skipped. Raises ValueError naming the file, the line and what is wrong."""
    try:
        text = safeio.read_text(path)
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ValueError(
            f"cannot read the manifest {path}: {reason}; write one with python -m evaluation.prompts"
        ) from None
    prompts, lines_of = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = safeio.decode(line)
            problem = _record_problem(record)
        except safeio.JSONProblem as error:
            problem = f"not JSON: {error.reason}"
        if problem is None and record["index"] in lines_of:
            problem = f"index {record['index']} is already on line {lines_of[record['index']]}"
        if problem is not None:
            raise ValueError(f"{path} line {number} is not a manifest record ({problem}); rewrite it")
        lines_of[record["index"]] = number
        prompts.append(Prompt(**record))
    if not prompts:
        raise ValueError(f"the manifest {path} lists no prompts; write one with python -m evaluation.prompts")
    return prompts


def _record_problem(record: object) -> str | None:
    """What keeps a parsed JSON line from being a Prompt, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    names = [f.name for f in fields(Prompt)]
    missing = [f.name for f in fields(Prompt) if f.default is MISSING and f.name not in record]
    if missing:
        return f"no {', '.join(map(repr, missing))}"
    unknown = [name for name in record if name not in names]
    if unknown:
        return f"unknown key {unknown[0]!r}; the keys are {', '.join(names)}"
    if not _is_int(record["index"]) or record["index"] < 0:
        return f"'index' must be an integer >= 0, got {record['index']!r}"
    if not isinstance(record["prompt"], str):
        return f"'prompt' must be a string, got {record['prompt']!r}"
    try:
        safeio.seed(record["seed"])  # the check of --seed
    except ValueError as error:
        return f"'seed' {error}"
    if record["reference"] is not None and not isinstance(record["reference"], str):
        return f"'reference' must be a path or null, got {record['reference']!r}"
    if record.get("image_id") is not None and not _is_int(record["image_id"]):
        return f"'image_id' must be an integer or null, got {record['image_id']!r}"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not an index


def reference_list_path(manifest: str | Path) -> Path:
    """`NAME.jsonl` -> `NAME.reference.txt`."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.reference.txt")


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")


def _read_json(path: str | Path, what: str) -> dict:
    data = safeio.read_json(path, f"pass the COCO {what} file")
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a COCO annotation file (top level is not an object); pass the {what} file"
        )
    return data


# The COCO fields read, and their JSON types (ids are integers, as every COCO release writes them).
COCO_FIELDS = {"id": int, "image_id": int, "file_name": str, "caption": str}


def _records(data: dict, key: str, path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    records = data.get(key)
    if not isinstance(records, list):
        raise ValueError(f"{path} has no '{key}' array; is it the right COCO annotation file?")
    for n, record in enumerate(records):
        if not isinstance(record, dict) or any(field not in record for field in fields):
            raise ValueError(f"{path}: {key}[{n}] lacks one of the fields {', '.join(fields)}")
        for field in fields:
            kind, value = COCO_FIELDS[field], record[field]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(
                    f"{path}: {key}[{n}].{field} is {safeio.short(value)}, not a {kind.__name__}; pass the "
                    "COCO annotation file as released"
                )
    return records


def _read_caption_table(path: Path) -> list[tuple[str, str | None]]:
    """[(caption, image or None)] in file order."""
    try:
        return _caption_rows(path)
    except csv.Error as error:  # a field over csv's 128 KiB limit, a NUL byte
        raise ValueError(
            f"{path} is not a readable {path.suffix[1:]} file ({error}); fix or convert it"
        ) from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); convert it"
        ) from None


def _caption_rows(path: Path) -> list[tuple[str, str | None]]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = safeio.read_text(path).splitlines()
        return [(line, None) for line in lines if line.strip()]
    if suffix in (".csv", ".tsv"):
        with io.TextIOWrapper(safeio.open_regular(path), encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="," if suffix == ".csv" else "\t")
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty; expected a header row with a caption column")
            columns = {name: [] for name in header}
            for number, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise ValueError(f"{path} line {number} has {len(row)} fields, the header {len(header)}")
                for name, value in zip(header, row, strict=True):
                    columns[name].append(value)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(
                f"reading {path} needs pyarrow: pip install pyarrow, or convert it to csv"
            ) from None
        columns = pq.read_table(path).to_pydict()
    else:
        raise ValueError(f"{path}: unknown caption file type '{suffix}'; use .txt, .csv, .tsv or .parquet")
    caption_column = _find_column(columns, CAPTION_COLUMNS, path, required=True)
    image_column = _find_column(columns, IMAGE_COLUMNS, path, required=False)
    captions = columns[caption_column]
    images = columns[image_column] if image_column else [None] * len(captions)
    for n, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{path}: row {n} has no caption in column '{caption_column}'; drop or fill it")
    return [
        (caption, None if image in (None, "") else str(image))
        for caption, image in zip(captions, images, strict=True)
    ]


def _find_column(columns: dict, names: tuple[str, ...], path: Path, required: bool) -> str | None:
    by_lower = {name.lower(): name for name in columns}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    if required:
        raise ValueError(
            f"{path} has no caption column (columns: {', '.join(columns)}); name one {' / '.join(names)}"
        )
    return None


PROG = "python -m evaluation.prompts"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="set", required=True, parser_class=cli.Parser)
    coco = sub.add_parser("coco", help="COCO 2014 / 2017 captions, selected as in the paper's code")
    coco.add_argument("--captions", type=Path, required=True, help="captions_val20xx.json")
    coco.add_argument("--instances", type=Path, required=True, help="instances_val20xx.json (image order)")
    laion = sub.add_parser("laion", help="LAION (or any) caption file: txt, csv, tsv, parquet")
    laion.add_argument("--captions", type=Path, required=True, help="caption file")
    laion.add_argument("--sample", action="store_true", help="seeded random sample, not the first rows")
    for p in (coco, laion):
        p.add_argument("--out", type=Path, required=True, help="manifest to write (JSONL)")
        p.add_argument("--images-dir", type=Path, help="folder of the real images")
        p.add_argument(
            "--count", type=cli.positive_int, default=10_000, help="number of prompts (COCO: and of images)"
        )
        p.add_argument(
            "--seed",
            type=cli.seed,
            default=0,
            help="prompt i gets seed + i; also seeds --sample (default: 0)",
        )
        p.add_argument("--force", action="store_true", help="overwrite an existing manifest")
        cli.add_debug_flag(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status: 0, or 2 with a one-line message on stderr."""
    args = build_parser().parse_args(argv)
    return cli.run(PROG, write, args)


def write(args: argparse.Namespace) -> None:
    if args.set == "coco":
        prompt_set = coco_prompts(args.captions, args.instances, args.count, args.images_dir, args.seed)
    else:
        prompt_set = laion_prompts(args.captions, args.count, args.sample, args.images_dir, args.seed)
    out, references = write_manifest(prompt_set, args.out, args.force)
    print(f"{out}: {len(prompt_set.prompts)} prompts")
    print(f"{references}: {len(prompt_set.references)} reference images")


if __name__ == "__main__":
    sys.exit(main())
