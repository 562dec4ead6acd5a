"""Text to image (and image to image): conditioning, initial noise, the guided denoiser, `sample`,
decode.

One image: noise from its own seed -> x = noise * sigma_0 -> `solvers.sample` along the Plan with
the classifier-free-guided `model.Denoiser` (stochastic rules drawing from the image's own step-noise
stream) -> `vae.decode(x / scaling_factor)` -> uint8 pixels. From an init image, the plan starts
part-way instead (pipeline/img2img.py).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

import safeio
import weights
from model import Denoiser, SizeConditioning
from model.unet import guidance_embedding
from pipeline import img2img
from pipeline.batching import Batch
from pipeline.files import image_stem, save_png
from pipeline.graphs import StaticLoop
from pipeline.limits import LATENT_FACTOR
from pipeline.models import family
from pipeline.pixels import quantize
from pipeline.provenance import Settings, png_metadata
from pipeline.runs import Job, Run
from solvers import NoiseSource, NonFinite, Plan, Prepared, StepInfo, guided, prepare
from solvers.guidance import Cond

# The captured step loops of each U-Net, by plan and input shapes (dropped with the U-Net).
_LOOPS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, StaticLoop]] = weakref.WeakKeyDictionary()


class SamplingError(safeio.Worded, RuntimeError):
    """A sampling run went wrong (non-finite latents); the message is one line, naming inputs as
    `{name}` fields (safeio.Worded)."""


def initial_noise(
    seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape]: each image's from its own CPU float32 generator,
    then moved, so an image does not depend on its batch or on the device."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(device)


def step_noise_seed(seed: int) -> int:
    """The seed of an image's step-noise stream, a fixed function of its seed (the first 8 bytes of
    sha256("fewstep-sd step noise <seed>")), so the stream is not its initial noise's stream."""
    return int.from_bytes(hashlib.sha256(f"fewstep-sd step noise {seed}".encode()).digest()[:8], "little")


def step_noise(seeds: Sequence[int]) -> NoiseSource:
    """The noise stochastic rules add, drawn like the initial noise: each image's from its own CPU
    float32 generator (seeded by `step_noise_seed`), then moved, so an image does not depend on its
    batch or on the device."""
    generators = [torch.Generator().manual_seed(step_noise_seed(s)) for s in seeds]

    def draw(like: torch.Tensor) -> torch.Tensor:
        noise = [torch.randn(tuple(like.shape[1:]), generator=g) for g in generators]
        return torch.stack(noise).to(like.device, like.dtype)

    return draw


def conditioning(
    sd: weights.StableDiffusion,
    prompts: Sequence[str],
    negative_prompt: str,
    *,
    size: SizeConditioning | None = None,
    empty_negative: str | None = None,
) -> tuple[Cond, Cond]:
    """The U-Net conditioning of the prompts (batch B) and of the negative prompt (batch 1), the
    unconditional half of guidance. An empty negative prompt is the encoded "" or zero embeddings
    (`empty_negative` "encode" | "zeros", default the family's: SD 1.x encodes, SDXL zeros);
    `size` is SDXL's size conditioning (default (1024, 1024, 0, 0, 1024, 1024)), on both halves."""
    empty_negative = family(sd).empty_negative if empty_negative is None else empty_negative
    if negative_prompt == "" and empty_negative == "zeros":
        uncond = sd.null_condition(1, size)
    else:
        uncond = sd.encode_prompt([negative_prompt], size)
    return sd.encode_prompt(list(prompts), size), uncond


def denoiser(sd: weights.StableDiffusion, cond: Cond, uncond: Cond) -> Callable[..., torch.Tensor]:
    """`denoise(x, sigma, guidance=w, freeu=...)`: D_u + w (D_c - D_u) of the eps U-Net seen as a
    denoiser on the model's own noise schedule, both halves in one batch."""
    return guided(Denoiser(sd.unet, sd.schedule), cond, uncond)


def embedded_guidance(sd: weights.StableDiffusion, plan: Plan, cond: Cond) -> tuple[Plan, Cond]:
    """An LCM U-Net (one with `time_cond_proj_dim`) takes the guidance scale w as an input, as its
    authors' pipeline gives it: timestep_cond = guidance_embedding(w - 1), one U-Net pass per step and
    guidance itself off. Any other U-Net: the plan and cond as they are."""
    dim = sd.unet.config.time_cond_proj_dim
    if dim is None:
        return plan, cond
    rows = (cond["context"] if isinstance(cond, dict) else cond).shape[0]
    w = torch.full((rows,), plan.guidance[0] - 1.0)
    embedding = guidance_embedding(w, dim).to(next(sd.unet.parameters()).device)
    context = cond if isinstance(cond, dict) else {"context": cond}
    return plan.replace(guidance=1.0), {**context, "timestep_cond": embedding}


def decode_pixels(sd: weights.StableDiffusion, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B, 4, h, w] -> float32 images [B, 3, 8h, 8w] in about [-1, 1] on the latents' device,
    decoded in the VAE's own dtype: the picture before it is quantised to 8 bits."""
    vae_dtype = next(sd.vae.parameters()).dtype
    pixels = sd.vae.decode((latents / sd.vae.scaling_factor).to(vae_dtype)).float()
    if not torch.isfinite(pixels).all():
        name = str(vae_dtype).removeprefix("torch.")
        if vae_dtype != torch.float32:
            raise SamplingError(
                "the VAE decoder produced non-finite pixels in {name}; decode in float32 instead", name=name
            )
        raise SamplingError(
            "the VAE decoder produced non-finite pixels in float32, so its weights {source} are at fault: "
            "check them or use another VAE",
            source=sd.vae_source or sd.source,
        )
    return pixels


def decode(sd: weights.StableDiffusion, latents: torch.Tensor, quantization: str = "round") -> torch.Tensor:
    """Latents [B, 4, h, w] -> uint8 images [B, 3, 8h, 8w] on the CPU, quantised by `quantization`
    (pipeline.pixels.QUANTIZATIONS): "round" like diffusers, round(255 * clamp(x / 2 + 0.5, 0, 1)), or
    "truncate" like the authors' code, floor(255 * clamp((x + 1) / 2, 0, 1))."""
    return quantize(decode_pixels(sd, latents), quantization).cpu()


def _blame(failure: NonFinite, sd: weights.StableDiffusion, plan: Plan) -> SamplingError:
    """Non-finite latents, and what to do about them: a half-precision run may have overflowed; a
    float32 one points at the plan (its guidance scale) or the weights."""
    if next(sd.unet.parameters()).dtype != torch.float32:
        return SamplingError(
            "{failure}; the model's dtype overflowed or the weights are broken: try {dtype} float32",
            failure=failure,
        )
    return SamplingError(
        "{failure}; the run is float32 already, so the plan (guidance up to {scale:g}) or the weights "
        "{source} are at fault: lower {guidance}, or check the weights",
        failure=failure,
        scale=max(plan.guidance),
        source=sd.source,
    )


def generate(
    run: Run, jobs: Sequence[Job], *, callback: Callable[[StepInfo], None] | None = None
) -> torch.Tensor:
    """The images of the jobs, as one batch: uint8 [B, 3, height, width] on the CPU, by the run's plan
    and settings (size, negative prompt, size conditioning, empty negative, quantisation).

    The latents stay float32 through the solver (the Denoiser casts to the model's dtype); guidance is
    D_u + w (D_c - D_u) with the negative prompt as the unconditional one (see `conditioning`). With
    the run's init image, every image starts from it at the step its strength selects
    (pipeline/img2img.py). `callback` sees every step, after the check for non-finite values. Raises
    SamplingError naming the step at which the latents stopped being finite. A compiled run (with no
    callback): the step loop of this plan and batch shape runs over static buffers, captured once as a
    CUDA graph on CUDA and replayed by later calls (pipeline/graphs.py); the same numbers as without it
    elsewhere.
    """
    sd, settings, init = run.model, run.settings, run.init
    seeds = [job.seed for job in jobs]
    device = next(sd.unet.parameters()).device
    channels = sd.unet.config.in_channels
    plan = img2img.cut(run.plan, init, sd.schedule)
    with torch.inference_mode():
        prompts, size = [job.prompt for job in jobs], settings.size()
        cond, uncond = conditioning(
            sd, prompts, settings.negative_prompt, size=size, empty_negative=settings.empty_negative
        )
        plan, cond = embedded_guidance(sd, plan, cond)
        noise = initial_noise(
            seeds, (channels, settings.height // LATENT_FACTOR, settings.width // LATENT_FACTOR), device
        )
        x = noise * plan.sigmas[0] if init is None else img2img.start_latent(sd, init, plan.sigmas[0], noise)
        prepared = prepare(plan, x, step_noise(seeds))
        inputs = {"x": x, "noise": prepared.noise, "cond": cond, "uncond": uncond}
        if settings.compile and callback is None:
            key = (plan.to_json(), *((k, tuple(v.shape)) for k, v in _tensors(inputs)))
            loops = _LOOPS.setdefault(sd.unet, {})
            if key not in loops:
                loops[key] = StaticLoop(step_loop(sd, prepared, x), inputs)  # captured here on CUDA
            loop = loops[key]
        else:
            loop = step_loop(sd, prepared, x, callback)
        try:
            x, finite = loop(inputs)
            prepared.check(finite)
        except NonFinite as err:
            raise _blame(err, sd, plan) from None
        return decode(sd, x, settings.quantization)


def step_loop(
    sd: weights.StableDiffusion,
    prepared: Prepared,
    like: torch.Tensor,
    callback: Callable[[StepInfo], None] | None = None,
) -> Callable[[dict], tuple[torch.Tensor, torch.Tensor]]:
    """The prepared run as `loop(inputs) -> (x, finite)` over inputs x, noise (drawn ahead, as
    `prepared.noise`), cond and uncond: the guided denoiser with its coefficients of the plan's
    sigmas on the device, then `prepared.run` (finite: solvers/loop.py)."""
    denoiser = Denoiser(sd.unet, sd.schedule)
    for rows in (like.shape[0], 2 * like.shape[0]):  # guidance 1 runs the conditional half only
        denoiser.prepare(prepared.plan.sigmas, rows, like.device, like.dtype)

    def loop(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        denoise = guided(denoiser, inputs["cond"], inputs["uncond"])
        return prepared.run(denoise, inputs["x"], callback, inputs["noise"])

    return loop


def _tensors(tree: object, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in _tensors(v, f"{prefix}{k}.")]
    return [(prefix, tree)]


def replays_graph(settings: Settings) -> bool:
    """Whether a run's step loop replays as one CUDA graph (--compile on CUDA), which takes no host
    call per step: only there does a progress bar move per batch rather than per step."""
    return settings.compile and settings.device == "cuda"


def generate_batch(
    run: Run, batch: Batch[Job], callback: Callable[[StepInfo], None] | None = None
) -> list[tuple[Settings, torch.Tensor]]:
    """The images of a batch's own jobs, each with its Settings: the run's with the job's prompt and
    seed and the batch shape it was made in."""
    images = generate(run, batch.rows, callback=callback)
    return [
        (
            replace(run.settings, prompt=job.prompt, seed=job.seed, batch=len(batch.rows), batch_index=k),
            images[k],
        )
        for k, job in batch.jobs
    ]


def trajectory_grid(xs: Sequence[torch.Tensor], denoised: Sequence[torch.Tensor]) -> torch.Tensor:
    """Step i in column i: the decoded x_i on top, the decoded D(x_i; sigma_i) below. uint8 [3, 2H, N W]."""
    return torch.cat([torch.cat(list(xs), dim=2), torch.cat(list(denoised), dim=2)], dim=1)


def write_batch(
    run: Run,
    batch: Batch[Job],
    out: Path,
    written: list[Path],
    *,
    trajectory: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
) -> int:
    """Generate a batch's own images and write each into `out` as {seed}-{prompt}.png with its
    provenance (`png_metadata`), adding its path to `written` as it lands; with `trajectory`, beside
    each its `trajectory_grid` of every step. `callback` sees every step. Returns the trajectories
    written."""
    sd, quantization = run.model, run.settings.quantization
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(info: StepInfo) -> None:
        if trajectory:
            steps.append((decode(sd, info.x, quantization), decode(sd, info.denoised, quantization)))
        if callback is not None:
            callback(info)

    images = generate_batch(run, batch, callback=step if trajectory or callback else None)
    for settings, image in images:
        metadata = png_metadata(run.plan, settings)
        saved = save_png(image, out, image_stem(settings.prompt, settings.seed), metadata)
        written.append(saved)
        if trajectory:
            k = settings.batch_index
            grid = trajectory_grid([x[k] for x, _ in steps], [d[k] for _, d in steps])
            save_png(grid, out, f"{saved.stem}-trajectory", metadata)
    return len(images) if trajectory else 0
