"""vae/: LDM key layout, numerical parity with diffusers' AutoencoderKL, the float16 fallback,
input errors.

Parity tolerance: max |ours - diffusers| / max |diffusers| <= 1e-5 in float32. Both sides run the
same float32 ops in another accumulation order (1x1 conv vs Linear projections, kernel choice):
measured 3e-7 to 2.5e-6 at the reduced size and 3.9e-6 at full size (each side about 4e-6 from the
float64 result). A mirrored downsample padding moves the output by ~1 (relative), but a wrong GroupNorm eps
(1e-5 for 1e-6) only by ~2e-5, so the float64 test pins the math itself to 1e-12.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from tests.helpers import rel_err
from tests.reference.vae import (
    FULL,
    SMALL,
    diffusers_config,
    diffusers_state_dict,
    diffusers_vae,
    ldm_state_dict,
    vae_config,
    with_deprecated_attention_names,
)
from vae import AutoencoderKL, VAEConfig

SMALL_CONFIG = vae_config(SMALL)
TOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    return diffusers_vae(SMALL, seed=1)


@pytest.fixture(scope="module")
def ours(reference):
    vae = AutoencoderKL(SMALL_CONFIG).eval()
    vae.load_state_dict(ldm_state_dict(reference))  # strict: the LDM keys are the parameter names
    return vae


def test_configs_carry_the_sd1_and_sdxl_latent_scales():
    assert AutoencoderKL(SMALL_CONFIG).scaling_factor == 0.18215
    assert VAEConfig.sd1().scaling_factor == 0.18215
    assert VAEConfig.sdxl().scaling_factor == 0.13025
    assert VAEConfig.sd1().ch_mult == VAEConfig.sdxl().ch_mult == (1, 2, 4, 4)


def test_parameter_names_and_shapes_are_the_ldm_checkpoint_keys_at_full_size():
    with torch.device("meta"):  # shapes only, no memory
        ours = AutoencoderKL(VAEConfig.sd1())
        reference = DiffusersAutoencoderKL(**diffusers_config(FULL))
    expected = {k: tuple(v.shape) for k, v in ldm_state_dict(reference.state_dict()).items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert len(got) == 248
    for key, shape in {
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
    }.items():
        assert got[key] == shape
    assert "encoder.down.3.downsample.conv.weight" not in got
    assert "decoder.up.0.upsample.conv.weight" not in got


def test_reference_key_map_agrees_with_diffusers_single_file_converter(reference):
    """The test-side LDM map is written from the facts table; diffusers' own converter must read
    the LDM dict it produces back into the original diffusers state dict."""
    ldm = ldm_state_dict(reference, prefix="first_stage_model.")
    converted = convert_ldm_vae_checkpoint(ldm, diffusers_config(SMALL))
    original = reference.state_dict()
    assert converted.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(converted[key], tensor), key


def test_reference_key_map_round_trips_and_reads_deprecated_attention_names(reference):
    original = reference.state_dict()
    ldm = ldm_state_dict(original, prefix="first_stage_model.")
    back = diffusers_state_dict(ldm, prefix="first_stage_model.")
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    deprecated = with_deprecated_attention_names(original)
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in deprecated
    from_deprecated = ldm_state_dict(deprecated)
    assert from_deprecated.keys() == ldm_state_dict(original).keys()
    assert all(torch.equal(from_deprecated[k], v) for k, v in ldm_state_dict(original).items())


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (3, 6, 10)])
@torch.no_grad()
def test_decode_matches_diffusers(reference, ours, batch, height, width):
    z = torch.randn(batch, 4, height, width)
    expected = reference.decode(z).sample
    got = ours.decode(z)
    assert got.shape == (batch, 3, 8 * height, 8 * width)
    assert rel_err(got, expected) <= TOL


@torch.no_grad()
def test_decode_and_encode_are_the_same_math_as_diffusers_in_float64():
    """In float64 the rounding differences vanish: agreement to 1e-12 means the same function
    (float64 rounding after ~40 layers stays below 1e-13 relative)."""
    ref64 = diffusers_vae(SMALL, seed=1).double()
    vae = AutoencoderKL(SMALL_CONFIG).double()
    vae.load_state_dict(ldm_state_dict(ref64))
    z = torch.randn(1, 4, 4, 6, dtype=torch.float64)
    img = torch.rand(1, 3, 32, 48, dtype=torch.float64) * 2 - 1
    assert rel_err(vae.decode(z), ref64.decode(z).sample) <= 1e-12
    assert rel_err(vae.encode(img), ref64.encode(img).latent_dist.mean) <= 1e-12


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (3, 48, 80)])
@torch.no_grad()
def test_encode_mean_and_logvar_match_diffusers(reference, ours, batch, height, width):
    img = torch.rand(batch, 3, height, width) * 2 - 1
    posterior = reference.encode(img).latent_dist
    mean, logvar = ours.moments(img)
    assert mean.shape == (batch, 4, height // 8, width // 8)
    assert rel_err(ours.encode(img), posterior.mean) <= TOL
    assert rel_err(mean, posterior.mean) <= TOL
    assert rel_err(logvar, posterior.logvar) <= TOL


@torch.no_grad()
def test_encode_with_generator_draws_the_same_posterior_sample_as_diffusers(reference, ours):
    img = torch.rand(2, 3, 32, 48) * 2 - 1
    expected = reference.encode(img).latent_dist.sample(torch.Generator().manual_seed(7))
    got = ours.encode(img, generator=torch.Generator().manual_seed(7))
    assert rel_err(got, expected) <= TOL
    assert not torch.allclose(got, ours.encode(img))


@torch.no_grad()
def test_logvar_is_clamped_to_minus_30_and_20(ours):
    vae = AutoencoderKL(SMALL_CONFIG)
    vae.load_state_dict(ours.state_dict())
    vae.quant_conv.weight.zero_()
    vae.quant_conv.bias.copy_(torch.tensor([0.0] * 4 + [100.0, -100.0, 5.0, -5.0]))
    _, logvar = vae.moments(torch.zeros(1, 3, 16, 16))
    assert logvar[0, :, 0, 0].tolist() == [20.0, -30.0, 5.0, -5.0]


@torch.no_grad()
def test_float16_decode_that_overflows_is_redone_in_float32_with_a_warning(ours):
    vae = AutoencoderKL(SMALL_CONFIG)
    vae.load_state_dict(ours.state_dict())
    vae.decoder.conv_in.weight.mul_(1e4)  # activations ~1e5: beyond float16's 65504, fine in float32
    vae = vae.half()
    z = 10 * torch.randn(1, 4, 4, 4)  # small: float16 convolutions are slow on the CPU
    assert not torch.isfinite(vae.decoder(vae.post_quant_conv(z.half()))).all()  # the overflow is real

    with pytest.warns(UserWarning, match="float32"):
        img = vae.decode(z)

    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert vae.decoder.conv_in.weight.dtype == torch.float16  # the module is left in float16
    expected = AutoencoderKL(SMALL_CONFIG)
    expected.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})
    # Same float32 computation on the same (float16-rounded) weights and input.
    assert rel_err(img, expected.decode(z.half().float())) <= TOL


@torch.no_grad()
def test_finite_float16_decode_stays_float16_without_warning(ours):
    vae = AutoencoderKL(SMALL_CONFIG)
    vae.load_state_dict(ours.state_dict())
    vae = vae.half()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = vae.decode(torch.randn(1, 4, 4, 4))
    assert img.dtype == torch.float16
    assert torch.isfinite(img).all()


@pytest.mark.parametrize(
    ("call", "shape", "message"),
    [
        ("decode", (4, 8, 8), r"latent batch of shape \[B, 4, H, W\], got \(4, 8, 8\)"),
        ("decode", (1, 3, 8, 8), r"latent batch of shape \[B, 4, H, W\], got \(1, 3, 8, 8\)"),
        ("encode", (1, 4, 64, 64), r"image batch of shape \[B, 3, H, W\]"),
        ("encode", (1, 3, 60, 64), r"multiples of 8, got \(60, 64\)"),
    ],
)
def test_bad_input_shapes_raise_one_line_errors(ours, call, shape, message):
    with pytest.raises(ValueError, match=message) as info:
        getattr(ours, call)(torch.zeros(shape))
    assert "\n" not in str(info.value)


@pytest.mark.slow
@torch.no_grad()
def test_full_size_sd_vae_decode_matches_diffusers_on_a_small_latent():
    """The real SD 1.5 / SDXL architecture (ch 128, 84M parameters) on a 16x16 latent (20-30 s
    on 2 CPU cores). Measured: 3.9e-6 relative, each side about 4e-6 from the float64 result."""
    reference = diffusers_vae(FULL, seed=2)
    with torch.device("meta"):  # no init: every tensor comes from the state dict
        vae = AutoencoderKL(VAEConfig.sd1())
    vae.load_state_dict(ldm_state_dict(reference), assign=True)
    z = torch.randn(1, 4, 16, 16)
    assert rel_err(vae.decode(z), reference.decode(z).sample) <= TOL
