"""GPU speed of fewstep-sd against diffusers on the same card, in one call (about 8 minutes on an H200).

    python benchmarks/gpu.py --wheels /path/to/wheels     # diffusers + transformers from wheel files
    python benchmarks/gpu.py                              # ours only, when diffusers is not installed

It (a) checks parity of ours against diffusers on the card (random weights in SD 1.5's layout,
bfloat16, relative error against diffusers in float32), and ours compiled + CUDA graphs against ours
eager; (b) times, after a warm-up, the median of --repeats runs (CUDA events) of ours eager, ours
compiled + graphs, diffusers eager and diffusers + torch.compile (their recommended settings: SDPA,
channels-last, fused QKV, fullgraph), for the U-Net forward at batch 2 (64 x 64 latents), the VAE
decode at 512 px and the full 8-step 512 px image (text encode, 8 guided steps, decode); (c) prints
ours / diffusers and each figure as a fraction of the card's bfloat16 matmul throughput (8192^3,
measured in the same run). --sdxl adds the SDXL U-Net forward (1024 px) and 8-step 1024 px image.

The wheels it needs are listed in benchmarks/README.md; `--wheels DIR` unpacks them into a temporary
folder put first on sys.path, so nothing is installed. Without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/gpu.py` from anywhere
    sys.path.insert(0, str(ROOT))


def load_wheels(folder: Path, into: Path | None = None) -> list[str]:
    """Unpack every wheel in `folder` into `into` (default a new temporary folder), put it first on
    sys.path, and return the wheels' names. A wheel is a zip of the files an install would place."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"benchmarks/gpu.py: error: --wheels {folder} holds no .whl files")
    into = Path(tempfile.mkdtemp(prefix="gpu-bench-wheels-")) if into is None else into
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(into)
    sys.path.insert(0, str(into))
    return [w.name for w in wheels]


def wheel_folder(argv: Sequence[str]) -> Path | None:
    """--wheels, read before anything imports torch (which looks for numpy once, at its import)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--wheels", type=Path)
    return early.parse_known_args(argv)[0].wheels


LOADED: list[str] = []  # the wheels unpacked when run as a script
if __name__ == "__main__" and (_folder := wheel_folder(sys.argv[1:])) is not None and _folder.is_dir():
    LOADED = load_wheels(_folder)

import torch  # noqa: E402

DEVICE = "cuda"
SIZES = {"sd1": 512, "sdxl": 1024}  # image side in pixels, as pipeline.FAMILIES has them
MATMUL_N = 8192
PROMPT = "a photograph of an astronaut riding a horse"
STEPS = 8
GUIDANCE = 7.5
# Pass criteria. Ours vs diffusers: both in bf16 (8 bits: ~4e-3 a rounding, some hundred roundings
# deep), so ours must be as close to diffusers' fp32 result as diffusers' own bf16 run is, within
# PARITY_FACTOR. Compiled + graphs vs eager after 8 guided steps: inductor's fusions round otherwise
# in bf16, so the change must stay within bf16's own error (eager bf16 vs eager fp32 latents).
PARITY_FACTOR = 1.5
TARGETS = {  # issue 11: ours / diffusers + compile, and absolute times on an H100 / H200
    "unet ratio": 0.8,
    "image 512 ms": 100.0,
    "vae 512 ms": 15.0,
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed figure: `what` for `who`, median milliseconds, and the FLOPs of one run (or None)."""

    what: str
    who: str
    ms: float
    flops: float | None = None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheels", type=Path, help="folder of wheel files to load (benchmarks/README.md)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each figure (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before them (default 3)")
    parser.add_argument("--sdxl", action="store_true", help="also the SDXL rows (1024 px; a few minutes)")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to leave out: parity, unet, vae, image"
    )
    args = parser.parse_args(argv)
    if args.repeats < 20:
        parser.error(f"--repeats {args.repeats}: the medians are of at least 20 runs")
    if args.warmup < 1:
        parser.error(f"--warmup {args.warmup}: give at least 1 (the first run compiles)")
    if args.wheels is not None and not args.wheels.is_dir():
        parser.error(f"--wheels {args.wheels} is not a folder; give the folder the wheels were downloaded to")
    unknown = set(filter(None, args.skip.split(","))) - {"parity", "unet", "vae", "image"}
    if unknown:
        parser.error(f"--skip {args.skip}: unknown part(s) {sorted(unknown)}; use parity, unet, vae, image")
    return args


def import_diffusers():
    """The diffusers module, or None when it (or transformers) is not importable."""
    try:
        import diffusers
        import transformers  # noqa: F401
    except ImportError:
        return None
    return diffusers


def cuda_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median milliseconds of fn() over `repeats` runs timed with CUDA events, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def flops_of(fn: Callable[[], object]) -> float:
    """FLOPs of one fn() as torch's FLOP counter sees them (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_tflops(repeats: int, warmup: int) -> float:
    """The card's measured bfloat16 matmul throughput, TFLOP/s, from an 8192^3 product."""
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    ms = cuda_ms(lambda: a @ b, repeats, warmup)
    return 2 * MATMUL_N**3 / (ms * 1e-3) / 1e12


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm())


def report(rows: Sequence[Row], peak_tflops: float) -> list[str]:
    """The table: each figure's ms, its fraction of the matmul peak, and ours / each diffusers figure."""
    lines = [f"{'figure':<26}{'who':<26}{'ms':>10}{'of peak':>10}"]
    for row in rows:
        share = "" if row.flops is None else f"{row.flops / (row.ms * 1e-3) / 1e12 / peak_tflops:.1%}"
        lines.append(f"{row.what:<26}{row.who:<26}{row.ms:>10.2f}{share:>10}")
    by = {(r.what, r.who): r.ms for r in rows}
    for what in dict.fromkeys(r.what for r in rows):
        for ours in ("ours eager", "ours compiled + graphs"):
            for theirs in ("diffusers eager", "diffusers + compile"):
                if (what, ours) in by and (what, theirs) in by:
                    ratio = by[what, ours] / by[what, theirs]
                    lines.append(f"ratio {what}: {ours} / {theirs} = {ratio:.3f}")
    return lines


def targets(rows: Sequence[Row]) -> list[str]:
    """The issue's targets, each met or not (only those whose figures were measured)."""
    by = {(r.what, r.who): r.ms for r in rows}
    lines, best = [], "ours compiled + graphs"
    unet = ("unet b2 64x64", best), ("unet b2 64x64", "diffusers + compile")
    if all(k in by for k in unet):
        ratio = by[unet[0]] / by[unet[1]]
        lines.append(_target(f"U-Net ours / diffusers + compile = {ratio:.3f}", ratio, TARGETS["unet ratio"]))
    for what, key, label in (("image 512 px", "image 512 ms", "8-step 512 px image"),
                             ("vae decode 512 px", "vae 512 ms", "VAE decode 512 px")):  # fmt: skip
        if (what, best) in by:
            lines.append(_target(f"{label} {by[what, best]:.1f} ms", by[what, best], TARGETS[key], " ms"))
    return lines


def _target(text: str, value: float, limit: float, unit: str = "") -> str:
    return f"target {text} (<= {limit:g}{unit}): {'met' if value <= limit else 'NOT met'}"


# --- the models ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Theirs:
    """diffusers' networks holding our weights: bfloat16 ones to time, float32 ones for parity."""

    unet: torch.nn.Module
    unet_fp32: torch.nn.Module | None
    vae: torch.nn.Module | None = None
    vae_fp32: torch.nn.Module | None = None
    added: Callable[[dict], dict] | None = None  # SDXL: our cond -> diffusers' added_cond_kwargs
    pipeline: Callable[[], object] | None = None  # a StableDiffusionPipeline on them (SD 1.5)
    text_encoder: torch.nn.Module | None = None  # the pipeline's; default a random CLIP-L

    def unet_kwargs(self, cond) -> dict:
        return {} if self.added is None else {"added_cond_kwargs": self.added(cond)}


def our_sd(family: str, unet, vae):
    """Our StableDiffusion of `family` around this U-Net and VAE, random text encoders of the real
    sizes, bfloat16 on CUDA."""
    import weights
    from schedule import DiscreteSchedule
    from text_encoder.clip import CLIPTextConfig, CLIPTextModel
    from text_encoder.tokenizer import Tokenizer

    xl = family == "sdxl"
    sd = weights.StableDiffusion(
        family, Tokenizer.sd1(), CLIPTextModel(CLIPTextConfig.sd1()), unet, vae, DiscreteSchedule.sd(),
        Path("random weights"), tokenizer_2=Tokenizer.sd1(pad_id=0) if xl else None,
        text_encoder_2=CLIPTextModel(CLIPTextConfig.bigg()) if xl else None,
    )  # fmt: skip
    for module in (sd.text_encoder, sd.text_encoder_2, sd.unet, sd.vae):
        if module is not None:
            module.to(DEVICE, torch.bfloat16).eval().requires_grad_(False)
    return sd


def models(family: str, diffusers) -> tuple[object, Theirs | None]:
    """(our StableDiffusion, diffusers' networks or None) at the family's real sizes, random weights;
    with diffusers, ours holds their weights through the tests' independent key maps."""
    from model.unet import UNet, UNetConfig
    from vae.autoencoder import AutoencoderKL, VAEConfig

    xl = family == "sdxl"
    unet = UNet(UNetConfig.sdxl() if xl else UNetConfig.sd1())
    vae = AutoencoderKL(VAEConfig.sdxl() if xl else VAEConfig.sd1())
    if diffusers is None:
        return our_sd(family, unet, vae), None
    from tests.reference import unet as unet_ref
    from tests.reference import vae as vae_ref

    if xl:
        config = unet_ref.sdxl_config((320, 640, 1280), 64, context=2048, pooled=1280, time_dim=256,
                                      depths=(1, 2, 10))  # fmt: skip
    else:
        config = unet_ref.sd15_config(unet_ref.FULL)
    ref_unet = unet_ref.diffusers_unet(config)
    unet.load_state_dict(unet_ref.ldm_state_dict(ref_unet))
    theirs = Theirs(copy.deepcopy(ref_unet).to(DEVICE, torch.bfloat16), ref_unet.to(DEVICE))
    if xl:
        theirs.added = sdxl_added(config)
    else:
        ref_vae = vae_ref.diffusers_vae(vae_ref.FULL)
        vae.load_state_dict(vae_ref.ldm_state_dict(ref_vae))
        theirs.vae, theirs.vae_fp32 = copy.deepcopy(ref_vae).to(DEVICE, torch.bfloat16), ref_vae.to(DEVICE)
        theirs.pipeline = lambda: diffusers_pipeline(diffusers, theirs)
    return our_sd(family, unet, vae), theirs


def sdxl_added(config: dict) -> Callable[[dict], dict]:
    """Our SDXL cond -> diffusers' added_cond_kwargs: y is [pooled text, Fourier features of the 6 size
    numbers] (model/conditioning.py), diffusers takes the pooled text and the numbers."""
    from model import SizeConditioning

    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    return lambda cond: {
        "text_embeds": cond["y"][:, :pooled],
        "time_ids": torch.tensor([SizeConditioning().numbers()] * len(cond["y"]), device=DEVICE),
    }


def diffusers_pipeline(diffusers, theirs: Theirs):
    """diffusers' StableDiffusionPipeline on their U-Net and VAE (a random CLIP text model of SD 1.5's
    size, the same BPE files), DPM-Solver++ 2M with Karras sigmas, bfloat16 on CUDA."""
    import transformers

    from tests.reference.clip import SD1_TEXT, write_tokenizer_files

    folder = Path(tempfile.mkdtemp(prefix="gpu-bench-tokenizer-"))
    tokenizer = transformers.CLIPTokenizerFast(*map(str, write_tokenizer_files(folder)), model_max_length=77)
    text = theirs.text_encoder or transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD1_TEXT))
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=theirs.vae, text_encoder=text, tokenizer=tokenizer, unet=theirs.unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(DEVICE, torch.bfloat16)


def inductor_settings() -> None:
    """Inductor settings of diffusers' "speed up inference" guide, for both sides' compiles."""
    config = torch._inductor.config
    config.conv_1x1_as_mm = True
    config.coordinate_descent_tuning = True
    config.epilogue_fusion = False
    config.coordinate_descent_check_all_directions = True


def diffusers_compiled(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of their U-Net or VAE as their guide compiles it: fused QKV, channels-last, fullgraph."""
    module = copy.deepcopy(module)
    module.fuse_qkv_projections()  # UNet2DConditionModel and AutoencoderKL both have it
    module.to(memory_format=torch.channels_last)
    if hasattr(module, "decoder"):  # the VAE: the decode path only
        module.decode = compiled(module.decode, fullgraph=True)
        return module
    return compiled(module, fullgraph=True)


def compiled(fn, **options):
    """torch.compile(fn, **options): the one place both sides are compiled."""
    return torch.compile(fn, **options)


# --- the measurements ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loaded = LOADED or (load_wheels(args.wheels) if args.wheels is not None else [])
    if not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: no CUDA device on this machine; it measures on a GPU only, nothing measured"
        )
        return 0
    diffusers = import_diffusers()
    started = time.perf_counter()
    print(f"card {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    if loaded:
        print(f"wheels loaded from {args.wheels}: {len(loaded)}")
    if diffusers is None:
        print(
            "diffusers not installed: ours only (pass --wheels DIR with the wheels of benchmarks/README.md)"
        )
    else:
        print(f"diffusers {diffusers.__version__}")
    inductor_settings()
    peak = matmul_tflops(args.repeats, args.warmup)
    print(f"bf16 matmul {MATMUL_N}^3: {peak:.0f} TFLOP/s (the 'of peak' column's 100%)")
    skip = set(filter(None, args.skip.split(",")))
    rows: list[Row] = []
    with torch.inference_mode():
        for family in ("sd1", "sdxl") if args.sdxl else ("sd1",):
            measured = measure(family, diffusers, args, skip)
            rows += measured
            torch.cuda.empty_cache()
            print(f"[{family} done at {time.perf_counter() - started:.0f} s]")
            print("\n".join(report(measured, peak)), flush=True)  # before the next family can fail
    print("\n".join(targets(rows)))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def measure(family: str, diffusers, args: argparse.Namespace, skip: set[str]) -> list[Row]:
    """Every figure of one model family; the parity lines are printed as they are measured."""
    import pipeline
    from pipeline.graphs import StaticLoop

    sd, theirs = models(family, diffusers)
    timed = {"repeats": args.repeats, "warmup": args.warmup}
    latent = SIZES[family] // 8
    gen = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(2, 4, latent, latent, device=DEVICE, generator=gen, dtype=torch.bfloat16)
    t = torch.full((2,), 500.0, device=DEVICE)
    cond = pipeline.conditioning(sd, [PROMPT, PROMPT], "")[0]
    context, extra = (cond, {}) if isinstance(cond, torch.Tensor) else (cond["context"], {"y": cond["y"]})
    z = torch.randn(
        1, 4, SIZES["sd1"] // 8, SIZES["sd1"] // 8, device=DEVICE, generator=gen, dtype=torch.bfloat16
    )
    compiled_unet, compiled_decoder = compiled(sd.unet), compiled(sd.vae.decoder)
    rows: list[Row] = []

    def ours_unet():
        return sd.unet(x, t, context, **extra)

    if theirs is not None:
        kwargs = theirs.unet_kwargs(cond)
        if "parity" not in skip:
            ref = theirs.unet_fp32(x.float(), t, context.float(), **_float(kwargs)).sample
            parity(f"{family} U-Net", ours_unet(), theirs.unet(x, t, context, **kwargs).sample, ref)
            if theirs.vae is not None:
                ref = theirs.vae_fp32.decode(z.float()).sample
                parity(f"{family} VAE decode", sd.vae.decode(z), theirs.vae.decode(z).sample, ref)
        theirs.unet_fp32 = theirs.vae_fp32 = None  # free the card for the timings
        torch.cuda.empty_cache()
    if "unet" not in skip:
        what, flops = f"unet b2 {latent}x{latent}", flops_of(ours_unet)
        graph = StaticLoop(lambda inputs: compiled_unet(inputs["x"], t, context, **extra), {"x": x})
        rows += [
            Row(what, "ours eager", cuda_ms(ours_unet, **timed), flops),
            Row(what, "ours compiled + graphs", cuda_ms(lambda: graph({"x": x}), **timed), flops),
        ]
        if theirs is not None:

            def their_unet(unet):
                return unet(x, t, context, **kwargs)

            rows.append(
                Row(what, "diffusers eager", cuda_ms(lambda: their_unet(theirs.unet), **timed), flops)
            )
            rows += attempt(what, lambda: diffusers_compiled(theirs.unet), their_unet, timed, flops)
    if "vae" not in skip and family == "sd1":
        what, flops = f"vae decode {SIZES['sd1']} px", flops_of(lambda: sd.vae.decode(z))
        post = sd.vae.post_quant_conv
        graph = StaticLoop(lambda inputs: compiled_decoder(post(inputs["z"])), {"z": z})
        rows += [
            Row(what, "ours eager", cuda_ms(lambda: sd.vae.decode(z), **timed), flops),
            Row(what, "ours compiled + graphs", cuda_ms(lambda: graph({"z": z}), **timed), flops),
        ]
        if theirs is not None:
            rows.append(Row(what, "diffusers eager", cuda_ms(lambda: theirs.vae.decode(z), **timed), flops))
            rows += attempt(
                what, lambda: diffusers_compiled(theirs.vae), lambda vae: vae.decode(z), timed, flops
            )
    if "image" not in skip:
        rows += image_rows(sd, theirs, family, timed, compiled_unet, compiled_decoder)
    return rows


def attempt(what: str, build: Callable[[], object], run: Callable[[object], object], timed: dict, flops):
    """The "diffusers + compile" row of `run(build())`, or none, with one line saying why, if their
    compile fails on this torch (the other figures still come)."""
    try:
        built = build()
        return [Row(what, "diffusers + compile", cuda_ms(lambda: run(built), **timed), flops)]
    except Exception as err:  # a failed third-party compile is a finding to print, not the end of the run
        print(f"{what}: diffusers + compile failed, row left out ({type(err).__name__}: {str(err)[:200]})")
        return []


def parity(what: str, ours: torch.Tensor, theirs: torch.Tensor, ref: torch.Tensor) -> None:
    """Pass: our bf16 result is within PARITY_FACTOR of diffusers' own bf16 error from their fp32 one."""
    mine, their = rel_err(ours, ref), rel_err(theirs, ref)
    verdict = "pass" if mine <= PARITY_FACTOR * their else "FAIL"
    print(
        f"parity {what} bf16: ours {mine:.2e} and diffusers {their:.2e} from diffusers fp32, ours vs "
        f"diffusers {rel_err(ours, theirs):.2e} ({verdict}: ours <= {PARITY_FACTOR:g} x diffusers')"
    )


def _float(kwargs: dict) -> dict:
    return {k: _float(v) if isinstance(v, dict) else v.float() for k, v in kwargs.items()}


def image_rows(
    sd, theirs: Theirs | None, family: str, timed: dict, compiled_unet, compiled_decoder
) -> list[Row]:
    """The full image: ours eager, ours compiled + graphs (its latents checked against eager's), and
    diffusers' pipeline eager and compiled (SD 1.5)."""
    import pipeline
    from pipeline.generate import step_loop, step_noise
    from pipeline.graphs import StaticLoop
    from solvers import prepare

    size = SIZES[family]
    what = f"image {size} px"
    plan = pipeline.build_plan(None, f"karras-2m-{STEPS}", guidance=GUIDANCE, schedule=sd.schedule)

    def ours(graphs: bool = False):
        run = pipeline.run_in_memory(sd, plan, height=size, width=size, device=DEVICE, compile=graphs)
        return pipeline.generate(run, [pipeline.Job(PROMPT, 0)])

    flops = flops_of(ours)
    rows = [Row(what, "ours eager", cuda_ms(ours, **timed), flops)]
    cond, uncond = pipeline.conditioning(sd, [PROMPT], "")
    x = pipeline.initial_noise([0], (4, size // 8, size // 8), DEVICE) * plan.sigmas[0]
    prepared = prepare(plan, x, step_noise([0]))
    inputs = {"x": x, "noise": prepared.noise, "cond": cond, "uncond": uncond}
    eager = step_loop(sd, prepared, x)(inputs)[0]
    fp32 = step_loop(dataclasses.replace(sd, unet=copy.deepcopy(sd.unet).float()), prepared, x)(inputs)[0]
    eager_unet, eager_decoder = sd.unet, sd.vae.decoder
    sd.unet, sd.vae.decoder = compiled_unet, compiled_decoder
    try:
        captured = StaticLoop(step_loop(sd, prepared, x), inputs)(inputs)[0]
        err, limit = rel_err(captured, eager), rel_err(eager, fp32)
        print(
            f"parity {what} latents, ours compiled + graphs vs eager in bf16: {err:.2e} "
            f"({'pass' if err <= limit else 'FAIL'}: <= bf16's own error from fp32, {limit:.2e})"
        )
        rows.append(Row(what, "ours compiled + graphs", cuda_ms(lambda: ours(graphs=True), **timed), flops))
    finally:
        sd.unet, sd.vae.decoder = eager_unet, eager_decoder
    if theirs is not None and theirs.pipeline is not None:
        pipe = theirs.pipeline()

        def their_image(pipe):
            return pipe(PROMPT, height=size, width=size, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                        output_type="np").images  # fmt: skip

        rows.append(Row(what, "diffusers eager", cuda_ms(lambda: their_image(pipe), **timed), flops))

        def compiled_pipe():
            pipe.unet, pipe.vae = diffusers_compiled(pipe.unet), diffusers_compiled(pipe.vae)
            return pipe

        rows += attempt(what, compiled_pipe, their_image, timed, flops)
    return rows


if __name__ == "__main__":
    sys.exit(main())
