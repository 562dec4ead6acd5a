"""weights.load: both official layouts into this project's models, equal to the reference implementations;
the schedule, tokenizer and ignore rules; and one clear refusal for every kind of bad input.

Parity tolerance: max |ours - reference| / max |reference| <= 1e-5 in float32. The checkpoints hold the
references' own weights (rounded to float16 when drawn, so float16 and float32 files agree exactly);
both sides run the same float32 math in another order (SDPA vs eager attention, channels-last convs),
measured at 1e-7 to 2e-6. A misplaced, transposed or missing tensor moves the output by order 1.
"""

from __future__ import annotations

import json
import pickle
import resource
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

import weights
from model.unet import UNet, UNetConfig
from schedule import DiscreteSchedule
from tests.checkpoints import (
    TINY_TEXT,
    reference_models,
    save_variant,
    sd15_alphas_cumprod,
    single_file_tensors,
    write_checkpoint,
)
from tests.helpers import mapped_shapes, refused, rel_err, shapes_of
from tests.reference import unet as ref_unet
from tests.reference import vae as ref_vae
from tests.reference.vae import with_deprecated_attention_names
from text_encoder import CLIPTextConfig, CLIPTextModel, Tokenizer
from vae import AutoencoderKL as VAEAutoencoderKL
from vae import VAEConfig
from weights import detect, keymaps

TOL = 1e-5
PROMPTS = ["a photo of a cat", "", "An astronaut riding a horse on Mars, highly detailed"]


@pytest.fixture(scope="module")
def refs():
    return reference_models()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {layout: write_checkpoint(root, layout) for layout in ("single", "diffusers")}


@pytest.fixture(scope="module", params=["single", "diffusers"])
def sd(request, files):
    return weights.load(files[request.param])


# --- parity with the references ---------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 16, 16), (3, 16, 24)])
def test_unet_eps_equals_diffusers(sd, refs, batch, height, width):
    x = torch.randn(batch, 4, height, width)
    t = torch.rand(batch) * 999
    context = torch.randn(batch, 77, 64)
    with torch.no_grad():
        assert rel_err(sd.unet(x, t, context), refs.unet(x, t, encoder_hidden_states=context).sample) <= TOL


@pytest.mark.parametrize("batch", [1, 3])
def test_text_encoder_hidden_states_equal_transformers(sd, refs, batch):
    ids = sd.tokenizer(PROMPTS[:batch])
    assert ids.shape == (batch, 77) and ids.dtype == torch.long
    with torch.no_grad():
        expected = refs.text_encoder(ids).last_hidden_state
        assert rel_err(sd.text_encoder(ids), expected) <= TOL
    assert rel_err(sd.encode_prompt(PROMPTS[:batch]), expected) <= TOL


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (3, 8, 12)])
def test_vae_decode_and_encode_equal_diffusers(sd, refs, batch, height, width):
    z = torch.randn(batch, 4, height, width)
    image = torch.rand(batch, 3, 8 * height, 8 * width) * 2 - 1
    with torch.no_grad():
        assert rel_err(sd.vae.decode(z), refs.vae.decode(z).sample) <= TOL
        assert rel_err(sd.vae.encode(image), refs.vae.encode(image).latent_dist.mean) <= TOL
    assert sd.vae.scaling_factor == 0.18215


def test_configurations_are_inferred_from_the_shapes(sd):
    assert sd.kind == "sd1"
    assert sd.unet.config == ref_unet.unet_config(ref_unet.sd15_config(ref_unet.SMALL, 64))
    assert sd.vae.config == ref_vae.vae_config(ref_vae.SMALL)
    assert sd.text_encoder.config == CLIPTextConfig(
        hidden_size=64, intermediate_size=128, layers=TINY_TEXT["num_hidden_layers"], heads=1
    )


def test_modules_are_frozen_in_eval_mode_on_the_device_in_the_dtype(sd, files):
    for module in (sd.unet, sd.vae, sd.text_encoder):
        assert not module.training
        for tensor in [*module.parameters(), *module.buffers()]:
            assert not tensor.requires_grad and tensor.dtype == torch.float32 and tensor.device.type == "cpu"
    assert sd.source in files.values()


def test_full_size_layouts_map_onto_the_sd1_modules_and_give_the_sd1_configs():
    """Shapes only (meta tensors): the diffusers names of SD 1.5 map onto exactly our parameters, and the
    configurations inferred from the shapes are the official ones."""
    with torch.device("meta"):
        diffusers_unet = UNet2DConditionModel(**ref_unet.sd15_config(ref_unet.FULL))
        diffusers_vae = AutoencoderKL(**ref_vae.diffusers_config(ref_vae.FULL))
        ours = {"unet": UNet(UNetConfig.sd1()), "vae": VAEAutoencoderKL(VAEConfig.sd1())}
        text = CLIPTextModel(CLIPTextConfig.sd1())
    for name, reference, layout in (
        ("unet", diffusers_unet, keymaps.diffusers_unet),
        ("vae", diffusers_vae, keymaps.diffusers_vae),  # its attention: diffusers Linear, LDM 1x1 conv
    ):
        assert mapped_shapes(layout, shapes_of(reference)) == shapes_of(ours[name])
    unet_shapes, vae_shapes, text_shapes = (shapes_of(m) for m in (ours["unet"], ours["vae"], text))
    assert detect.unet_config(unet_shapes) == UNetConfig.sd1()
    assert detect.unet_config(unet_shapes, detect.unet_heads(diffusers_unet.config)) == UNetConfig.sd1()
    assert detect.vae_config(vae_shapes) == VAEConfig.sd1()
    assert detect.clip_config(text_shapes) == CLIPTextConfig.sd1()


# --- dtypes and variants ------------------------------------------------------------------------------


def assert_weights_equal(sd, refs, dtype):
    """Every loaded tensor equals the reference's, converted to `dtype` (exactly: same rounding)."""
    pairs = [
        (sd.unet.state_dict(), ref_unet.ldm_state_dict(refs.unet)),
        (sd.vae.state_dict(), ref_vae.ldm_state_dict(refs.vae)),
        (sd.text_encoder.state_dict(), refs.text_encoder.state_dict()),
    ]
    for ours, theirs in pairs:
        assert ours.keys() == theirs.keys()
        for name, tensor in ours.items():
            assert tensor.dtype == dtype, name
            assert torch.equal(tensor, theirs[name].to(dtype)), name


@pytest.mark.parametrize(
    ("file_dtype", "dtype"), [(torch.float32, torch.float16), (torch.float16, torch.bfloat16)]
)
def test_loading_in_half_precision_converts_every_tensor(tmp_path, refs, file_dtype, dtype):
    sd = weights.load(write_checkpoint(tmp_path, "single", dtype=file_dtype), dtype=dtype)
    assert_weights_equal(sd, refs, dtype)
    with torch.no_grad():  # a half-precision forward agrees with the float32 reference to its precision
        x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64)
        t = torch.tensor([500.0])
        out = sd.unet(x.to(dtype), t, context.to(dtype))
        # bfloat16 keeps 8 mantissa bits: measured 2e-2 (float16: 2e-3)
        assert rel_err(out, refs.unet(x, t, encoder_hidden_states=context).sample) <= 5e-2


def test_fp16_diffusers_variant_loads_into_float32_exactly(tmp_path, refs):
    folder = write_checkpoint(tmp_path, "diffusers", dtype=torch.float16)
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert_weights_equal(weights.load(folder), refs, torch.float32)


def test_variant_matching_the_dtype_is_preferred(tmp_path, refs):
    """fp32 files hold seed 0, fp16 files seed 1: the dtype decides which set is read."""
    folder = write_checkpoint(tmp_path, "diffusers", seed=0)
    half = write_checkpoint(tmp_path, "diffusers", seed=1, dtype=torch.float16)
    for part in ("unet", "vae", "text_encoder"):
        for file in (half / part).glob("*.fp16.safetensors"):
            shutil.copy(file, folder / part / file.name)
    assert_weights_equal(weights.load(folder, dtype=torch.float32), refs, torch.float32)
    assert_weights_equal(weights.load(folder, dtype=torch.float16), reference_models(1), torch.float16)


def test_tensors_at_unaligned_offsets_load(tmp_path, files, refs):
    """One more byte of header puts every float32 tensor off its 4-byte alignment: those cannot be mapped
    as tensors and are read instead."""
    data = files["single"].read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "unaligned.safetensors"
    path.write_bytes(struct.pack("<Q", length + 1) + data[8 : 8 + length] + b" " + data[8 + length :])
    assert_weights_equal(weights.load(path), refs, torch.float32)


def test_changing_a_loaded_weight_leaves_the_file_alone(tmp_path, files):
    """Tensors in the file's dtype share its pages copy-on-write."""
    path = Path(shutil.copy(files["single"], tmp_path / "model.safetensors"))
    before = path.read_bytes()
    sd = weights.load(path)
    with torch.no_grad():
        for module in (sd.unet, sd.vae, sd.text_encoder):
            for parameter in module.parameters():
                parameter.add_(1)
    assert path.read_bytes() == before
    assert torch.equal(weights.load(path).unet.out[2].bias, sd.unet.out[2].bias - 1)


def test_a_non_floating_dtype_is_refused(files):
    with pytest.raises(ValueError, match=r"dtype must be a floating torch\.dtype"):
        weights.load(files["single"], dtype=torch.int8)


# --- schedule, tokenizer, ignore rules --------------------------------------------------------------


def test_schedule_comes_from_alphas_cumprod_in_the_file(tmp_path, refs, files):
    assert torch.equal(weights.load(files["single"]).schedule.alphas_cumprod, sd15_alphas_cumprod().double())
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # a different (DDPM "linear") table
    tensors = single_file_tensors(refs) | {"alphas_cumprod": torch.cumprod(1 - betas, 0).float()}
    save_file(tensors, tmp_path / "custom.safetensors")
    schedule = weights.load(tmp_path / "custom.safetensors").schedule
    assert torch.equal(schedule.alphas_cumprod, torch.cumprod(1 - betas, 0).float().double())


def test_schedule_defaults_to_sd_without_alphas_cumprod(tmp_path, refs):
    tensors = single_file_tensors(refs)
    del tensors["alphas_cumprod"]
    save_file(tensors, tmp_path / "no-schedule.safetensors")
    schedule = weights.load(tmp_path / "no-schedule.safetensors").schedule
    assert torch.equal(schedule.alphas_cumprod, DiscreteSchedule.sd().alphas_cumprod)


def copy_folder(files, tmp_path) -> Path:
    return Path(shutil.copytree(files["diffusers"], tmp_path / "sd"))


def test_schedule_comes_from_the_scheduler_config(tmp_path, files):
    folder = copy_folder(files, tmp_path)
    assert torch.equal(weights.load(folder).schedule.alphas_cumprod, DiscreteSchedule.sd().alphas_cumprod)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"beta_end": 0.02}))
    expected = DiscreteSchedule.sd(0.00085, 0.02, 1000).alphas_cumprod
    assert torch.equal(weights.load(folder).schedule.alphas_cumprod, expected)
    config_path.write_text(json.dumps(config | {"beta_schedule": "linear"}))
    linear = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64), 0)
    assert torch.equal(weights.load(folder).schedule.alphas_cumprod, linear)
    shutil.rmtree(folder / "scheduler")
    assert torch.equal(weights.load(folder).schedule.alphas_cumprod, DiscreteSchedule.sd().alphas_cumprod)


def test_tokenizer_comes_from_the_folder_or_the_vendored_vocabulary(tmp_path, files):
    folder = copy_folder(files, tmp_path)
    prompts = ["a photo of a cat", "hello, world! 123", "don't"]
    expected = Tokenizer.sd1()(prompts)
    assert torch.equal(weights.load(folder).tokenizer(prompts), expected)
    assert torch.equal(weights.load(files["single"]).tokenizer(prompts), expected)
    shutil.rmtree(folder / "tokenizer")
    assert torch.equal(weights.load(folder).tokenizer(prompts), expected)


def test_known_non_weight_keys_are_ignored(tmp_path, refs):
    tensors = single_file_tensors(refs)
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in tensors
    extra = {
        "betas": torch.rand(1000),
        "posterior_variance": torch.rand(1000),
        "sqrt_recipm1_alphas_cumprod": torch.rand(1000),
        "logvar": torch.zeros(1000),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
        "model_ema.diffusion_modelout2bias": torch.zeros(4),
        "denoiser.sigmas": torch.rand(1000),
    }
    save_file(tensors | extra, tmp_path / "with-extras.safetensors")
    assert_weights_equal(weights.load(tmp_path / "with-extras.safetensors"), refs, torch.float32)


def test_text_encoder_keys_without_text_model_load(tmp_path, refs):
    """Single files made with transformers < 4.22 name the CLIP tensors without `text_model.`."""
    prefix = "cond_stage_model.transformer."
    tensors = {k.replace(prefix + "text_model.", prefix): v for k, v in single_file_tensors(refs).items()}
    save_file(tensors, tmp_path / "old-clip.safetensors")
    assert_weights_equal(weights.load(tmp_path / "old-clip.safetensors"), refs, torch.float32)


def test_deprecated_vae_attention_names_load(tmp_path, files, refs):
    folder = copy_folder(files, tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    save_file(with_deprecated_attention_names(refs.vae.state_dict()), path)
    assert_weights_equal(weights.load(folder), refs, torch.float32)


# --- refusals -----------------------------------------------------------------------------------------


def test_a_missing_path_is_refused(tmp_path):
    message = refused(tmp_path / "nothing.safetensors", "does not exist")
    assert "nothing.safetensors" in message and "diffusers folder" in message


class _Touch:
    """Unpickling this creates `path`: proof that a file was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.pth", "model.bin", "model.safetensors"])
def test_pickles_and_zip_archives_are_refused_unopened(tmp_path, name):
    sentinel = tmp_path / "unpickled"
    path = tmp_path / "files" / name
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:  # torch.save's layout: a zip holding data.pkl
        archive.writestr("archive/data.pkl", pickle.dumps(_Touch(sentinel)))
    message = refused(path, "pickles can run code when loaded; convert it to .safetensors")
    assert str(path) in message
    plain = tmp_path / "files" / "plain.safetensors"
    plain.write_bytes(pickle.dumps(_Touch(sentinel)))
    refused(plain, "pickle or zip archive")
    assert not sentinel.exists()


def safetensors_bytes(
    entries, data: bytes, length: int | None = None, raw_header: bytes | None = None
) -> bytes:
    header = raw_header if raw_header is not None else json.dumps(entries).encode()
    return struct.pack("<Q", len(header) if length is None else length) + header + data


A = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
B = {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}
DATA = bytes(range(16))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(b"\x01\x02", "too few for a header", id="shorter-than-8-bytes"),
        pytest.param(
            safetensors_bytes({"a": A, "b": B}, DATA, length=10**6), "runs past the end", id="header-length"
        ),
        pytest.param(
            safetensors_bytes(None, DATA, raw_header=b"{not json}"), "not valid JSON", id="bad-json"
        ),
        pytest.param(safetensors_bytes(None, DATA, raw_header=b"[1, 2]"), "not an object", id="json-array"),
        pytest.param(safetensors_bytes({"a": A, "b": 5}, DATA), "is not {dtype, shape", id="bad-entry"),
        pytest.param(safetensors_bytes({"a": A, "b": B}, DATA[:12]), "truncated", id="truncated-data"),
        pytest.param(
            safetensors_bytes({"a": A, "b": B | {"shape": [2, 4], "data_offsets": [8, 24]}}, DATA),
            "ends at byte .* truncated",
            id="offsets-out-of-range",
        ),
        pytest.param(
            safetensors_bytes({"a": A, "b": B | {"data_offsets": [4, 12]}}, DATA), "overlap", id="overlapping"
        ),
        pytest.param(
            safetensors_bytes({"a": A, "b": B | {"data_offsets": [16, 8]}}, DATA),
            "run backwards",
            id="backwards",
        ),
        pytest.param(
            safetensors_bytes({"a": A | {"shape": [3]}, "b": B}, DATA), "needs 12 bytes", id="byte-count"
        ),
        pytest.param(
            safetensors_bytes({"a": A | {"dtype": "F17"}, "b": B}, DATA), "unknown dtype", id="dtype"
        ),
        pytest.param(
            safetensors_bytes({"a": A, "b": B | {"data_offsets": [10, 18]}}, DATA + b"xx"),
            "a hole",
            id="hole",
        ),
        pytest.param(
            safetensors_bytes({"a": A, "b": B}, DATA + b"xxxx"), "after the last tensor", id="trailing"
        ),
    ],
)
def test_corrupt_safetensors_files_are_refused_from_the_header(tmp_path, content, match):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    message = refused(path, match)
    assert message.startswith(f"{path} is not a valid safetensors file")


def test_the_crafted_base_file_is_valid(tmp_path):
    """The corrupt files above differ from this one only in what each test names."""
    path = tmp_path / "base.safetensors"
    path.write_bytes(safetensors_bytes({"a": A, "b": B}, DATA))
    refused(path, "does not look like a Stable Diffusion checkpoint")


def test_a_header_length_that_starts_like_a_pickle_is_not_taken_for_one(tmp_path):
    """Length 0x280 is stored as bytes 80 02 ..., a pickle's opening PROTO 2 opcode."""
    header = json.dumps({"a": A, "b": B}).encode().ljust(0x280)
    path = tmp_path / "base.safetensors"
    path.write_bytes(safetensors_bytes(None, DATA, raw_header=header))
    assert path.read_bytes()[:2] == b"\x80\x02"
    refused(path, "does not look like a Stable Diffusion checkpoint")


def header_only(tmp_path: Path, shapes: dict[str, list[int]]) -> Path:
    path = tmp_path / "keys.safetensors"
    save_file({name: torch.zeros(shape, dtype=torch.float16) for name, shape in shapes.items()}, path)
    return path


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (
            {
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [8, 1024],
                "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": [24, 8],
            },
            r"looks like Stable Diffusion 2\.x \(OpenCLIP .*\); only SD 1\.x and SDXL are supported",
        ),
        (
            {
                "model.diffusion_model.label_emb.0.0.weight": [8, 16],
                "conditioner.embedders.1.model.positional_embedding": [77, 8],
            },
            r"has no VAE \(no key starts with first_stage_model\.\); pass a complete SDXL checkpoint",
        ),
        (
            {"foo.weight": [2], "bar.bias": [2]},
            r"does not look like a Stable Diffusion checkpoint \(found keys like "
            r"bar\.bias, foo\.weight\)",
        ),
        ({"encoder.conv_in.weight": [2], "decoder.conv_in.weight": [2]}, "looks like a standalone VAE"),
        ({"lora_unet_down_blocks_0.lora_down.weight": [2]}, "looks like a LoRA"),
        ({"conv_in.weight": [2], "down_blocks.0.resnets.0.conv1.weight": [2]}, "diffusers U-Net file"),
    ],
    ids=["sd2", "incomplete-sdxl", "unknown", "vae", "lora", "diffusers-unet"],
)
def test_other_models_are_named_and_refused(tmp_path, shapes, match):
    refused(header_only(tmp_path, shapes), match)


UNET = "model.diffusion_model."


def test_sd2_width_cross_attention_is_refused(tmp_path, refs):
    key = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    refused(save_variant(tmp_path, refs, {key: torch.zeros(32, 1024)}), r"Stable Diffusion 2\.x \(1024-wide")


def test_an_inpainting_unet_is_named_and_refused(tmp_path, refs):
    path = save_variant(tmp_path, refs, {UNET + "input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)})
    refused(path, r"looks like an inpainting model \(9 U-Net input channels")


def test_a_missing_key_is_named(tmp_path, refs):
    message = refused(save_variant(tmp_path, refs, {UNET + "out.0.bias": None}), "1 missing key")
    assert "(model.diffusion_model.out.0.bias)" in message and "U-Net" in message


def test_a_missing_key_the_configuration_depends_on_is_named(tmp_path, refs):
    path = save_variant(tmp_path, refs, {UNET + "out.2.weight": None})
    refused(path, rf"^{path}: cannot infer the U-Net's configuration: its tensor out\.2\.weight is missing$")


def test_an_unexpected_key_is_named(tmp_path, refs):
    path = save_variant(tmp_path, refs, {UNET + "input_blocks.1.0.extra.weight": torch.zeros(2)})
    refused(path, r"1 unexpected key \(model\.diffusion_model\.input_blocks\.1\.0\.extra\.weight\)")
    path = save_variant(tmp_path, refs, {"embedding_manager.weight": torch.zeros(2)})
    refused(path, r"1 unexpected key outside the U-Net, VAE and text encoder: embedding_manager\.weight")


def test_a_wrong_shape_is_named_with_both_shapes(tmp_path, refs):
    key = UNET + "input_blocks.1.0.emb_layers.1.bias"
    path = save_variant(tmp_path, refs, {key: torch.zeros(33)})
    refused(path, rf"{key} has shape \[33\] but the SD 1\.x U-Net inferred from the file needs \[32\]")


def test_a_file_without_a_vae_is_refused(tmp_path, refs):
    tensors = {k: v for k, v in single_file_tensors(refs).items() if not k.startswith("first_stage_model.")}
    save_file(tensors, tmp_path / "no-vae.safetensors")
    refused(tmp_path / "no-vae.safetensors", r"has no VAE \(no key starts with first_stage_model\.\)")


@pytest.mark.parametrize(
    "missing",
    ["vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "unet/config.json"],
)
def test_a_folder_without_an_expected_file_names_it(tmp_path, files, missing):
    folder = copy_folder(files, tmp_path)
    (folder / missing).unlink()
    refused(folder, f"not a complete diffusers folder: {missing} is missing")


def test_a_folder_with_pickled_weights_is_refused(tmp_path, files):
    folder = copy_folder(files, tmp_path)
    weights_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights_file.rename(weights_file.with_suffix(".bin"))
    refused(folder, r"diffusion_pytorch_model\.bin is a PyTorch pickle .*pickles can run code")


def test_a_tokenizer_folder_with_one_file_is_refused(tmp_path, files):
    folder = copy_folder(files, tmp_path)
    (folder / "tokenizer" / "merges.txt").unlink()
    refused(folder, r"merges\.txt is missing \(its partner is there\)")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"cross_attention_dim": 1024}, r"looks like Stable Diffusion 2\.x"),
        # an SDXL U-Net config in a folder without SDXL's second text encoder
        ({"addition_embed_type": "text_time"}, "not a complete diffusers folder: text_encoder_2/config.json"),
    ],
)
def test_other_diffusers_folders_are_refused_from_their_configs(tmp_path, files, config, match):
    folder = copy_folder(files, tmp_path)
    path = folder / "unet" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    refused(folder, match)


def test_a_v_prediction_scheduler_is_refused(tmp_path, files):
    folder = copy_folder(files, tmp_path)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"prediction_type": "v_prediction"}))
    refused(folder, "predicts 'v_prediction'; only eps-prediction")


# --- full size ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_sd15_loads_with_the_official_configs_and_equals_the_references(tmp_path):
    """Random SD 1.5 at full size, written as a float16 single file and a float16 diffusers folder,
    loaded in float32. The references are freed before loading (peak about 6.5 GB)."""
    start = time.perf_counter()
    refs = reference_models(0, "full")
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([321.5]), torch.randn(1, 77, 768)
    z, image = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64) * 2 - 1
    ids = Tokenizer.sd1()(["a photo of an astronaut riding a horse"])
    with torch.no_grad():
        expected = {
            "eps": refs.unet(x, t, encoder_hidden_states=context).sample,
            "text": refs.text_encoder(ids).last_hidden_state,
            "decoded": refs.vae.decode(z).sample,
            "encoded": refs.vae.encode(image).latent_dist.mean,
        }
    paths = [
        write_checkpoint(tmp_path, layout, dtype=torch.float16, references=refs)
        for layout in ("single", "diffusers")
    ]
    del refs
    for path in paths:
        sd = weights.load(path)
        assert sd.unet.config == UNetConfig.sd1()
        assert sd.vae.config == VAEConfig.sd1()
        assert sd.text_encoder.config == CLIPTextConfig.sd1()
        with torch.no_grad():
            assert rel_err(sd.unet(x, t, context), expected["eps"]) <= TOL
            assert rel_err(sd.text_encoder(ids), expected["text"]) <= TOL
            assert rel_err(sd.vae.decode(z), expected["decoded"]) <= TOL
            assert rel_err(sd.vae.encode(image), expected["encoded"]) <= TOL
        del sd
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"full-size weights test: {time.perf_counter() - start:.0f} s, process peak RSS {peak_gb:.1f} GB")
