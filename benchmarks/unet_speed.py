"""Speed of this project's SD 1.5 U-Net against diffusers' UNet2DConditionModel, same weights.

Both networks run the same inputs (batch 2 = one classifier-free-guidance step, 77 context tokens),
in each weight/feature layout of `--layouts` (NCHW, channels-last). After a warm-up the runs
alternate, so that a change in machine load hits every variant alike; the medians of wall and
process CPU time are printed with the ratios ours / diffusers (< 1: ours is faster). On a shared
machine the CPU-time ratio is the steadier one.

    python -m benchmarks.unet_speed                          # full size, float32, CPU
    python -m benchmarks.unet_speed --device cuda --dtype bf16 --compile
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time

import torch

from model.unet import UNet
from tests.reference.unet import FULL, diffusers_unet, ldm_state_dict, sd15_config, unet_config

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(layout: str, reference: torch.nn.Module) -> tuple[torch.nn.Module, UNet]:
    """The reference in `layout` and our U-Net sharing its tensors (assign=True: held in memory once)."""
    if layout == "channels_last":
        reference = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    with torch.device("meta"):
        ours = UNet(unet_config(dict(reference.config)))
    ours.load_state_dict(ldm_state_dict(reference), assign=True)
    return reference, ours.eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each network")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--layouts",
        default="nchw,channels_last",
        help="comma-separated weight/feature layouts to time, each for both networks",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    layouts = args.layouts.split(",")
    if not set(layouts) <= {"nchw", "channels_last"}:
        parser.error(f"--layouts takes nchw and/or channels_last, got {args.layouts!r}")

    reference = diffusers_unet(sd15_config(FULL)).to(device, dtype)
    x = torch.randn(args.batch, 4, args.size, args.size, device=device, dtype=dtype)
    t = torch.full((args.batch,), 501.3, device=device)
    context = torch.randn(args.batch, 77, 768, device=device, dtype=dtype)

    runs = {}
    for layout in layouts:
        ref_net, our_net = build(layout, reference)
        runs[f"ours {layout}"] = functools.partial(our_net, x, t, context)
        runs[f"diffusers {layout}"] = functools.partial(
            lambda net: net(x, t, encoder_hidden_states=context).sample, ref_net
        )
    if args.compile:
        runs = {name: torch.compile(fn) for name, fn in runs.items()}

    def timed(fn) -> tuple[float, float]:
        """Wall and CPU seconds. On a shared CPU the process's CPU time is the steadier of the two."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    times = {name: [] for name in runs}
    with torch.inference_mode():
        outputs = {name: fn().float() for name, fn in runs.items()}  # warm-up (and compilation)
        expected = outputs[f"diffusers {layouts[0]}"]
        for _ in range(args.repeats):
            for name, fn in runs.items():  # alternating, so load changes hit every variant alike
                times[name].append(timed(fn))

    print(
        f"device={device} dtype={args.dtype} compile={args.compile} batch={args.batch} "
        f"latent={args.size}x{args.size} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    for name, values in times.items():
        error = ((outputs[name] - expected).abs().max() / expected.abs().max()).item()
        print(
            f"{name:>24}: median wall {wall[name]:7.3f} s, cpu {cpu[name]:7.3f} s; "
            f"max rel. diff {error:.1e}; wall runs {' '.join(f'{w:.2f}' for w, _ in values)}"
        )
    for layout in layouts:
        ours, theirs = f"ours {layout}", f"diffusers {layout}"
        ratios = f"wall {wall[ours] / wall[theirs]:.3f}, cpu {cpu[ours] / cpu[theirs]:.3f}"
        print(f"ratio ours / diffusers, {layout}: {ratios}")
    best_ours = min((n for n in runs if n.startswith("ours")), key=wall.get)
    best_theirs = min((n for n in runs if n.startswith("diffusers")), key=wall.get)
    print(
        f"ratio best / best ({best_ours} / {best_theirs}): wall {wall[best_ours] / wall[best_theirs]:.3f}, "
        f"cpu {cpu[best_ours] / cpu[best_theirs]:.3f}"
    )


if __name__ == "__main__":
    main()
