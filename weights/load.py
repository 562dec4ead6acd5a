"""Official SD 1.x and SDXL checkpoints into this project's models: `weights.load(path)`.

Layouts read (docs/model-facts.md sections 1-4, 7, 8):

- an LDM / sgm single file `*.safetensors`: `model.diffusion_model.*` (U-Net), `first_stage_model.*`
  (VAE), the text encoder(s) under the family's prefixes (SD 1.x: `cond_stage_model.transformer.*`;
  SDXL: `conditioner.embedders.0.transformer.*` and `conditioner.embedders.1.model.*`, see
  weights/families.py), plus schedule buffers such as `alphas_cumprod`;
- a diffusers folder: `unet/`, `vae/`, `text_encoder/` (SDXL: and `text_encoder_2/`), weights and
  config.json each, optionally `tokenizer/` (`tokenizer_2/`) and `scheduler/scheduler_config.json`;
- a separate VAE (`vae=`, such as SDXL's fp16-fix VAE): a single file in either key layout, or a
  diffusers VAE folder; it replaces the bundled one, which is then not read.

Each file key fills its parameters by the rules of its layout (weights/keymaps.py), so one loader
reads every layout. Everything that can be checked from the headers and configs is checked before a
tensor is read: file integrity, model kind, missing, unexpected and mis-shaped tensors, and the
widths of the models against each other. Then the modules, built on the `meta` device, receive the
file's tensors one at a time (weights/checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import safeio
from model import SizeConditioning
from model.conditioning import Cond, Conditioner
from model.unet import UNet
from schedule import DiscreteSchedule
from text_encoder import CLIPTextModel, Tokenizer
from text_encoder.clip import ACTIVATIONS
from text_encoder.tokenizer import build_bpe
from vae import AutoencoderKL
from weights import detect, keymaps
from weights.checkpoint import (
    Header,
    assign,
    empty_modules,
    read_header,
    read_tensors,
    refuse_pickle,
    unloaded,
)
from weights.errors import WeightsError
from weights.families import FAMILIES, UNET_PREFIX, VAE_PREFIX, Family
from weights.hub import NotOnHub, hub_file, hub_folder
from weights.hub_spec import is_local_path

MODULES = {"unet": UNet, "vae": AutoencoderKL}  # the text encoders: CLIPTextModel
WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}  # else "model"
HALF = (torch.float16, torch.bfloat16)
SHOWN = 5  # key names quoted in an error message


@dataclass
class StableDiffusion:
    """A loaded SD model: every module in eval mode, frozen, on one device; the VAE may have its own
    dtype. SDXL (`kind` "sdxl") has a second tokenizer and text encoder (OpenCLIP bigG)."""

    kind: str  # a name of weights.FAMILIES: "sd1" or "sdxl"
    tokenizer: Tokenizer
    text_encoder: CLIPTextModel
    unet: UNet
    vae: AutoencoderKL
    schedule: DiscreteSchedule
    source: Path
    tokenizer_2: Tokenizer | None = None
    text_encoder_2: CLIPTextModel | None = None
    vae_source: Path | None = None  # the separate VAE that replaced the bundled one

    @property
    def conditioner(self) -> Conditioner:
        """The family's conditioner over these tokenizers and text encoders (model/conditioning.py)."""
        tokenizers = [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]
        encoders = [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]
        return FAMILIES[self.kind].conditioner(tokenizers, encoders)

    def encode_prompt(self, prompts: str | list[str], size: SizeConditioning | None = None) -> Cond:
        """Prompts -> the U-Net's conditioning (model/conditioning.py). SD 1.x: the context [B, 77, 768].
        SDXL: {"context": [B, 77, 2048], "y": [B, 2816]}, with `size` (default (1024, 1024, 0, 0,
        1024, 1024))."""
        return self.conditioner(prompts, size)

    def null_condition(self, batch: int = 1, size: SizeConditioning | None = None) -> Cond:
        """The conditioning of no text at all (`Conditioner.null`)."""
        return self.conditioner.null(batch, size)


@dataclass
class _Part:
    """One model of the checkpoint: the file holding it and the parameters each of its keys fills."""

    component: str
    header: Header
    rules: keymaps.Rules  # file key -> targets
    shown_prefix: str | None  # missing names are quoted as prefix + name; None: the layout renames keys


def _part(component: str, header: Header, rules: keymaps.Rules, prefix: str = "") -> _Part:
    """A model under `prefix` in a file, by its layout's rules for the keys without the prefix."""
    renames = any(t.name != key for key, targets in rules.items() for t in targets)
    rules = {prefix + key: targets for key, targets in rules.items()}
    return _Part(component, header, rules, None if renames else prefix)


@dataclass
class _Read:
    """What the headers and configs of the weights (and of a separate VAE) say about their models."""

    family: Family
    parts: dict[str, _Part]
    configs: dict
    tokenizers: dict[str, Tokenizer]  # by text encoder
    schedule: DiscreteSchedule


@dataclass
class Checkpoint:
    """Weights read and checked from their headers and configs alone: their family, their noise schedule
    and every module built empty; `load` fills them."""

    family: Family
    schedule: DiscreteSchedule  # the file's own noise table, or SD's
    source: Path
    dtype: torch.dtype  # of every module but the VAE
    parts: dict[str, _Part]
    configs: dict
    tokenizers: dict[str, Tokenizer]
    modules: dict[str, nn.Module]  # on the meta device

    def load(
        self,
        device: str | torch.device = "cpu",
        *,
        vae: str | Path | None = None,
        vae_dtype: torch.dtype | None = None,
        unet: UNet | None = None,
    ) -> StableDiffusion:
        """The model, every tensor read into its dtype on `device`; `vae` (a separate VAE, read only when
        the checkpoint was read without its bundled one) and `vae_dtype` (default the model's) as `load`;
        `unet` (weights.unet_file.load's) replaces the checkpoint's, whose tensors are then not read."""
        vae_dtype = self.dtype if vae_dtype is None else vae_dtype
        _check_dtype("vae_dtype", vae_dtype)
        if (vae is None) != ("vae" in self.parts):
            raise ValueError("pass a separate vae exactly when the checkpoint was read without its own")
        parts, modules, vae_source = dict(self.parts), dict(self.modules), None
        if vae is not None:
            vae_source = _existing(vae)
            parts["vae"], config = _separate_vae(vae_source, self.family, vae_dtype)
            with empty_modules():
                modules["vae"] = AutoencoderKL(config)
            _check_tensors(parts["vae"], modules["vae"], self.family)
        if unet is not None:
            del parts["unet"]
            modules["unet"] = unet
        dtypes = {c: vae_dtype if c == "vae" else self.dtype for c in modules}
        _fill(list(parts.values()), modules, dtypes, torch.device(device), self.family)
        return StableDiffusion(
            self.family.name,
            self.tokenizers["text_encoder"],
            modules["text_encoder"],
            modules["unet"],
            modules["vae"],
            self.schedule,
            self.source,
            self.tokenizers.get("text_encoder_2"),
            modules.get("text_encoder_2"),
            vae_source,
        )


def kind(path: str | Path) -> str:
    """The kind, "sd1" or "sdxl", that `load(path)` would load, read off the file's header or the folder's
    config.json files alone (no tensor is read). Raises WeightsError as `load` does for other models."""
    source = _existing(path)
    if source.is_dir():
        return _folder_kind(source).name
    return detect.single_file_kind(read_header(source).shapes(), source).name


def read_checkpoint(
    path: str | Path, dtype: torch.dtype = torch.float32, *, bundled_vae: bool = True
) -> Checkpoint:
    """Everything `load` checks before a tensor is read, from the headers and configs: the family, the
    noise schedule, missing, unexpected and mis-shaped tensors, the widths of the models against each
    other. Without `bundled_vae` the weights' own VAE is not read (a separate one replaces it)."""
    _check_dtype("dtype", dtype)
    source = _existing(path)
    if source.is_dir():
        read = _diffusers_folder(source, dtype, bundled_vae)
    else:
        read = _single_file(source, bundled_vae)
    problem = read.family.widths_problem(read.configs)
    if problem:
        raise WeightsError(f"{source} mixes models: {problem}")
    _check_tokenizers(read, source)
    with empty_modules():
        modules = {c: MODULES.get(c, CLIPTextModel)(read.configs[c]) for c in read.parts}
    for part in read.parts.values():
        _check_tensors(part, modules[part.component], read.family)
    return Checkpoint(
        read.family, read.schedule, source, dtype, read.parts, read.configs, read.tokenizers, modules
    )


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    vae: str | Path | None = None,
    vae_dtype: torch.dtype | None = None,
) -> StableDiffusion:
    """Load an SD 1.x or SDXL checkpoint: a single `.safetensors` file or a diffusers folder.

    `vae`: a separate VAE file or folder to use instead of the bundled one; `vae_dtype`: the VAE's
    dtype (default `dtype`). Floating tensors are converted to their dtype one at a time as they are
    read; on the CPU, tensors already in it are mapped from the file instead (copy-on-write), so
    replace a loaded file by renaming a new one into place, never by overwriting it in use.

    In a diffusers folder with both `*.safetensors` and `*.fp16.safetensors` weights, float32 (or
    float64) loads the full-precision files and float16/bfloat16 the `.fp16` ones; when only one of
    them exists, it is used.
    Raises WeightsError with a one-line message when a path is missing, not a safetensors SD 1.x or
    SDXL checkpoint, corrupt, or does not match the architecture inferred from its shapes.
    """
    checkpoint = read_checkpoint(path, dtype, bundled_vae=vae is None)
    return checkpoint.load(device, vae=vae, vae_dtype=vae_dtype)


def _check_dtype(what: str, value: object) -> None:
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(f"{what} must be a floating torch.dtype such as torch.float16, got {value!r}")


def _existing(path: str | Path) -> Path:
    source = Path(path).expanduser()
    if not source.exists():
        hint = "" if is_local_path(str(path)) else "; for a Hub id, fetch it first with weights.hub_file"
        raise WeightsError(f"{source} does not exist: pass a .safetensors file or a diffusers folder{hint}")
    return source


# --- single files ---------------------------------------------------------------------------------------


def _single_file(path: Path, bundled_vae: bool) -> _Read:
    header = read_header(path)
    family = detect.single_file_kind(header.shapes(), path)
    prefixes = family.prefixes()
    keys: dict[str, list[str]] = {component: [] for component in prefixes}
    stray = []
    for key in header.tensors:
        if keymaps.ignored(key):
            continue
        component = next((c for c, prefix in prefixes.items() if key.startswith(prefix)), None)
        if component is None:
            stray.append(key)
        else:
            keys[component].append(key.removeprefix(prefixes[component]))
    if stray:
        raise WeightsError(
            f"{path} has {_count(stray, 'unexpected key')} outside the U-Net, VAE and text "
            f"encoder{'s' if len(family.text_encoders) > 1 else ''}: {_first(stray)}; it is not a plain "
            f"{family.label} checkpoint"
        )
    layouts = {"unet": keymaps.ldm_unet, "vae": keymaps.ldm_vae}
    layouts.update({t.component: t.layout for t in family.text_encoders})
    wanted = [c for c in prefixes if bundled_vae or c != "vae"]
    parts = {}
    for component in wanted:
        prefix = prefixes[component]
        if not keys[component]:
            raise WeightsError(
                f"{path} has no {family.label_of(component)} (no key starts with {prefix}); "
                f"pass a complete {family.label} checkpoint"
            )
        parts[component] = _part(component, header, layouts[component](keys[component]), prefix)
    shapes = {c: _shapes(part) for c, part in parts.items()}
    detect.refuse_other_unets(shapes["unet"], path)
    with _naming(path):
        configs = {"unet": detect.unet_config(shapes["unet"], family.unet_heads)}
        if bundled_vae:
            configs["vae"] = detect.vae_config(shapes["vae"], family.latent_scale)
        for text in family.text_encoders:
            configs[text.component] = detect.clip_config(shapes[text.component], activation=text.activation)
    tokenizers = {t.component: Tokenizer.sd1(t.pad_id) for t in family.text_encoders}
    return _Read(family, parts, configs, tokenizers, _file_schedule(header))


def _file_schedule(header: Header) -> DiscreteSchedule:
    """The file's `alphas_cumprod` buffer when it has one, else SD's standard schedule."""
    info = header.tensors.get("alphas_cumprod")
    if info is None:
        return DiscreteSchedule.sd()
    if info.shape != (detect.TRAINING_STEPS,) or not info.dtype.is_floating_point:
        raise WeightsError(
            f"{header.path}: its alphas_cumprod is {str(info.dtype).removeprefix('torch.')} of shape "
            f"{list(info.shape)}, not the {detect.TRAINING_STEPS} floats of SD's training table "
            "(docs/model-facts.md section 6); the file is corrupt or holds another model"
        )
    [(_, alphas_cumprod)] = read_tensors(
        header.path, [("alphas_cumprod", info)], torch.float64, stamp=header.stamp
    )
    try:
        return DiscreteSchedule(alphas_cumprod)
    except ValueError as error:
        raise WeightsError(f"{header.path}: its alphas_cumprod is not a noise schedule ({error})") from None


# --- diffusers folders ----------------------------------------------------------------------------------


def _folder_kind(folder: Path) -> Family:
    configs = {
        c: _json(folder / c / "config.json") for c in ("unet", "text_encoder") if (folder / c).is_dir()
    }
    return detect.folder_kind(configs, (folder / "text_encoder_2").is_dir(), folder)


def _diffusers_folder(folder: Path, dtype: torch.dtype, bundled_vae: bool) -> _Read:
    family = _folder_kind(folder)
    texts = {t.component: t for t in family.text_encoders}
    components = ["unet", *(["vae"] if bundled_vae else []), *texts]
    configs_json = {c: _json(folder / c / "config.json") for c in components}
    headers = {c: read_header(_weights_file(folder, c, dtype)) for c in components}
    layouts = {"unet": keymaps.diffusers_unet, "vae": keymaps.diffusers_vae}
    parts = {c: _part(c, headers[c], layouts.get(c, keymaps.hf_text)(_kept(headers[c]))) for c in components}
    shapes = {c: _shapes(part) for c, part in parts.items()}
    detect.refuse_other_unets(shapes["unet"], folder)
    with _naming(folder):
        configs = {"unet": detect.unet_config(shapes["unet"], detect.unet_heads(configs_json["unet"]))}
        if bundled_vae:
            scale = _scaling_factor(folder / "vae", configs_json["vae"], family)
            configs["vae"] = detect.vae_config(shapes["vae"], scale)
        for component, text in texts.items():
            config, path = configs_json[component], folder / component / "config.json"
            configs[component] = detect.clip_config(
                shapes[component],
                _setting(config, path, "num_attention_heads", None, _head_count),
                _setting(config, path, "hidden_act", text.activation, _activation),
                _setting(config, path, "layer_norm_eps", 1e-5, _positive),
            )
    scheduler = folder / "scheduler" / "scheduler_config.json"
    schedule = DiscreteSchedule.sd()
    if scheduler.exists():
        schedule = detect.schedule_from_config(_json(scheduler), scheduler)
    tokenizers = {c: _folder_tokenizer(folder / t.tokenizer, t.pad_id) for c, t in texts.items()}
    return _Read(family, parts, configs, tokenizers, schedule)


def _kept(header: Header) -> list[str]:
    return [key for key in header.tensors if not keymaps.ignored(key)]


def folder_files(
    kind: str, dtype: torch.dtype, bundled_vae: bool = True
) -> list[tuple[tuple[str, ...], bool]]:
    """The files `load` reads from a diffusers folder of `kind` into `dtype`, as `hub.hub_folder` takes
    them: each entry the alternatives in the order `load` prefers them (the weights' precisions) and
    whether one of them must exist (the tokenizers and the scheduler config may be missing)."""
    texts = FAMILIES[kind].text_encoders
    entries = []
    for component in ("unet", *(["vae"] if bundled_vae else []), *(t.component for t in texts)):
        stem = f"{component}/{WEIGHT_STEMS.get(component, 'model')}"
        entries += [((f"{component}/config.json",), True), (_variants(stem, dtype), True)]
    for text in texts:
        entries += [((f"{text.tokenizer}/{name}",), False) for name in ("vocab.json", "merges.txt")]
    return [*entries, (("scheduler/scheduler_config.json",), False)]


def fetch_folder(
    repo_id: str, revision: str = "main", dtype: torch.dtype = torch.float32, *, bundled_vae: bool = True
) -> Path:
    """Download exactly the files `load(folder, dtype=dtype)` reads from a diffusers folder repo into
    the Hugging Face cache (`hub.hub_folder`: resumable, sha256-checked); returns the snapshot folder.
    The kind is read off unet/config.json first, and every file comes from that file's commit."""
    try:
        config = hub_file(repo_id, "unet/config.json", revision)
    except NotOnHub:
        raise NotOnHub(
            f"{repo_id} (revision {revision}) has no unet/config.json, so it is not a diffusers folder: "
            f"name its weights file, {repo_id}/FILE.safetensors"
        ) from None
    commit = config.parent.parent.name
    family = detect.folder_kind({"unet": _json(config)}, False, repo_id)
    return hub_folder(repo_id, folder_files(family.name, dtype, bundled_vae), commit)


def _variants(stem: str, dtype: torch.dtype) -> tuple[str, str]:
    """`{stem}.safetensors` and `{stem}.fp16.safetensors`, the one matching dtype first."""
    full, half = f"{stem}.safetensors", f"{stem}.fp16.safetensors"
    return (half, full) if dtype in HALF else (full, half)


def _weights_file(folder: Path, component: str, dtype: torch.dtype) -> Path:
    return _variant(folder / component / WEIGHT_STEMS.get(component, "model"), dtype, folder)


def _variant(stem: Path, dtype: torch.dtype, folder: Path) -> Path:
    """The weights file of `stem` that `_variants` prefers; a missing one names the full-precision file."""
    for name in _variants(stem.name, dtype):
        if (stem.parent / name).is_file():
            return stem.parent / name
    full = stem.with_name(stem.name + ".safetensors")
    for pickle in (stem.with_name(stem.name + ".bin"), stem.with_name(stem.name + ".fp16.bin")):
        if pickle.is_file():
            refuse_pickle(pickle)
    singles = sorted(folder.glob("*.safetensors"))
    hint = f"; to load the single file in it, pass {singles[0]}" if len(singles) == 1 else ""
    raise WeightsError(f"{folder} is not a complete diffusers folder: {_missing(folder, full)}{hint}")


def _check_tokenizers(read: _Read, source: Path) -> None:
    """Refuse a tokenizer whose ids do not fit its text encoder's embedding table, naming its vocab.json
    (or the file, for the vendored vocabulary)."""
    for component, tokenizer in read.tokenizers.items():
        problem = tokenizer.id_problem(read.configs[component].vocab_size)
        if problem:
            text = next(t for t in read.family.text_encoders if t.component == component)
            vocab = source / text.tokenizer / "vocab.json" if source.is_dir() else None
            where = (
                vocab if vocab is not None and vocab.is_file() else f"{source}: the vendored CLIP vocabulary"
            )
            raise WeightsError(f"{where}: {problem}; re-download the tokenizer folder or the model")


def _folder_tokenizer(folder: Path, pad_id: int) -> Tokenizer:
    """vocab.json + merges.txt in `folder`; without the folder, the vendored CLIP vocabulary."""
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        fix = "re-download the tokenizer folder"
        tokens = safeio.read_json(vocab, fix, WeightsError)
        if not isinstance(tokens, dict) or not all(type(i) is int and i >= 0 for i in tokens.values()):
            raise WeightsError(f"{vocab} is not a vocabulary (an object of token: id >= 0); {fix}")
        try:
            lines = safeio.read_text(merges).split("\n")
        except (OSError, UnicodeDecodeError) as error:
            raise WeightsError(f"cannot read {merges}: {safeio.reason(error)}; {fix}") from None
        pairs = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        wrong = next((n for n, pair in enumerate(pairs) if len(pair) != 2), None)
        if wrong is not None:
            raise WeightsError(f"{merges}: merge {wrong + 1} is not two tokens separated by a space; {fix}")
        try:
            return Tokenizer(build_bpe(tokens, pairs), pad_id)
        except Exception as error:  # the tokenizers library raises plain Exceptions on a bad vocabulary
            raise WeightsError(f"{vocab} is not a CLIP vocabulary ({safeio.reason(error)}); {fix}") from None
    if vocab.is_file() or merges.is_file():
        missing = merges if vocab.is_file() else vocab
        raise WeightsError(
            f"{missing} is missing (its partner is there); restore it or delete {folder.name}/"
        )
    return Tokenizer.sd1(pad_id)


# --- a separate VAE -------------------------------------------------------------------------------------


def _separate_vae(source: Path, family: Family, dtype: torch.dtype) -> tuple[_Part, object]:
    """A VAE file (LDM keys, with or without `first_stage_model.`, or diffusers keys) or a diffusers
    VAE folder (config.json and weights), with its config; the latent scale is the folder's, else
    the family's."""
    scaling_factor = family.latent_scale
    if source.is_dir():
        scaling_factor = _scaling_factor(source, _json(source / "config.json"), family)
        header = read_header(_variant(source / WEIGHT_STEMS["vae"], dtype, source))
    else:
        header = read_header(source)
    keys = _kept(header)
    prefix = VAE_PREFIX if any(key.startswith(VAE_PREFIX) for key in keys) else ""
    others = [key for key in keys if not key.startswith(prefix)]
    if others or any(key.startswith(UNET_PREFIX) for key in keys):
        raise WeightsError(
            f"{source} holds more than a VAE ({_first(others or keys)}); pass a VAE file or folder as "
            "the separate VAE"
        )
    names = [key.removeprefix(prefix) for key in keys]
    layout = keymaps.diffusers_vae if keymaps.is_diffusers_vae(names) else keymaps.ldm_vae
    part = _part("vae", header, layout(names), prefix)
    with _naming(source):
        return part, detect.vae_config(_shapes(part), scaling_factor)


# --- checks and filling ---------------------------------------------------------------------------------


@contextmanager
def _naming(source: Path) -> Iterator[None]:
    """Prefix the errors of config inference with the file or folder they are about."""
    try:
        yield
    except WeightsError as error:
        raise WeightsError(f"{source}: {error}") from None


def _setting(config: dict, path: Path, key: str, default, check):
    """`config[key]` (`default` when absent or null), checked by `check`, which raises ValueError."""
    value = config.get(key)
    if value is None:
        return default
    try:
        check(value)
    except ValueError as error:
        raise WeightsError(f"{path}: {key} {error}; fix it or re-download the file") from None
    return value


def _positive(value) -> None:
    safeio.number(value, 0, strict=True)


def _head_count(value) -> None:
    safeio.integer(value, 1, detect.MAX_HEADS)


def _activation(value) -> None:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"must be one of {', '.join(sorted(ACTIVATIONS))}, got {safeio.short(value)}")


# Published VAEs scale latents by 0.13025 (SDXL) to 1.5305 (SD3) so that they have unit variance; a
# factor far outside that range (1e308, 1e-9) makes latents the U-Net never saw and a wrong image.
LATENT_SCALE_RANGE = (0.01, 10.0)


def _latent_scale(value) -> None:
    low, high = LATENT_SCALE_RANGE
    if not low <= safeio.number(value, 0, strict=True) <= high:
        raise ValueError(
            f"must be in [{low:g}, {high:g}] (SD 1.x uses 0.18215, SDXL 0.13025), got {safeio.short(value)}"
        )


def _scaling_factor(folder: Path, config: dict, family: Family) -> float:
    """A VAE config's latent scale (the family's when absent): a finite number in LATENT_SCALE_RANGE."""
    return _setting(config, folder / "config.json", "scaling_factor", family.latent_scale, _latent_scale)


def _missing(folder: Path, path: Path) -> str:
    return f"{path.relative_to(folder)} is missing"


def _json(path: Path) -> dict:
    """A config file; a missing one means an incomplete folder."""
    if not path.is_file():
        raise WeightsError(
            f"{path.parent.parent} is not a complete diffusers folder: {_missing(path.parent.parent, path)}"
        )
    config = safeio.read_json(path, "re-download it", WeightsError)
    if not isinstance(config, dict):
        raise WeightsError(f"{path} is not a JSON object; re-download it")
    return config


def _shapes(part: _Part) -> dict[str, tuple[int, ...]]:
    """Parameter name -> the shape its file tensor gives it; a tensor that cannot be cut is refused."""
    shapes = {}
    for key, targets in part.rules.items():
        got = part.header.tensors[key].shape
        for target in targets:
            shape = target.shape(got)
            if shape is None:
                raise WeightsError(
                    f"{part.header.path}: {key} has shape {list(got)}, which cannot fill {target.name} "
                    f"({target.how()}); the file is corrupt or holds another model"
                )
            shapes[target.name] = shape
    return shapes


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _first(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def _check_tensors(part: _Part, module: nn.Module, family: Family) -> None:
    """Missing, unexpected, doubly filled and mis-shaped tensors, from the header alone."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    source, label = part.header.path, f"{family.label} {family.label_of(part.component)}"
    filled: dict[str, str] = {}
    for key, targets in part.rules.items():
        for target in targets:
            if target.name in filled:
                raise WeightsError(
                    f"{source}: {key} and {filled[target.name]} both fill {target.name}; the file mixes "
                    "two layouts of one model"
                )
            filled[target.name] = key
    missing = sorted(expected.keys() - filled.keys())
    unexpected = sorted({key for name, key in filled.items() if name not in expected})
    if missing or unexpected:
        found = []
        if missing:
            if part.shown_prefix is None:  # the layout renames: name the parameters
                found.append(f"{_count(missing, 'parameter')} no key fills ({_first(missing)})")
            else:
                shown = [part.shown_prefix + name for name in missing]
                found.append(f"{_count(missing, 'missing key')} ({_first(shown)})")
        if unexpected:
            found.append(f"{_count(unexpected, 'unexpected key')} ({_first(unexpected)})")
        raise WeightsError(
            f"{source} does not match the {label} inferred from its shapes: "
            f"{' and '.join(found)}; the file is incomplete or holds another model"
        )
    floating = {name for name, t in module.state_dict().items() if t.dtype.is_floating_point}
    for key, targets in part.rules.items():
        stored = part.header.tensors[key].dtype
        if not stored.is_floating_point and any(target.name in floating for target in targets):
            raise WeightsError(
                f"{source}: {key} is stored as {str(stored).removeprefix('torch.')}, but the {label}'s "
                "weights are floating point (F32, F16, BF16); the file is corrupt or was converted wrongly"
            )
        for target in targets:
            got, shape = target.shape(part.header.tensors[key].shape), expected[target.name]
            if got != shape:
                filled_as = "" if target.how() == "as it is" else f" ({target.how()}: {list(got)})"
                raise WeightsError(
                    f"{source}: {key} has shape {list(part.header.tensors[key].shape)}{filled_as} but the "
                    f"{label} inferred from the file needs {list(shape)}; the file is corrupt or mixes models"
                )


def _fill(
    parts: list[_Part],
    modules: dict[str, nn.Module],
    dtypes: dict[str, torch.dtype],
    device: torch.device,
    family: Family,
) -> None:
    """Read each file once per dtype, in file order, placing every tensor as soon as it is converted."""
    groups: dict[tuple[Path, torch.dtype], list[_Part]] = {}
    for part in parts:
        groups.setdefault((part.header.path, dtypes[part.component]), []).append(part)
    for (path, dtype), group in groups.items():
        targets = {key: (modules[p.component], rule) for p in group for key, rule in p.rules.items()}
        header = group[0].header
        wanted = [(key, header.tensors[key]) for key in targets]
        for key, tensor in read_tensors(path, wanted, dtype, device, header.stamp):
            module, rule = targets[key]
            for target in rule:
                assign(module, target.name, target.take(tensor))
    for component, module in modules.items():
        left = unloaded(module)
        if left:
            raise RuntimeError(
                f"the {family.label_of(component)} has tensors outside its state dict, never loaded: "
                f"{_first(left)}"
            )
        module.eval()
