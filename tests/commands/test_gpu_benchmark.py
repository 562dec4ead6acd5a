"""benchmarks/gpu.py's CPU-side parts: the no-CUDA exit, its flags, the wheel folder, the report.

The measurements themselves need a CUDA card (the script is run there as is, see benchmarks/README.md).
"""

import copy
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA line is for machines without a card")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "benchmarks/gpu.py: no CUDA device on this machine; it measures on a GPU only, nothing measured"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "5"], "--repeats 5: the medians are of at least 20 runs"),
        (["--warmup", "0"], "--warmup 0: give at least 1"),
        (["--skip", "unet,speed"], r"unknown part\(s\) \['speed'\]"),
        (["--wheels", "no/such/folder"], "--wheels no/such/folder is not a folder"),
    ],
)
def test_bad_flags_are_refused_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.parse_args(argv)
    assert exit_.value.code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert re.search(message, line), line


def test_defaults_are_20_timed_runs_after_3_warm_ups_of_everything():
    args = gpu.parse_args([])
    assert (args.repeats, args.warmup, args.sdxl, args.skip, args.wheels) == (20, 3, False, "", None)


def write_wheel(folder: Path, name: str) -> Path:
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        archive.writestr(
            f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
        )
    return wheel


def test_wheels_from_a_folder_are_importable_without_installing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "wheels"
    folder.mkdir()
    write_wheel(folder, "gpu_bench_probe_pkg")
    assert gpu.load_wheels(folder, tmp_path / "site") == ["gpu_bench_probe_pkg-1.0-py3-none-any.whl"]
    import importlib.metadata

    import gpu_bench_probe_pkg

    assert gpu_bench_probe_pkg.VALUE == 42
    assert importlib.metadata.version("gpu_bench_probe_pkg") == "1.0"
    sys.modules.pop("gpu_bench_probe_pkg")


def test_a_wheel_folder_without_wheels_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=f"--wheels {tmp_path} holds no .whl files"):
        gpu.load_wheels(tmp_path)


def test_the_report_gives_fractions_of_the_matmul_peak_and_ours_over_diffusers():
    rows = [
        gpu.Row("unet b2 64x64", "ours compiled + graphs", 10.0, 2e12),  # 200 TFLOP/s
        gpu.Row("unet b2 64x64", "diffusers + compile", 20.0, 2e12),
        gpu.Row("image 512 px", "ours compiled + graphs", 120.0, None),
    ]
    lines = gpu.report(rows, peak_tflops=800.0)
    assert lines[1].split() == ["unet", "b2", "64x64", "ours", "compiled", "+", "graphs", "10.00", "25.0%"]
    assert lines[3].split()[-1] == "120.00"  # no FLOP count: no fraction
    assert "ratio unet b2 64x64: ours compiled + graphs / diffusers + compile = 0.500" in lines
    assert gpu.targets(rows) == [
        "target U-Net ours / diffusers + compile = 0.500 (<= 0.8): met",
        "target 8-step 512 px image 120.0 ms (<= 100 ms): NOT met",
    ]


@pytest.mark.slow  # tiny networks, but every figure and both pipelines: ~1 min on 2 shared cores
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_figure_and_parity_line_comes_out_on_tiny_models_with_cpu_stand_ins(
    family, tmp_path, monkeypatch, capsys
):
    """The measuring code runs end to end: the CPU in place of the card, tiny random models in place
    of the real sizes, compile left out, one untimed call per figure in place of CUDA events."""
    import diffusers

    import weights
    from tests.checkpoints import reference_models, write_checkpoint
    from tests.helpers import one_thread

    refs = reference_models(kind=family)
    sd = weights.load(write_checkpoint(tmp_path, "single", references=refs), dtype=torch.bfloat16)
    bf16 = lambda module: copy.deepcopy(module).to(torch.bfloat16)  # noqa: E731
    theirs = gpu.Theirs(bf16(refs.unet), refs.unet)
    if family == "sdxl":
        theirs.added = gpu.sdxl_added(dict(refs.unet.config))
    else:
        theirs.vae, theirs.vae_fp32, theirs.text_encoder = bf16(refs.vae), refs.vae, bf16(refs.text_encoder)
        theirs.pipeline = lambda: gpu.diffusers_pipeline(diffusers, theirs)
    monkeypatch.setattr(gpu, "DEVICE", "cpu")
    monkeypatch.setattr(gpu, "SIZES", {"sd1": 64, "sdxl": 64})
    monkeypatch.setattr(gpu, "models", lambda family, diffusers: (sd, theirs))
    monkeypatch.setattr(gpu, "compiled", lambda fn, **options: fn)
    monkeypatch.setattr(gpu, "cuda_ms", lambda fn, repeats, warmup: (fn(), 1.0)[1])
    with one_thread(), torch.inference_mode():
        rows = gpu.measure(family, diffusers, gpu.parse_args([]), set())
    whos = ("ours eager", "ours compiled + graphs", "diffusers eager", "diffusers + compile")
    figures = ("unet b2 8x8", "vae decode 64 px", "image 64 px") if family == "sd1" else ("unet b2 8x8",)
    expected = [(what, who) for what in figures for who in whos]
    if family == "sdxl":  # diffusers' SDXL pipeline is not built: ours only for the image
        expected += [("image 64 px", "ours eager"), ("image 64 px", "ours compiled + graphs")]
    assert [(r.what, r.who) for r in rows] == expected
    assert all(r.flops > 0 for r in rows)
    out = capsys.readouterr().out
    assert f"parity {family} U-Net bf16" in out and "FAIL" not in out
    assert "parity image 64 px latents, ours compiled + graphs vs eager in bf16: 0.00e+00 (pass" in out
