"""Time and peak memory of loading a full-size SD 1.5 single file: `weights.load` vs diffusers'
`StableDiffusionPipeline.from_single_file`.

The script writes a random-weight SD 1.5 checkpoint in the official LDM layout (float16, about 2.1 GB,
the size of `v1-5-pruned-emaonly-fp16.safetensors`) and the SD 1.5 diffusers configs (for diffusers'
offline `config=` argument) to a temporary folder, then runs each loader in its own subprocess and
reads that process's peak resident memory (VmHWM in /proc/self/status). A loader may map the file
instead of reading it (diffusers does with `accelerate` installed, ours for tensors that need no
conversion), deferring the reads to first use; so each process then touches every weight once, and
both the load time and the time until every weight is resident are printed. The file is read from
the page cache by every loader (it was just written), so the times compare the loaders, not the disk.
Without `accelerate`, diffusers builds every module with random weights before loading; to measure
it with accelerate without installing it here: `pip install --target DIR accelerate psutil pyyaml
--no-deps` and run this script with PYTHONPATH=DIR.

    python -m benchmarks.load                    # float16 file -> float16 and float32 models
    python -m benchmarks.load --keep /tmp/sd15   # keep the written files there

Targets: our peak <= 1.3 x the loaded tensors' bytes, and faster than diffusers.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def module_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.nbytes for m in modules for t in [*m.parameters(), *m.buffers()])


# --- writing the checkpoint -------------------------------------------------------------------------


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of an SD 1.5 single file (LDM keys) with its shape, from the models built on meta."""
    from model.unet import UNet, UNetConfig
    from text_encoder import CLIPTextConfig, CLIPTextModel
    from vae import AutoencoderKL, VAEConfig
    from weights.keymaps import PREFIXES

    with torch.device("meta"):
        models = {
            "unet": UNet(UNetConfig.sd1()),
            "vae": AutoencoderKL(VAEConfig.sd1()),
            "text_encoder": CLIPTextModel(CLIPTextConfig.sd1()),
        }
    return {
        PREFIXES[name] + key: tuple(t.shape)
        for name, model in models.items()
        for key, t in model.state_dict().items()
    }


def write_single_file(path: Path) -> int:
    """Random float16 weights (N(0, 0.02^2)), plus alphas_cumprod and position_ids as in the official
    file; written tensor by tensor so the script itself stays small. Returns the weights' bytes."""
    from tests.checkpoints import sd15_alphas_cumprod

    shapes = sd15_shapes()
    entries, offset = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        entries[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    extras = {
        "alphas_cumprod": sd15_alphas_cumprod(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    for key, tensor in extras.items():
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
        for tensor in extras.values():
            f.write(tensor.numpy().tobytes())
    return sum(math.prod(s) for s in shapes.values()) * 2


def write_diffusers_configs(folder: Path) -> None:
    """SD 1.5's model_index.json and component configs (no weights), for from_single_file(config=...)."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tests.checkpoints import MODEL_INDEX, SCHEDULER_CONFIG
    from tests.reference import clip, unet, vae

    with torch.device("meta"):
        UNet2DConditionModel(**unet.sd15_config(unet.FULL), sample_size=64).save_config(folder / "unet")
        AutoencoderKL(**vae.diffusers_config(vae.FULL), sample_size=512).save_config(folder / "vae")
    config = transformers.CLIPTextConfig(**clip.SD1_TEXT)
    config.architectures = ["CLIPTextModel"]
    config.save_pretrained(folder / "text_encoder")
    (folder / "tokenizer").mkdir()
    clip.write_tokenizer_files(folder / "tokenizer")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer" / "tokenizer_config.json").write_text(
        json.dumps(special | {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))


# --- the measured loaders (each in a fresh process) -------------------------------------------------


def touch(models: tuple[torch.nn.Module, ...]) -> None:
    """Read one byte of every 4 KiB page of every weight: mapped weights (diffusers with accelerate,
    and ours when no conversion is needed) become resident, as the first denoising step would make them."""
    for model in models:
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.detach().reshape(-1).view(torch.uint8)[::4096].sum()


def load(loader: str, path: Path, dtype: torch.dtype, config: Path) -> tuple[torch.nn.Module, ...]:
    if loader == "ours":
        import weights

        sd = weights.load(path, dtype=dtype)
        return sd.unet, sd.vae, sd.text_encoder
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(config),
        local_files_only=True,
        torch_dtype=dtype,
        safety_checker=None,
        requires_safety_checker=False,
    )
    return pipe.unet, pipe.vae, pipe.text_encoder


def child(loader: str, path: Path, dtype: torch.dtype, config: Path) -> dict:
    # Imports happen before the baseline and the clock: only loading is measured.
    if loader == "ours":
        import weights  # noqa: F401
    else:
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401
    baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    models = load(loader, path, dtype, config)
    loaded = time.perf_counter()
    touch(models)
    return {
        "load": loaded - start,
        "resident": time.perf_counter() - start,
        "baseline": baseline,
        "peak": status_bytes("VmHWM"),
        "model": module_bytes(*models),
    }


def measure(loader: str, path: Path, dtype_name: str, config: Path) -> dict:
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
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{loader} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="write the files into this folder and keep them")
    parser.add_argument("--child", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, DTYPES[args.dtype], args.config)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path, config = folder / "sd15-random-fp16.safetensors", folder / "sd15-diffusers-config"
        start = time.perf_counter()
        if not path.exists():
            write_single_file(path)
        if not config.exists():
            write_diffusers_configs(config)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s")

        results = {}
        for loader, dtype_name in (
            ("ours", "fp16"),
            ("diffusers", "fp16"),
            ("ours", "fp32"),
            ("diffusers", "fp32"),
        ):
            result = results[loader, dtype_name] = measure(loader, path, dtype_name, config)
            peak, baseline, model = result["peak"], result["baseline"], result["model"]
            print(
                f"{loader:9s} fp16 file -> {dtype_name}: load {result['load']:5.1f} s, every weight "
                f"resident after {result['resident']:5.1f} s; peak RSS {peak / 1e9:5.2f} GB = "
                f"{peak / model:.2f} x the loaded tensors ({model / 1e9:.2f} GB), "
                f"{(peak - baseline) / model:.2f} x counting from the {baseline / 1e9:.2f} GB before loading"
            )
        for dtype_name in DTYPES:
            ours, theirs = results["ours", dtype_name], results["diffusers", dtype_name]
            print(
                f"ours / diffusers (fp16 file -> {dtype_name}): "
                f"load time {ours['load'] / theirs['load']:.3f}, "
                f"time to resident {ours['resident'] / theirs['resident']:.3f}, "
                f"peak RSS {ours['peak'] / theirs['peak']:.3f}"
            )


if __name__ == "__main__":
    main()
