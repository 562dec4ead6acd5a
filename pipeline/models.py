"""Which model to run: weights by path, Hub id or short name, their family (weights/families.py), the
device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

import safeio
import weights
from weights import FAMILIES, Family
from weights.catalog import (
    DISTILLED_FILES,
    DREAMSHAPER_XL_REPO,
    SD15_REPO,
    SDXL_REPO,
    SHORT_NAMES,
    SINGLE_FILES,
    distilled_names,
)
from weights.hub import hub_file
from weights.hub_spec import is_local_path, parse_hub_spec

DEFAULT_WEIGHTS = SD15_REPO  # its file SD15_FILE: the pruned EMA-only fp32 release, 4.27 GB
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Other spellings of the dtypes that --dtype and --vae-dtype accept (PyTorch's own and common ones).
DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}


# The family of each repo a short name names, known before anything is fetched.
REPO_FAMILIES = {SD15_REPO: "sd1", SDXL_REPO: "sdxl", DREAMSHAPER_XL_REPO: "sdxl"} | {
    entry.repo: entry.family for entry in DISTILLED_FILES.values() if entry.kind == "weights"
}


def family(sd: weights.StableDiffusion) -> Family:
    return FAMILIES[sd.kind]


def _unabbreviated(spec: str) -> str:
    """The Hub id a short name (sdxl, dreamshaper-xl, ...) stands for; a local path of that name wins,
    and anything else is returned as it is."""
    return SHORT_NAMES[spec] if spec in SHORT_NAMES and not Path(spec).expanduser().exists() else spec


def known_family(spec: str) -> Family | None:
    """The family of weights known without fetching them: a local file's or folder's, from its headers
    (no tensor is read); a known repo's (a short name's) from REPO_FAMILIES; else None."""
    path = Path(spec).expanduser()
    if path.exists():
        return FAMILIES[weights.kind(path)]
    if not on_hub(spec):
        return None  # resolve_weights says it is missing
    repo_id = parse_hub_spec(_unabbreviated(spec))[0]
    return FAMILIES[REPO_FAMILIES[repo_id]] if repo_id in REPO_FAMILIES else None


def on_hub(spec: str) -> bool:
    """Whether weights given as `spec` (a path, a Hub id or a short name) come from the Hub."""
    return not is_local_path(_unabbreviated(spec))


def owner(preset_name: str) -> Family | None:
    """The family whose tuned row a preset is, or None (rule rows and baselines fit any)."""
    return next((f for f in FAMILIES.values() if preset_name in f.tuned_presets.values()), None)


def resolve_weights(
    spec: str, dtype: torch.dtype = torch.float32, *, bundled_vae: bool = True, what: str = "weights"
) -> Path:
    """A local file or folder as it is; a short name (sdxl, dreamshaper-xl, ...) or a Hub id
    (org/name[@rev][/file]) through the Hugging Face cache. A repo without a file name means its
    known single file (SD 1.5's v1-5-pruned-emaonly, SDXL base's sd_xl_base_1.0, ...), else the
    diffusers folder in it, of which only the files `weights.load` reads into `dtype` are fetched.
    `what` names the input that gave `spec` (weights, vae) in a refusal."""
    spec = _unabbreviated(spec)
    if is_local_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise safeio.InputError(
                f"{{{what}}} {{spec}} not found: give a path to a .safetensors file or diffusers folder, a "
                "Hub id such as {repo}, or a short name: {names}",
                spec=spec,
                repo=SD15_REPO,
                names=", ".join(SHORT_NAMES),
            )
        return path
    repo_id, filename, revision = parse_hub_spec(spec)
    filename = filename or SINGLE_FILES.get(repo_id)
    if filename is None:
        return weights.fetch_folder(repo_id, revision, dtype, bundled_vae=bundled_vae)
    return hub_file(repo_id, filename, revision)


def resolve_file(spec: str, kind: str, family: Family) -> Path:
    """A single file (a LoRA, a U-Net) given as a local path, a short name (weights.catalog.DISTILLED_FILES)
    or a Hub id org/name/file, the Hub's through the Hugging Face cache. A short name of another kind,
    or made for another family than the weights', is refused before it is fetched. `kind` is the
    input that gave it: lora or unet."""
    made_for = None if Path(spec).expanduser().exists() else DISTILLED_FILES.get(spec)
    if made_for is not None:
        if made_for.kind != kind:
            raise safeio.InputError(
                f"{{{kind}}} {{spec}} is not a {kind} file; give it as {{{made_for.kind}}}", spec=spec
            )
        if made_for.family != family.name:
            others = [n for n, e in DISTILLED_FILES.items() if e.family == family.name and e.kind == kind]
            raise safeio.InputError(
                f"{{{kind}}} {{spec}} is made for {{made_for}} models, but the weights are {{family}}: use "
                "one made for them ({others})",
                spec=spec,
                made_for=FAMILIES[made_for.family].label,
                family=family.label,
                others=", ".join(others),
            )
        spec = made_for.spec
    if is_local_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise safeio.InputError(
                f"{{{kind}}} {{spec}}: no such file; give a path to a .safetensors file, a Hub id "
                "org/name/file.safetensors or a short name: {names}",
                spec=spec,
                names=", ".join(distilled_names(kind)),
            )
        return path
    repo_id, filename, revision = parse_hub_spec(spec)
    filename = filename or SINGLE_FILES.get(repo_id)
    if filename is None:
        raise safeio.InputError(
            f"{{{kind}}} {{spec}} names a Hub repo but no file in it: write org/name/FILE", spec=spec
        )
    return hub_file(repo_id, filename, revision)


def model_name(path: Path) -> str:
    """The display name of a set of weights: the file's stem or the folder's name."""
    return path.resolve().name if path.is_dir() else path.stem


def parse_device(spec: str | None) -> torch.device:
    """The device as a torch.device (default cuda if there is one), refused if this machine lacks it."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        reason = safeio.reason(err)
        raise safeio.InputError(
            "{device} {spec} is not a torch device ({reason}); use e.g. cpu or cuda", spec=spec, reason=reason
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device.type not in available:  # meta holds no data; xla, hpu, ... are not supported
        raise safeio.InputError(
            "{device} {spec} cannot run the models; use {available}",
            spec=spec,
            available=", ".join(available),
        )
    if not available[device.type]:
        raise safeio.InputError(
            "{device} {spec} is not available on this machine; use {device} cpu", spec=spec
        )
    return device


def default_dtype(device: torch.device) -> str:
    """bfloat16 on CUDA (float16's range without its overflows, at the same speed on Ampere and
    later), float16 on other GPUs, float32 on the CPU. A replayed image's stored dtype wins over it."""
    return {"cpu": "float32", "cuda": "bfloat16"}.get(device.type, "float16")


def compile_model(sd: weights.StableDiffusion) -> None:
    """torch.compile the U-Net and the VAE decoder in place: one graph each, no graph breaks
    (tests/model/test_unet.py, tests/pipeline/test_prepared.py); the decoder's non-finite retry stays
    outside, in `vae.decode`."""
    sd.unet.compile()
    sd.vae.decoder.compile()
