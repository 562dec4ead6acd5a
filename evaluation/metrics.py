"""The metrics command: FID, PRD and CLIP score of a folder of generated images.

    python -m evaluation.metrics fid --generated DIR --reference DIR [--protocol paper|clean|both]
    python -m evaluation.metrics prd --generated DIR --reference DIR [--plot FILE.png]
    python -m evaluation.metrics clip --images DIR --manifest prompts.jsonl --weights CLIP.safetensors

Each number is printed on its own line, naming its protocol; `--json OUT` also writes them for the
results table. An existing --json or --plot file is refused before any work unless --force. Errors are
one line on stderr with exit status 2.
"""

import argparse
import json
import sys
from pathlib import Path

import cli
import safeio
from evaluation import fid, prd
from evaluation.runs import PROTOCOLS
from pipeline.models import parse_device
from weights.errors import WeightsError
from weights.fingerprint import file_sha256

PROG = "python -m evaluation.metrics"


def _protocols(choice: str) -> list[str]:
    return list(PROTOCOLS) if choice == "both" else [choice]


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _write_json(args: argparse.Namespace, record: dict) -> None:
    """`record` to --json, if given (over an existing file only with --force)."""
    if args.json:
        safeio.write_atomically(args.json, json.dumps(record, indent=2) + "\n", replace=args.force)


def _folder_features(args: argparse.Namespace) -> tuple[dict, dict]:
    """{protocol: (generated FolderStats, reference FolderStats)} and the run's description."""
    weights = fid.inception_weights_path(args.inception)
    model = fid.load_inception(weights, args.device)
    weights_sha256 = file_sha256(weights, progress=False)  # cached per file
    pairs = {}
    for protocol in _protocols(args.protocol):
        pair = []
        for folder in (args.generated, args.reference):
            stats = fid.folder_stats(
                folder, model, weights_sha256, protocol, args.batch_size, args.device, args.cache_dir
            )
            source = "cached" if stats.cached else "computed"
            _note(f"{protocol}: {stats.count} images in {folder}, features {source}")
            pair.append(stats)
        pairs[protocol] = tuple(pair)
    run = {"generated": str(args.generated), "reference": str(args.reference), "inception": str(weights)}
    return pairs, run


def run_fid(args: argparse.Namespace) -> None:
    pairs, run = _folder_features(args)
    values = {}
    for protocol, (generated, reference) in pairs.items():
        values[protocol] = fid.frechet_distance(generated.mu, generated.sigma, reference.mu, reference.sigma)
        print(
            f"FID ({protocol} protocol) = {values[protocol]:.4f}   "
            f"[{generated.count} generated vs {reference.count} reference; {PROTOCOLS[protocol]}]"
        )
    generated, reference = next(iter(pairs.values()))  # counts are the same under every protocol
    counts = {"generated": generated.count, "reference": reference.count}
    described = {p: PROTOCOLS[p] for p in values}
    _write_json(args, {"metric": "fid", **run, "count": counts, "fid": values, "protocols": described})


def run_prd(args: argparse.Namespace) -> None:
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail before the long feature pass, not after it)
        except ImportError:
            raise ValueError(
                "--plot needs matplotlib: pip install matplotlib (the project's [plot] extra), or drop --plot"
            ) from None
    pairs, run = _folder_features(args)
    values, curves = {}, {}
    for protocol, (generated, reference) in pairs.items():
        eval_feats, ref_feats = prd.equal_size(generated.features, reference.features, args.seed)
        if len(eval_feats) != max(generated.count, reference.count):
            _note(f"{protocol}: PRD on {len(eval_feats)} images of each set (the smaller count, seeded draw)")
        precision, recall = prd.compute_prd(
            eval_feats, ref_feats, args.clusters, args.angles, args.runs, args.seed
        )
        f8, f1_8 = prd.f_beta(precision, recall, beta=8)
        values[protocol] = {"f_8": f8, "f_1/8": f1_8}
        curves[protocol] = (precision, recall)
        print(
            f"PRD ({protocol} protocol) F_8 = {f8:.4f}  F_1/8 = {f1_8:.4f}   "
            f"[recall-, precision-weighted; {len(eval_feats)} images each; {PROTOCOLS[protocol]}]"
        )
    if args.plot:
        prd.plot_prd({f"{p} protocol": c for p, c in curves.items()}, args.plot, replace=args.force)
        _note(f"PRD curve written to {args.plot}")
    settings = {"clusters": args.clusters, "angles": args.angles, "runs": args.runs, "seed": args.seed}
    curves_json = {p: {"precision": c[0].tolist(), "recall": c[1].tolist()} for p, c in curves.items()}
    _write_json(args, {"metric": "prd", **run, **settings, "prd": values, "curves": curves_json})


def run_clip(args: argparse.Namespace) -> None:
    from evaluation.clip_score import score_folder

    value = score_folder(
        args.images, args.manifest, args.weights, device=args.device, batch_size=args.batch_size
    )
    print(f"CLIP score = {value:.4f}   [ViT-B/32, max(100 cos, 0) averaged over {args.images}]")
    run = {"images": str(args.images), "manifest": str(args.manifest), "weights": str(args.weights)}
    _write_json(args, {"metric": "clip", **run, "clip_score": float(value)})


def device(text: str) -> str:
    """--device: one this machine has (pipeline.parse_device's check)."""
    try:
        return str(parse_device(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"device {text} ")) from None


def angles(text: str) -> int:
    value = cli.positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"the PRD curve needs at least 3 angles, got {value}")
    return value


def _add_force_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing --json or --plot file")


def _run(args: argparse.Namespace) -> None:
    """The subcommand, after its output files are checked: a folder, or a file that exists without
    --force, is refused before the long feature pass."""
    for flag in ("json", "plot"):
        if getattr(args, flag, None):
            safeio.check_target(getattr(args, flag), flag, args.force)
    args.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=cli.Parser)

    def folders_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--generated", type=Path, required=True, help="folder of generated images")
        sub.add_argument("--reference", type=Path, required=True, help="folder of real images")
        sub.add_argument(
            "--protocol",
            choices=[*PROTOCOLS, "both"],
            default="paper",
            help="paper: the paper's pytorch-fid protocol (default); clean: clean-fid style",
        )
        sub.add_argument(
            "--inception", help=f"pt_inception-2015-12-05-6726825d.pth (default: ${fid.WEIGHTS_ENV})"
        )
        sub.add_argument("--batch-size", type=cli.positive_int, default=50)
        sub.add_argument("--device", default="cpu", type=device, help="torch device (default: cpu)")
        sub.add_argument(
            "--cache-dir", type=Path, help="where feature caches go (default: beside each folder)"
        )
        sub.add_argument("--json", help="also write the results to this JSON file")
        _add_force_flag(sub)
        cli.add_debug_flag(sub)
        return sub

    folders_command("fid", "Frechet Inception Distance").set_defaults(run=run_fid)
    prd_parser = folders_command("prd", "precision and recall for distributions, as (F_8, F_1/8)")
    prd_parser.add_argument("--plot", help="write the PRD curve to this PNG (needs matplotlib)")
    prd_parser.add_argument("--clusters", type=cli.positive_int, default=20, help="k-means clusters")
    prd_parser.add_argument("--angles", type=angles, default=1001, help="slopes of the PRD curve (>= 3)")
    prd_parser.add_argument("--runs", type=cli.positive_int, default=10, help="clusterings averaged")
    prd_parser.add_argument("--seed", type=cli.seed, default=0)
    prd_parser.set_defaults(run=run_prd)

    clip = commands.add_parser("clip", help="CLIP score of images against their prompts")
    clip.add_argument("--images", type=Path, required=True, help="folder of {index:05d}.png images")
    clip.add_argument("--manifest", type=Path, required=True, help="JSONL with index and prompt per line")
    clip.add_argument("--weights", type=Path, required=True, help="CLIP ViT-B/32 weights")
    clip.add_argument("--batch-size", type=cli.positive_int, default=32)
    clip.add_argument("--device", default="cpu", type=device, help="torch device (default: cpu)")
    clip.add_argument("--json", help="also write the result to this JSON file")
    _add_force_flag(clip)
    cli.add_debug_flag(clip)
    clip.set_defaults(run=run_clip)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line message for any refusal)."""
    args = build_parser().parse_args(argv)
    errors = (ValueError, OSError, ImportError, WeightsError)  # WeightsError: clip --weights
    return cli.run(f"{PROG} {args.command}", _run, args, errors=errors)


if __name__ == "__main__":
    sys.exit(main())
