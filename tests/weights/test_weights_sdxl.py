"""weights.load on SDXL: sd_xl_base_1.0's single-file layout (bigG in open_clip's layout) and the
diffusers folder layout (DreamShaper XL's) into the same models, equal to diffusers' and transformers'
references; a separate VAE; the width rules; refusals.

Parity tolerance: max |ours - reference| / max |reference| <= 1e-5 in float32, as in test_weights.py:
the checkpoints hold the references' own weights; both sides run the same float32 math in another
order (SDPA vs eager attention), measured 0 (U-Net), 1.4e-7 to 3.5e-7 (text encoders),
up to 2.6e-6 (VAE decode). A misplaced, transposed or missing
tensor (a q/k/v slice swapped, the projection not transposed) moves the output by order 1.
"""

from __future__ import annotations

import resource
import time

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

import weights
from model import SizeConditioning, UNet, UNetConfig, added_vector
from tests.checkpoints import (
    TINY_BIGG,
    diffusers_pipeline,
    reference_models,
    save_variant,
    single_file_tensors,
    write_checkpoint,
)
from tests.helpers import mapped_shapes, refused, rel_err, shapes_of
from tests.reference import clip as ref_clip
from tests.reference import unet as ref_unet
from tests.reference import vae as ref_vae
from text_encoder import CLIPTextConfig, CLIPTextModel
from weights import detect, keymaps
from weights.checkpoint import empty_modules
from weights.families import SDXL

TOL = 1e-5
PROMPTS = ["a photo of a cat", "", "An astronaut riding a horse on Mars, highly detailed"]
BIGG = "conditioner.embedders.1.model."


@pytest.fixture(scope="module")
def refs():
    return reference_models(kind="sdxl")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    return {layout: write_checkpoint(root, layout, kind="sdxl") for layout in ("single", "diffusers")}


@pytest.fixture(scope="module", params=["single", "diffusers"])
def sd(request, files):
    return weights.load(files[request.param])


def time_ids(size: SizeConditioning, batch: int) -> torch.Tensor:
    return torch.tensor([size.numbers()] * batch, dtype=torch.float32)


# --- parity with the references ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [SizeConditioning(), SizeConditioning((512, 768), (16, 32), (1024, 896))])
def test_unet_with_the_added_vector_equals_diffusers_text_time_conditioning(sd, refs, size):
    batch = 2
    x, t = torch.randn(batch, 4, 8, 16), torch.tensor([999.37, 12.5])
    context, pooled = torch.randn(batch, 77, 192), torch.randn(batch, 128)
    with torch.no_grad():
        expected = refs.unet(
            x,
            t,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids(size, 2)},
        ).sample
        assert rel_err(sd.unet(x, t, context, y=added_vector(pooled, size)), expected) <= TOL


def test_text_encoders_give_both_penultimate_states_and_the_bigg_pooled_vector(sd, refs):
    ids_l, ids_g = sd.tokenizer(PROMPTS), sd.tokenizer_2(PROMPTS)
    assert ids_l[1, 2] == 49407 and ids_g[1, 2] == 0  # "": CLIP-L pads with eos, bigG with 0
    with torch.no_grad():
        clip_l = refs.text_encoder(ids_l, output_hidden_states=True)
        bigg = refs.text_encoder_2(ids_g, output_hidden_states=True)
        cond = sd.encode_prompt(PROMPTS)
    expected_context = torch.cat([clip_l.hidden_states[-2], bigg.hidden_states[-2]], dim=-1)
    assert cond["context"].shape == (3, 77, 192) and cond["y"].shape == (3, 128 + 6 * 256)
    assert rel_err(cond["context"], expected_context) <= TOL
    assert rel_err(cond["y"][:, :128], bigg.text_embeds) <= TOL
    sizes = refs.unet.add_time_proj(time_ids(SizeConditioning(), 3).flatten()).reshape(3, -1)
    assert torch.equal(cond["y"][:, 128:], sizes)  # the same float32 sinusoids, cos first


def test_encode_prompt_equals_diffusers_sdxl_pipeline(sd, refs, tmp_path):
    pipe = diffusers_pipeline(refs, tmp_path)
    context, negative, pooled, negative_pooled = pipe.encode_prompt(
        PROMPTS[:1], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    ours = sd.encode_prompt(PROMPTS[:1])
    assert rel_err(ours["context"], context) <= TOL and rel_err(ours["y"][:, :128], pooled) <= TOL
    zeros = sd.null_condition()  # no negative prompt: force_zeros_for_empty_prompt
    assert torch.equal(zeros["context"], negative) and torch.equal(zeros["y"][:, :128], negative_pooled)
    assert torch.equal(zeros["y"][:, 128:], ours["y"][:, 128:])  # the size conditioning stays


def test_bigg_from_open_clips_layout_is_bitwise_the_hf_layouts(files):
    """The single file's packed q/k/v and `x @ P` projection give exactly the folder's tensors."""
    single, folder = weights.load(files["single"]), weights.load(files["diffusers"])
    ours, theirs = single.text_encoder_2.state_dict(), folder.text_encoder_2.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = single.tokenizer_2(PROMPTS)
    with torch.no_grad():
        pairs = zip(
            single.text_encoder_2.hidden_and_pooled(ids, -2),
            folder.text_encoder_2.hidden_and_pooled(ids, -2),
            strict=True,
        )
        for a, b in pairs:
            assert torch.equal(a, b)
    assert torch.equal(single.encode_prompt(PROMPTS)["y"], folder.encode_prompt(PROMPTS)["y"])


def test_diffusers_reads_the_tests_sgm_file_into_the_references_weights(files, refs):
    """The tests' own sgm / open_clip key map agrees with diffusers' single-file converter."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(
        str(files["single"]), config=str(files["diffusers"]), local_files_only=True, torch_dtype=torch.float32
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        theirs, expected = getattr(pipe, name).state_dict(), getattr(refs, name).state_dict()
        assert theirs.keys() == expected.keys() and all(torch.equal(theirs[k], expected[k]) for k in expected)


def test_vae_has_sdxls_latent_scale_and_equals_diffusers(sd, refs):
    z, image = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert rel_err(sd.vae.decode(z), refs.vae.decode(z).sample) <= TOL
        assert rel_err(sd.vae.encode(image), refs.vae.encode(image).latent_dist.mean) <= TOL
    assert sd.vae.scaling_factor == 0.13025


def test_configurations_and_tokenizers_are_sdxls(sd):
    assert sd.kind == "sdxl" and sd.tokenizer.pad_id == 49407 and sd.tokenizer_2.pad_id == 0
    assert sd.unet.config == ref_unet.unet_config(
        ref_unet.sdxl_config((32, 64, 128), 64, context=192, pooled=128, time_dim=256, depths=(1, 1, 1))
    )
    assert sd.text_encoder.config.activation == "quick_gelu" and sd.text_encoder.config.projection_dim is None
    assert sd.text_encoder_2.config == CLIPTextConfig(
        hidden_size=128, intermediate_size=256, layers=3, heads=2, activation="gelu", projection_dim=128
    )


def test_kind_is_read_off_the_header_or_the_configs_alone(tmp_path, files):
    """A header whose tensors hold garbage still tells the kind: no tensor is read."""
    for path in files.values():
        assert weights.kind(path) == "sdxl"
    assert weights.kind(write_checkpoint(tmp_path, "single")) == "sd1"
    header_only = tmp_path / "xl-header.safetensors"
    save_file({BIGG + "positional_embedding": torch.full((77, 8), float("nan"))}, header_only)
    assert weights.kind(header_only) == "sdxl"


def test_full_size_sdxl_layouts_map_onto_our_modules_and_give_sdxls_configs():
    """Shapes only (meta tensors): sd_xl_base_1.0's keys (U-Net, bigG in open_clip's layout) and the
    diffusers names map onto exactly our parameters, and the configs read off them are SDXL's."""
    full = ref_unet.sdxl_config(
        (320, 640, 1280), 64, context=2048, pooled=1280, time_dim=256, depths=(1, 2, 10)
    )
    with torch.device("meta"):
        reference = UNet2DConditionModel(**full)
        bigg = ref_clip.hf_text_model(ref_clip.BIGG_TEXT, 1280, randomize=False)
        ours_unet, ours_bigg = UNet(UNetConfig.sdxl()), CLIPTextModel(CLIPTextConfig.bigg())
        open_clip = {k: tuple(v.shape) for k, v in ref_clip.open_clip_state_dict(bigg).items()}
    ldm = {k: tuple(v.shape) for k, v in ref_unet.ldm_state_dict(reference).items()}
    assert mapped_shapes(keymaps.ldm_unet, ldm) == shapes_of(ours_unet)
    assert mapped_shapes(keymaps.diffusers_unet, shapes_of(reference)) == shapes_of(ours_unet)
    bigg_shapes = mapped_shapes(
        keymaps.open_clip_text, {k: s for k, s in open_clip.items() if k != "logit_scale"}
    )
    assert bigg_shapes == shapes_of(ours_bigg)
    assert detect.unet_config(shapes_of(ours_unet), SDXL.unet_heads) == UNetConfig.sdxl()
    assert detect.unet_heads(reference.config) == {"head_dim": 64}
    assert detect.unet_heads({**reference.config, "attention_head_dim": [5, 10, 20]}) == {"head_dim": 64}
    assert detect.clip_config(bigg_shapes, activation="gelu") == CLIPTextConfig.bigg()
    configs = {
        "unet": UNetConfig.sdxl(),
        "text_encoder": CLIPTextConfig.sd1(),
        "text_encoder_2": CLIPTextConfig.bigg(),
    }
    assert SDXL.widths_problem(configs) is None  # 2048 = 768 + 1280, 2816 = 1280 + 6 x 256


# --- a separate VAE ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_vae():
    return ref_vae.diffusers_vae(ref_vae.SMALL, 0.13025, seed=7)


@pytest.mark.parametrize("layout", ["ldm", "ldm-prefixed", "diffusers-keys", "diffusers-folder"])
def test_a_separate_vae_replaces_the_bundled_one(tmp_path, files, other_vae, layout):
    if layout == "diffusers-folder":
        other_vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
        path = tmp_path / "vae"
    else:
        state = {
            "ldm": ref_vae.ldm_state_dict(other_vae),
            "ldm-prefixed": ref_vae.ldm_state_dict(other_vae, prefix="first_stage_model."),
            "diffusers-keys": other_vae.state_dict(),
        }[layout]
        path = tmp_path / "sdxl_vae.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    for checkpoint in files.values():
        sd = weights.load(checkpoint, vae=path)
        assert sd.vae_source == path and sd.vae.scaling_factor == 0.13025
        z = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            assert rel_err(sd.vae.decode(z), other_vae.decode(z).sample) <= TOL


def test_with_a_separate_vae_the_bundled_one_is_not_needed(tmp_path, refs, other_vae):
    tensors = {k: v for k, v in single_file_tensors(refs).items() if not k.startswith("first_stage_model.")}
    save_file(tensors, tmp_path / "unet-and-text.safetensors")
    save_file(ref_vae.ldm_state_dict(other_vae), tmp_path / "vae.safetensors")
    refused(tmp_path / "unet-and-text.safetensors", r"has no VAE \(no key starts with first_stage_model\.\)")
    sd = weights.load(tmp_path / "unet-and-text.safetensors", vae=tmp_path / "vae.safetensors")
    assert sd.vae.config == ref_vae.vae_config(ref_vae.SMALL, 0.13025)


def test_the_vae_may_have_its_own_dtype(files):
    sd = weights.load(files["single"], dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert (
        sd.unet.out[2].weight.dtype == torch.bfloat16
        and sd.text_encoder_2.text_projection.weight.dtype == torch.bfloat16
    )
    assert all(p.dtype == torch.float32 for p in sd.vae.parameters())


def test_a_full_checkpoint_is_refused_as_a_separate_vae(files):
    with pytest.raises(weights.WeightsError, match="holds more than a VAE"):
        weights.load(files["single"], vae=files["single"])


# --- refusals -----------------------------------------------------------------------------------------


def test_text_encoders_narrower_than_the_unets_context_are_refused(tmp_path, refs):
    narrow = ref_clip.hf_text_model(dict(TINY_BIGG, hidden_size=64, num_attention_heads=1), 128)
    changes = {k: None for k in single_file_tensors(refs) if k.startswith(BIGG)}
    changes |= {BIGG + k: v for k, v in ref_clip.open_clip_state_dict(narrow).items()}
    refused(
        save_variant(tmp_path, refs, changes),
        r"mixes models: the U-Net attends to 192-wide text features but the text encoders are 64 \+ 64 wide",
    )


def test_a_pooled_vector_that_does_not_fit_y_is_refused(tmp_path, refs):
    path = save_variant(tmp_path, refs, {BIGG + "text_projection": torch.zeros(128, 64)})
    refused(
        path,
        r"the U-Net's added condition y is 1664 wide but SDXL needs the pooled text \(64\) \+ 6 x 256 = 1600",
    )


def test_a_packed_qkv_that_does_not_split_in_three_is_named(tmp_path, refs):
    key = BIGG + "transformer.resblocks.1.attn.in_proj_weight"
    path = save_variant(tmp_path, refs, {key: torch.zeros(385, 128)})
    refused(path, rf"{key} has shape \[385, 128\], which cannot fill .*q_proj\.weight \(rows 1/3\)")


def test_a_missing_packed_qkv_names_the_three_parameters(tmp_path, refs):
    path = save_variant(tmp_path, refs, {BIGG + "transformer.resblocks.1.attn.in_proj_bias": None})
    message = refused(
        path,
        "does not match the SDXL OpenCLIP bigG text encoder inferred from its shapes: "
        "3 parameters no key fills",
    )
    for proj in ("q", "k", "v"):
        assert f"text_model.encoder.layers.1.self_attn.{proj}_proj.bias" in message


def test_an_unexpected_bigg_key_and_a_parameter_filled_twice_are_named(tmp_path, refs):
    path = save_variant(tmp_path, refs, {BIGG + "transformer.resblocks.0.attn.extra": torch.zeros(2)})
    refused(
        path, r"1 unexpected key \(conditioner\.embedders\.1\.model\.transformer\.resblocks\.0\.attn\.extra\)"
    )
    twice = BIGG + "text_model.encoder.layers.0.self_attn.q_proj.weight"  # an HF name beside open_clip's
    path = save_variant(tmp_path, refs, {twice: torch.zeros(128, 128)})
    refused(
        path,
        r"both fill text_model\.encoder\.layers\.0\.self_attn\.q_proj\.weight; the file mixes two layouts",
    )


def test_a_transposed_projection_of_the_wrong_shape_is_named_with_both_shapes(tmp_path, refs):
    path = save_variant(tmp_path, refs, {BIGG + "text_projection": torch.zeros(64, 128)})
    refused(
        path, r"text_projection has shape \[64, 128\] \(transposed: \[128, 64\]\) but the SDXL OpenCLIP bigG"
    )


# --- full size ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_sdxl_unet_equals_diffusers_on_a_small_latent():
    """SDXL base's U-Net at full size (2.6e9 parameters, 10.3 GB in float32, held once: ours uses the
    reference's tensors), one forward at an 8 x 8 latent (2 x 2 at the deepest level) with the added
    vector (y 2816 wide). About 70 s and 10.1 GB on 2 busy cores: drawing the weights, then two
    forwards of about 10 s (weight-bound: each reads 10 GB)."""
    start = time.perf_counter()
    full = ref_unet.sdxl_config(
        (320, 640, 1280), 64, context=2048, pooled=1280, time_dim=256, depths=(1, 2, 10)
    )
    reference = ref_unet.diffusers_unet(full)
    with empty_modules():
        ours = UNet(UNetConfig.sdxl())
    ours.load_state_dict(ref_unet.ldm_state_dict(reference), assign=True)  # the same tensors
    ours.eval()
    with torch.no_grad():
        x, t = torch.randn(1, 4, 8, 8), torch.tensor([523.25])
        context, pooled = torch.randn(1, 77, 2048), torch.randn(1, 1280)
        size = SizeConditioning()
        expected = reference(
            x,
            t,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids(size, 1)},
        ).sample
        got = ours(x, t, context, y=added_vector(pooled, size))
    assert rel_err(got, expected) <= TOL
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"full-size SDXL U-Net test: {time.perf_counter() - start:.0f} s, process peak RSS {peak_gb:.1f} GB"
    )
