"""Time and peak memory of loading a full-size single file, SD 1.5 or SDXL: `weights.load` vs diffusers'
`StableDiffusionPipeline` / `StableDiffusionXLPipeline.from_single_file`.

The script writes a random-weight checkpoint in the official single-file layout (float16: SD 1.5
about 2.1 GB, the size of `v1-5-pruned-emaonly-fp16.safetensors`; SDXL about 6.9 GB, the size of
`sd_xl_base_1.0.safetensors`, bigG in open_clip's layout) and the model's diffusers configs (for
diffusers' offline `config=` argument) to a temporary folder, then runs each loader in its own
subprocess and reads that process's peak resident memory (VmHWM in /proc/self/status). A loader may
map the file instead of reading it (diffusers does with `accelerate` installed, ours for tensors that
need no conversion), deferring the reads to first use; so each process then touches every weight
once, and both the load time and the time until every weight is resident are printed. The file is
read from the page cache by every loader (it was just written), so the times compare the loaders,
not the disk. Without `accelerate`, diffusers builds every module with random weights before
loading; to measure it with accelerate without installing it here: `pip install --target DIR
accelerate psutil pyyaml --no-deps` and run this script with PYTHONPATH=DIR.

    python -m benchmarks.load                    # SD 1.5: float16 file -> float16 and float32 models
    python -m benchmarks.load --model sdxl       # SDXL: 6.9 GB of disk, up to ~24 GB of memory
    python -m benchmarks.load --keep /tmp/sd15   # keep the written files there
    python -m benchmarks.load --lora             # SDXL float16 + a rank-64 LoRA, merged: ours vs fuse_lora

`--lora` also writes a rank-64 LoRA (float16, PEFT / diffusers keys, `unet.*.lora_A.weight`) on every
attention projection, feed-forward and conv layer of the SDXL U-Net, and times merging it into the
loaded float16 model: `weights.lora.read` + `merge` against diffusers' `load_lora_weights` +
`fuse_lora`. Targets: at most 0.5x diffusers' time; peak RSS at most 1.1x the model's tensor bytes.

A measurement whose peak may exceed the memory available (PEAK_BOUND x the loaded tensors) is
skipped with a note. Targets: our peak <= 1.3 x the loaded tensors' bytes, and
faster than diffusers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
# The largest peak / loaded-tensor ratio seen so far, to skip a measurement the machine cannot hold.
PEAK_BOUND = {"ours": 1.3, "diffusers": 1.7}


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def module_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.nbytes for m in modules for t in [*m.parameters(), *m.buffers()])


# --- writing the checkpoint -------------------------------------------------------------------------


def checkpoint_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official single file (LDM / sgm keys) with its shape, from the models built
    on meta; SDXL's bigG in open_clip's layout (tests/reference/clip.py's map)."""
    from model.unet import UNet, UNetConfig
    from tests.reference import clip
    from text_encoder import CLIPTextConfig, CLIPTextModel
    from vae import AutoencoderKL, VAEConfig
    from weights.families import FAMILIES

    kind = FAMILIES[model]
    prefixes = kind.prefixes()
    with torch.device("meta"):
        unet = UNet(UNetConfig.sd1() if model == "sd1" else UNetConfig.sdxl())
        vae = AutoencoderKL(VAEConfig.sd1() if model == "sd1" else VAEConfig.sdxl())
        shapes = {prefixes["unet"] + k: tuple(t.shape) for k, t in unet.state_dict().items()} | {
            prefixes["vae"] + k: tuple(t.shape) for k, t in vae.state_dict().items()
        }
        text = CLIPTextModel(CLIPTextConfig.sd1())
        shapes |= {prefixes["text_encoder"] + k: tuple(t.shape) for k, t in text.state_dict().items()}
        if model == "sdxl":
            bigg = clip.hf_text_model(clip.BIGG_TEXT, 1280, randomize=False)
            open_clip = clip.open_clip_state_dict(bigg)
            shapes |= {prefixes["text_encoder_2"] + k: tuple(t.shape) for k, t in open_clip.items()}
    return shapes


def extras(model: str) -> dict[str, torch.Tensor]:
    """The non-weight tensors of the official files: SD 1.5's alphas_cumprod, CLIP's position_ids."""
    from tests.checkpoints import sd15_alphas_cumprod
    from weights.families import FAMILIES

    clip_prefix = FAMILIES[model].prefixes()["text_encoder"]
    positions = {clip_prefix + "text_model.embeddings.position_ids": torch.arange(77)[None]}
    return positions | ({"alphas_cumprod": sd15_alphas_cumprod()} if model == "sd1" else {})


def write_single_file(path: Path, model: str) -> int:
    """Random float16 weights (N(0, 0.02^2)) and the official file's other tensors; written tensor by
    tensor so the script itself stays small. Returns the weights' bytes."""
    shapes, others = checkpoint_shapes(model), extras(model)
    entries, offset = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        entries[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    for key, tensor in others.items():
        dtype = {torch.float32: "F32", torch.int64: "I64"}[tensor.dtype]
        entries[key] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}).encode()
    header += b" " * (-len(header) % 8)  # pad to 8 bytes, as the safetensors library does
    generator = torch.Generator().manual_seed(0)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for shape in shapes.values():
            f.write((0.02 * torch.randn(shape, generator=generator)).half().numpy().tobytes())
        for tensor in others.values():
            f.write(tensor.numpy().tobytes())
    return sum(math.prod(s) for s in shapes.values()) * 2


def write_diffusers_configs(folder: Path, model: str) -> None:
    """The model's model_index.json and component configs (no weights), for from_single_file(config=...)."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tests.checkpoints import MODEL_INDEX, SCHEDULER_CONFIG, SDXL_MODEL_INDEX, SDXL_SCHEDULER_CONFIG
    from tests.reference import clip, unet, vae

    xl = model == "sdxl"
    unet_config = (
        unet.sdxl_config((320, 640, 1280), 64, context=2048, pooled=1280, time_dim=256, depths=(1, 2, 10))
        if xl
        else unet.sd15_config(unet.FULL)
    )
    with torch.device("meta"):
        UNet2DConditionModel(**unet_config, sample_size=128 if xl else 64).save_config(folder / "unet")
        scale = 0.13025 if xl else 0.18215
        AutoencoderKL(**vae.diffusers_config(vae.FULL, scale), sample_size=1024 if xl else 512).save_config(
            folder / "vae"
        )
    texts = [("text_encoder", clip.SD1_TEXT, None, "CLIPTextModel")]
    if xl:
        texts.append(("text_encoder_2", clip.BIGG_TEXT, 1280, "CLIPTextModelWithProjection"))
    for name, text, projection, architecture in texts:
        config = transformers.CLIPTextConfig(**text, **({"projection_dim": projection} if projection else {}))
        config.architectures = [architecture]
        config.save_pretrained(folder / name)
    for name, pad in [("tokenizer", "<|endoftext|>"), *([("tokenizer_2", "!")] if xl else [])]:
        (folder / name).mkdir()
        clip.write_tokenizer_files(folder / name)
        special = {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": pad,
        }
        (folder / name / "special_tokens_map.json").write_text(json.dumps(special))
        (folder / name / "tokenizer_config.json").write_text(
            json.dumps(special | {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
        )
    (folder / "scheduler").mkdir()
    scheduler = SDXL_SCHEDULER_CONFIG if xl else SCHEDULER_CONFIG
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX if xl else MODEL_INDEX))


LORA_RANK = 64
LORA_LAYERS = re.compile(
    r".*\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2|conv_shortcut"
    r"|downsamplers\.0\.conv|upsamplers\.0\.conv)"
)


def write_lora(path: Path) -> None:
    """A rank-64 LoRA with random float16 weights on every attention, feed-forward and conv layer of the
    SDXL U-Net, in the PEFT / diffusers layout (conv layers: a conv-kernel down, a 1 x 1 up): 749 layers."""
    from safetensors.torch import save_file

    from model.unet import UNet, UNetConfig
    from weights import lora_keys

    with torch.device("meta"):
        unet = UNet(UNetConfig.sdxl())
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for module in lora_keys.adaptable((n, tuple(p.shape)) for n, p in unet.named_parameters()):
        name = lora_keys.diffusers_unet_module(module, unet.config.num_res_blocks)
        if name is None or not LORA_LAYERS.fullmatch("." + name):
            continue
        shape = unet.get_parameter(module + ".weight").shape
        kernel = [1, 1] if len(shape) == 4 else []
        down = torch.randn(LORA_RANK, *shape[1:], generator=generator) / math.prod(shape[1:]) ** 0.5
        up = 0.01 * torch.randn(shape[0], LORA_RANK, *kernel, generator=generator)
        tensors[f"unet.{name}.lora_A.weight"], tensors[f"unet.{name}.lora_B.weight"] = down.half(), up.half()
    save_file(tensors, path, metadata={"format": "pt"})


# --- the measured loaders (each in a fresh process) -------------------------------------------------


def touch(models: tuple[torch.nn.Module, ...]) -> None:
    """Read one byte of every 4 KiB page of every weight: mapped weights (diffusers with accelerate,
    and ours when no conversion is needed) become resident, as the first denoising step would make them."""
    for model in models:
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.detach().reshape(-1).view(torch.uint8)[::4096].sum()


def load(loader: str, path: Path, dtype: torch.dtype, config: Path):
    """Our StableDiffusion or diffusers' pipeline."""
    if loader == "ours":
        import weights

        return weights.load(path, dtype=dtype)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    xl = json.loads((config / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    options = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    return (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=dtype, **options
    )


def merge_lora(loader: str, model, lora_path: Path) -> None:
    """Merge the LoRA into the loaded model: ours, or diffusers' load_lora_weights + fuse_lora."""
    if loader == "ours":
        from weights import lora

        lora.merge(model, [(lora.read(lora_path), 1.0)])
    else:
        model.load_lora_weights(str(lora_path))
        model.fuse_lora()


def child(loader: str, path: Path, dtype: torch.dtype, config: Path, lora_path: Path | None = None) -> dict:
    # Imports happen before the baseline and the clock: only loading is measured.
    if loader == "ours":
        import weights.lora  # noqa: F401
    else:
        import peft  # noqa: F401  (load_lora_weights needs it)
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401
    baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    model = load(loader, path, dtype, config)
    loaded = time.perf_counter()
    models = tuple(
        m for m in (model.unet, model.vae, model.text_encoder, getattr(model, "text_encoder_2", None)) if m
    )
    model_bytes = module_bytes(*models)  # before diffusers adds its LoRA layers
    if lora_path is not None:
        merge_lora(loader, model, lora_path)
    merged = time.perf_counter()
    touch(models)
    return {
        "load": loaded - start,
        "lora": merged - loaded,
        "resident": time.perf_counter() - start,
        "baseline": baseline,
        "peak": status_bytes("VmHWM"),
        "model": model_bytes,
    }


def measure(loader: str, path: Path, dtype_name: str, config: Path, lora_path: Path | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.load",
        "--child",
        loader,
        "--path",
        str(path),
        "--dtype",
        dtype_name,
        "--config",
        str(config),
        *(["--lora-path", str(lora_path)] if lora_path else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{loader} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["sd15", "sdxl"], default="sd15", help="which single file")
    parser.add_argument("--keep", type=Path, help="write the files into this folder and keep them")
    parser.add_argument(
        "--lora", action="store_true", help="SDXL, float16, plus a rank-64 LoRA merged into it"
    )
    parser.add_argument("--child", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help=argparse.SUPPRESS)
    parser.add_argument("--lora-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, DTYPES[args.dtype], args.config, args.lora_path)))
        return

    if args.lora:
        args.model = "sdxl"
    model = {"sd15": "sd1", "sdxl": "sdxl"}[args.model]
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path, config = (
            folder / f"{args.model}-random-fp16.safetensors",
            folder / f"{args.model}-diffusers-config",
        )
        start = time.perf_counter()
        if not path.exists():
            write_single_file(path, model)
        if not config.exists():
            write_diffusers_configs(config, model)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s")
        lora_path, lora_bytes = None, 0
        if args.lora:
            lora_path = folder / f"sdxl-random-lora-rank{LORA_RANK}-fp16.safetensors"
            if not lora_path.exists():
                write_lora(lora_path)
            lora_bytes = lora_path.stat().st_size
            print(f"LoRA {lora_path} ({lora_bytes / 1e9:.2f} GB, rank {LORA_RANK})")

        results = {}
        runs = [("ours", "fp16"), ("diffusers", "fp16")]
        for loader, dtype_name in runs if args.lora else [*runs, ("ours", "fp32"), ("diffusers", "fp32")]:
            needs = PEAK_BOUND[loader] * path.stat().st_size * (2 if dtype_name == "fp32" else 1) + lora_bytes
            if needs > available_bytes():
                print(
                    f"{loader:9s} fp16 file -> {dtype_name}: skipped, it may need {needs / 1e9:.1f} GB and "
                    f"{available_bytes() / 1e9:.1f} GB are available"
                )
                continue
            result = results[loader, dtype_name] = measure(loader, path, dtype_name, config, lora_path)
            peak, baseline, size = result["peak"], result["baseline"], result["model"]
            merged = f"LoRA merged in {result['lora']:5.1f} s, " if args.lora else ""
            print(
                f"{loader:9s} fp16 file -> {dtype_name}: load {result['load']:5.1f} s, {merged}every weight "
                f"resident after {result['resident']:5.1f} s; peak RSS {peak / 1e9:5.2f} GB = "
                f"{peak / size:.2f} x the loaded tensors ({size / 1e9:.2f} GB), "
                f"{(peak - baseline) / size:.2f} x counting from the {baseline / 1e9:.2f} GB before loading"
            )
        for dtype_name in DTYPES:
            if ("ours", dtype_name) not in results or ("diffusers", dtype_name) not in results:
                continue
            ours, theirs = results["ours", dtype_name], results["diffusers", dtype_name]
            if args.lora:
                print(
                    f"ours / diffusers (LoRA read + merge vs load_lora_weights + fuse_lora): time "
                    f"{ours['lora'] / theirs['lora']:.3f} (target <= 0.5); our peak RSS "
                    f"{ours['peak'] / ours['model']:.3f} x the model's tensor bytes (target <= 1.1), "
                    f"diffusers' {theirs['peak'] / theirs['model']:.3f} x"
                )
                continue
            print(
                f"ours / diffusers (fp16 file -> {dtype_name}): "
                f"load time {ours['load'] / theirs['load']:.3f}, "
                f"time to resident {ours['resident'] / theirs['resident']:.3f}, "
                f"peak RSS {ours['peak'] / theirs['peak']:.3f}"
            )


if __name__ == "__main__":
    main()
