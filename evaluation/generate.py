"""Sharded, resumable generation of an evaluation prompt set: one PNG per manifest row, made by the
code path of run_sample.py (`pipeline/`), for the paper's tables.

    python -m evaluation.generate --manifest coco14.jsonl --preset paper-5 --guidance 7.5 --out runs/p5-7.5
    torchrun --nproc_per_node=8 -m evaluation.generate --manifest coco14.jsonl --preset paper-5 --out runs/p5

Row `index` of the manifest becomes `DIR/{index:05d}.png`, from the row's own seed, carrying
run_sample.py's metadata (`python run_sample.py --replay DIR/00042.png` remakes it).

Which process makes what: the rows are cut, in manifest order, into U-Net batches of --batch-size
(the last one padded with copies, as run_sample.py pads), and batch k goes to rank k mod WORLD_SIZE
(torchrun's RANK / WORLD_SIZE / LOCAL_RANK; rank 0 of 1 without them). An image's batch and its row in
that batch so depend only on the manifest and the batch size, never on the number of processes or on
which images already exist: K processes and one give the same pixels on the same kind of device (on
CPUs, with the same thread count: torchrun sets OMP_NUM_THREADS=1). No process group is needed, as
the split is fixed before any work.

Resuming: a row whose PNG exists is skipped, so rerunning a killed command finishes it. `DIR/run.json`
records the run's settings once. A run with other settings into the same DIR is refused, and so is an
existing PNG made with other settings, unless --force: then run.json and those PNGs are replaced.

Scoring: `python -m evaluation.metrics fid|clip|prd ... --json DIR/{fid,clip,prd}.json`, then
`python -m evaluation.table DIR...` (evaluation/table.py lists the commands).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

import cli
import pipeline
import safeio
from cli.generation import (
    add_image_flags,
    add_model_flags,
    add_plan_flags,
    plan_overrides,
    prepared,
    run_request,
)
from evaluation.prompts import Prompt, read_manifest
from evaluation.runs import RUN_FILE, RUN_FORMAT, read_run
from pipeline import Batch, Settings
from pipeline.provenance import sampler_label
from pipeline.sharding import Shard, pick_device, shard_batches
from solvers import Plan, PlanError
from solvers.presets import preset_steps

PROG = "python -m evaluation.generate"
# What decides the images: run.json, and each PNG's settings, must agree on these to share a folder.
# (Device, batch size, compile and versions move pixels by rounding only; they are recorded, not compared.)
DECIDING = (
    "negative_prompt",
    "height",
    "width",
    "dtype",
    "vae_dtype",
    "vae_sha256",
    "size_conditioning",
    "empty_negative",
    "quantization",
    "loras",
    "unet_sha256",
)
RUN_IDENTITY = ("plan", "weights_sha256", "manifest_sha256", *DECIDING)
IMAGE_IDENTITY = ("prompt", "seed", "weights_sha256", *DECIDING)
# What a run.json or PNG made before a setting was recorded means by its absence (SD 1.x, bundled VAE
# in the model's dtype, rounded pixels).
RECORDED_BEFORE = {
    "vae_dtype": lambda record: record.get("dtype"),
    "vae_sha256": lambda record: None,
    "size_conditioning": lambda record: None,
    "empty_negative": lambda record: "encode",
    "quantization": lambda record: "round",
}


# -- where the images go ---------------------------------------------------------------------------------


def image_path(out: Path, row: Prompt) -> Path:
    return out / f"{row.index:05d}.png"


# -- run.json --------------------------------------------------------------------------------------------


def run_record(
    plan: Plan,
    preset_name: str | None,
    settings: Settings,
    manifest: str | os.PathLike,
    manifest_rows: int,
    manifest_sha256: str,
) -> dict:
    """What `DIR/run.json` holds: the plan and what the table shows (method, NFE, guidance), the weights,
    the manifest, and `settings` (the run's, per-image fields aside)."""
    guidance = plan.guidance[0] if len(set(plan.guidance)) == 1 else list(plan.guidance)
    record = {
        "format": RUN_FORMAT,
        "method": plan.name,
        "preset": preset_name,
        "nfe": plan.nfe,
        "guidance": guidance,
        "plan": plan.to_dict(),
        "weights": settings.weights,
        "weights_sha256": settings.weights_sha256,
        "model": settings.model,
        "manifest": str(manifest),
        "manifest_rows": manifest_rows,
        "manifest_sha256": manifest_sha256,
        **{key: getattr(settings, key) for key in DECIDING},
        "vae": settings.vae,
        "unet": settings.unet,
        "sampler": sampler_label(plan),
        "version": settings.version,
    }
    return json.loads(json.dumps(record))  # as it reads back: lists, not tuples


def recorded(record: dict, key: str):
    """A setting of a run.json or PNG settings dict, with what its absence means in older ones."""
    if record.get(key) is None and key in RECORDED_BEFORE:
        return RECORDED_BEFORE[key](record)
    return record.get(key)


def claim_run(out: Path, record: dict, force: bool, shard: Shard) -> None:
    """Check `out/run.json` against `record`: refuse other settings unless `force`. Rank 0 writes it
    when it is missing (without replacing one another process wrote meanwhile) or, under `force`, differs
    or cannot be read (as the refusal without `force` promised; a folder there is for the user to remove)."""
    path = out / RUN_FILE
    unreadable = False
    try:
        existing = read_run(
            path, "remove that folder" if path.is_dir() else "delete it, or pass --force to replace it"
        )
    except ValueError:
        if not force or path.is_dir():
            raise
        existing, unreadable = None, True
    if existing is not None:
        differences = run_differences(existing, record)
        if not differences:
            return
        if not force:
            raise ValueError(
                f"{path} belongs to a run with other settings ({'; '.join(differences)}); "
                "use another --out, or pass --force to replace that run"
            )
    if shard.rank != 0:
        return
    text = json.dumps(record, indent=2) + "\n"
    try:  # under force, replace; else link, which fails if another run wrote run.json meanwhile
        safeio.write_atomically(path, text, replace=existing is not None or unreadable)
    except FileExistsError:
        claim_run(out, record, force, shard)


def run_differences(old: dict, new: dict) -> list[str]:
    """The settings of RUN_IDENTITY that differ, as "name old -> new"."""
    differences = []
    for key in RUN_IDENTITY:
        if recorded(old, key) == recorded(new, key):
            continue
        if key == "plan":
            try:
                differences += plan_differences(Plan.from_dict(old["plan"]), Plan.from_dict(new["plan"]))
            except (KeyError, PlanError):
                differences.append("plan: unreadable in the old record")
        else:
            differences.append(f"{key} {_short(recorded(old, key))} -> {_short(recorded(new, key))}")
    return differences


def plan_differences(old: Plan, new: Plan) -> list[str]:
    """How two plans differ: name, guidance, and (under one name) the rest: sigmas, solvers, FreeU, final."""
    differences = []
    if old.name != new.name:
        differences.append(f"plan {old.name} -> {new.name}")
    if _guidance_text(old) != _guidance_text(new):
        differences.append(f"guidance {_guidance_text(old)} -> {_guidance_text(new)}")
    if _without_guidance(old) != _without_guidance(new) and old.name == new.name:
        differences.append(f"plan {new.name} with other sigmas, solvers, options or final policy")
    return differences


def _without_guidance(plan: Plan) -> tuple:
    options = {key: column for key, column in plan.options.items() if key != "guidance"}
    return plan.sigmas, plan.solver, options, plan.final


def _guidance_text(plan: Plan) -> str:
    """One value when every step has it, else the per-step values."""
    values = plan.guidance[:1] if len(set(plan.guidance)) == 1 else plan.guidance
    return "/".join(f"{g:g}" for g in values)


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 24 else f"{text[:20]}..."


# -- which images to make --------------------------------------------------------------------------------


def row_settings(settings: Settings, row: Prompt, slot: int) -> Settings:
    """The settings of `row`'s image made at row `slot` of its batch, as generate_batch sets them."""
    return replace(settings, prompt=row.prompt, seed=row.seed, batch_index=slot)


def image_differences(path: Path, plan: Plan, settings: Settings) -> list[str]:
    """How the existing image at `path` differs from the one this run makes there (empty: the same)."""
    try:
        stored, stored_plan = pipeline.read_replay(path)
    except PlanError:
        return ["it carries no fewstep-sd metadata"]
    differences = plan_differences(stored_plan, plan)
    old, new = asdict(stored), asdict(settings)
    for key in IMAGE_IDENTITY:
        if recorded(old, key) != recorded(new, key):
            differences.append(f"{key} {_short(recorded(old, key))} -> {_short(recorded(new, key))}")
    return differences


def to_make(batch: Batch[Prompt], out: Path, plan: Plan, settings: Settings, force: bool) -> list[int]:
    """The slots of `batch` whose image is still to make: no PNG yet, or (under `force`) one made with
    other settings. Without `force` such a PNG is refused."""
    slots = []
    for slot, row in batch.jobs:
        path = image_path(out, row)
        if not path.exists():
            slots.append(slot)
            continue
        differences = image_differences(path, plan, row_settings(settings, row, slot))
        if differences and not force:
            raise ValueError(
                f"{path} was made with other settings ({'; '.join(differences)}); "
                "pass --force to remake it, or use another --out"
            )
        if differences:
            slots.append(slot)
    return slots


# -- the command -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, shard: Shard) -> None:
    """Check every setting, load the model, claim the folder, then make this rank's missing images."""
    rows = read_manifest(args.manifest)
    manifest_rows = len(rows)
    rows = rows[: args.limit]
    manifest_sha256 = hashlib.sha256(Path(args.manifest).read_bytes()).hexdigest()
    bounds = partial(pipeline.check_bounds, allow_large=args.allow_large)
    bounds(steps=args.steps, batch=args.batch_size)  # before a plan of that many steps is built
    bounds(steps=preset_steps(args.preset), source=f"--preset {args.preset}: ")
    base = pipeline.read_plan_file(args.plan) if args.plan else None
    if base is not None:
        bounds(steps=base.steps, source=f"the plan of {args.plan}: ")
    recipe = pipeline.Recipe(args.steps, args.preset, base, plan_overrides(args))
    request = run_request(args, pick_device(args.device, shard), recipe)
    prepared(args, pipeline.preview_plan, request)  # refuse a bad plan before anything is written
    out = pipeline.prepare_output(args.out)
    assembled = prepared(args, pipeline.prepare_run, request)
    settings = assembled.settings
    pipeline.check_free_space(out, settings.height, settings.width, len(rows))
    if assembled.warning:
        print(f"{PROG}: {assembled.warning}", file=sys.stderr)
    if elsewhere := pipeline.searched_on_another_model(assembled.plan, settings.model):
        print(f"{PROG}: note: {elsewhere}", file=sys.stderr)
    preset_name = None if args.plan else assembled.plan.name  # build_plan names a preset's plan after it
    record = run_record(assembled.plan, preset_name, settings, args.manifest, manifest_rows, manifest_sha256)
    claim_run(out, record, args.force, shard)

    mine = shard_batches(pipeline.batches(rows, request.batch), shard)
    work = [
        (batch, slots)
        for batch in mine
        if (slots := to_make(batch, out, assembled.plan, settings, args.force))
    ]
    total = sum(len(slots) for _, slots in work)
    present = sum(len(batch.slots) for batch in mine) - total
    tag = f"rank {shard.rank} of {shard.world_size}: " if shard.world_size > 1 else ""
    started, written = time.perf_counter(), []
    with cli.reporting_stops(
        out,
        lambda: f"{tag}made {len(written)} of {total} images in {out}/ (each one complete)",
        lambda: "rerun the same command to make the rest (the images there are kept)",
    ):
        _make(assembled, out, work, total, tag, shard, written)
    elapsed = time.perf_counter() - started
    rate = f" ({total / elapsed:.2f} images/s)" if total else ""
    names = f" ({cli.span([path.name for path in written])})" if written else ""
    made_here = f"{tag}made {cli.count(total, 'image')}{names} in {out}/"
    print(f"{made_here} in {elapsed:.1f} s{rate}; {present} were already there")


def _make(
    assembled: pipeline.Run,
    out: Path,
    work: list[tuple[Batch[Prompt], list[int]]],
    total: int,
    tag: str,
    shard: Shard,
    written: list[Path],
) -> None:
    """Make the missing images of `work` ((batch, slots) pairs), adding each path to `written`. The bar
    counts U-Net steps, each batch's per step, or at once where its steps replay as a CUDA graph."""
    steps = pipeline.img2img.cut(assembled.plan, assembled.init, assembled.model.schedule).steps
    with tqdm(
        total=len(work) * steps,
        unit="step",
        desc=f"{tag}{cli.count(total, 'image')}, {cli.count(len(work), 'batch', 'batches')}",
        disable=None if shard.rank == 0 else True,  # one bar: rank 0's rate and ETA stand for all
        file=sys.stderr,
    ) as bar:
        step = None if pipeline.replays_graph(assembled.settings) else lambda info: bar.update(1)
        for b, (batch, slots) in enumerate(work):
            jobs = Batch(tuple(pipeline.Job(row.prompt, row.seed) for row in batch.rows), batch.slots)
            for settings, image in pipeline.generate_batch(assembled, jobs, callback=step):
                if settings.batch_index in slots:
                    row = batch.rows[settings.batch_index]
                    _save(image, out, row, pipeline.png_metadata(assembled.plan, settings))
                    written.append(image_path(out, row))
            bar.update((b + 1) * steps - bar.n)


def _save(image: torch.Tensor, out: Path, row: Prompt, metadata: dict[str, str]) -> None:
    """`out/{index:05d}.png`, replacing an image of other settings (only --force gets here with one)."""
    target = image_path(out, row)
    target.unlink(missing_ok=True)  # if killed before the new file lands, the row is simply missing
    saved = pipeline.save_png(image, out, target.stem, metadata)
    if saved != target:
        saved.unlink()
        raise OSError(f"another process wrote {target} meanwhile; run one generation per --out folder")


# -- argument parsing ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog=PROG,
        description="Generate one PNG per manifest row (python -m evaluation.prompts writes manifests) for "
        "the paper's tables, resumably; under torchrun the rows are split over the processes.",
    )
    p.add_argument(
        "--manifest",
        required=True,
        metavar="FILE.jsonl",
        help="the prompt set, one JSON record a line with index, prompt, seed and reference (a real "
        "image's path, or null), as python -m evaluation.prompts writes it",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder of {index:05d}.png and run.json")
    p.add_argument(
        "--limit",
        type=cli.positive_int,
        metavar="N",
        help="only the first N rows, for smoke runs (default: every row)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a run.json of other settings, and remake the images made with other settings",
    )
    add_plan_flags(p, default_note=" for SD 1.x, 6 for SDXL, unless --preset or --plan gives the plan")
    add_image_flags(p)
    add_model_flags(p, device_help="; cuda means cuda:LOCAL_RANK")
    cli.add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line message for any refusal)."""
    args = build_parser().parse_args(argv)
    try:
        shard = Shard.from_env()
    except ValueError as err:
        print(f"{PROG}: error: {cli.one_line(err)}", file=sys.stderr)
        return 2
    where = f" (rank {shard.rank} of {shard.world_size})" if shard.world_size > 1 else ""
    return cli.run(PROG + where, partial(run, shard=shard), args, errors=pipeline.USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
