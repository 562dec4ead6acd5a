"""The U-Net: official key layout, parity with diffusers, timesteps, input checks, torch.compile.

Parity tolerance: max|ours - ref| / max|ref| <= 1e-5 in float32. Both networks do the same
arithmetic; only the summation order inside convolutions and matmuls may differ (channels-last
vs NCHW kernels), which leaves errors of a few float32 ulps (~1e-6) after ~100 layers.
"""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from model import FreeU, UNet, UNetConfig, timestep_embedding
from tests.helpers import rel_err
from tests.reference.unet import (
    FULL,
    diffusers_unet,
    ldm_state_dict,
    sd15_config,
    sdxl_config,
    unet_config,
)

PARITY_TOL = 1e-5


def load_ours(reference: UNet2DConditionModel) -> UNet:
    ours = UNet(unet_config(dict(reference.config))).eval()
    ours.load_state_dict(ldm_state_dict(reference))
    return ours


@pytest.fixture(scope="module")
def sd15_pair():
    reference = diffusers_unet(sd15_config())
    return reference, load_ours(reference)


@pytest.fixture(scope="module")
def sdxl_pair():
    reference = diffusers_unet(sdxl_config())
    return reference, load_ours(reference)


def sdxl_full_config() -> dict:
    """diffusers unet/config.json of SDXL base 1.0 (docs/model-facts.md section 2.1)."""
    return {
        **sdxl_config((320, 640, 1280)),
        "attention_head_dim": [5, 10, 20],
        "transformer_layers_per_block": [1, 2, 10],
        "cross_attention_dim": 2048,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }


# --- layout ---------------------------------------------------------------------------------------


def test_sd1_parameter_names_and_shapes_are_the_ldm_checkpoint_keys():
    with torch.device("meta"):
        ours = UNet(UNetConfig.sd1())
        reference = UNet2DConditionModel(**sd15_config(FULL))
    expected = {k: tuple(v.shape) for k, v in ldm_state_dict(reference).items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    # Spot checks straight from the checkpoint (docs/model-facts.md section 1.2).
    shapes = dict(expected)
    assert shapes["input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert shapes["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert shapes["input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"] == (2560, 320)
    assert shapes["input_blocks.4.0.skip_connection.weight"] == (640, 320, 1, 1)
    assert shapes["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert shapes["out.2.weight"] == (4, 320, 3, 3)
    assert sum(v.numel() for v in ours.parameters()) == 859_520_964


def test_sdxl_parameter_names_and_shapes_are_the_sgm_checkpoint_keys():
    with torch.device("meta"):
        ours = UNet(UNetConfig.sdxl())
        reference = UNet2DConditionModel(**sdxl_full_config())
    expected = {k: tuple(v.shape) for k, v in ldm_state_dict(reference).items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert expected["input_blocks.4.1.proj_in.weight"] == (640, 640)  # Linear in SDXL
    assert expected["input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"] == (1280, 2048)
    assert expected["label_emb.0.0.weight"] == (1280, 2816)
    assert expected["output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert "input_blocks.1.1.proj_in.weight" not in expected  # level 0 has no attention


def test_named_configs_match_the_diffusers_configs_of_the_released_models():
    assert unet_config(sd15_config(FULL)) == UNetConfig.sd1()
    assert unet_config(sdxl_full_config()) == UNetConfig.sdxl()
    assert UNetConfig.sd1().heads(1280) == 8 and UNetConfig.sdxl().heads(1280) == 20


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transformer_depth": (1, 1)}, "one depth per level"),
        ({"num_heads": None}, "exactly one of num_heads"),
        ({"head_dim": 64}, "exactly one of num_heads"),
        ({"model_channels": 48}, "GroupNorm groups"),
        ({"num_heads": 7}, "attention heads"),
        ({"middle_depth": 0}, "middle_depth"),
    ],
)
def test_config_refuses_inconsistent_architectures(changes, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**changes)


# --- numerics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 16, 16), (3, 16, 24), (3, 32, 8), (2, 9, 10)])
def test_sd15_structure_matches_diffusers(sd15_pair, batch, height, width):
    """Square, non-square, and 9 x 10: sides the encoder halves to odd sizes, which the decoder
    upsamples back to each skip feature's size (diffusers' upsample_size)."""
    reference, ours = sd15_pair
    x = torch.randn(batch, 4, height, width)
    t = torch.tensor([999.37, 0.5, 421.25][:batch])
    context = torch.randn(batch, 7, 48)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        got = ours(x, t, context)
    assert got.shape == expected.shape and got.is_contiguous()
    assert rel_err(got, expected) <= PARITY_TOL


def test_channels_last_weights_keep_features_channels_last_and_match_diffusers(sd15_pair):
    reference, ours = sd15_pair
    fast = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    layouts = []
    fast.middle_block.register_forward_hook(
        lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
    )
    x, t, context = torch.randn(2, 4, 16, 24), torch.tensor([999.37, 0.5]), torch.randn(2, 7, 48)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        got = fast(x, t, context)
        freeu = FreeU.common()
        with_freeu = fast(x, t, context, freeu=freeu)
        with_freeu_nchw = ours(x, t, context, freeu=freeu)
    assert layouts == [True, True] and got.is_contiguous()
    assert rel_err(got, expected) <= PARITY_TOL
    assert rel_err(with_freeu, with_freeu_nchw) <= PARITY_TOL


def test_sdxl_structure_with_added_conditioning_matches_diffusers(sdxl_pair):
    reference, ours = sdxl_pair
    batch = 2
    x, t, context = torch.randn(batch, 4, 16, 8), torch.tensor([999.37, 12.5]), torch.randn(batch, 5, 40)
    pooled = torch.randn(batch, 24)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [512, 768, 16, 32, 1024, 896]])
    with torch.no_grad():
        expected = reference(
            x,
            t,
            encoder_hidden_states=context,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        # y = [pooled, 256-d (here 8-d) cos-first embedding of each of the six size numbers]
        size_embeddings = timestep_embedding(time_ids.flatten(), 8).reshape(batch, -1)
        got = ours(x, t, context, y=torch.cat([pooled, size_embeddings], dim=1))
    assert rel_err(got, expected) <= PARITY_TOL


def test_timestep_embedding_is_cos_first_with_geometric_frequencies():
    t = torch.tensor([0.0, 3.5])
    emb = timestep_embedding(t, 8)
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(
        emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1)
    )


def test_timestep_may_be_a_float_a_0d_tensor_or_one_per_sample(sd15_pair):
    _, ours = sd15_pair
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 48)
    with torch.no_grad():
        per_sample = ours(x, torch.tensor([250.5, 250.5]), context)
        assert torch.equal(ours(x, 250.5, context), per_sample)
        assert torch.equal(ours(x, torch.tensor(250.5, dtype=torch.float64), context), per_sample)


def test_low_precision_model_embeds_fractional_time_in_float32(sd15_pair):
    """bfloat16 has a spacing of 4 near 1000, so 999.37 would become 1000 if t were cast first."""
    _, ours = sd15_pair
    model = UNet(ours.config).to(torch.bfloat16).eval()
    model.load_state_dict(ours.state_dict())
    seen = []
    model.time_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x, context = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.randn(1, 3, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        model(x, torch.tensor([999.37]), context)
        model(x, torch.tensor([1000.0]), context)
    assert torch.equal(seen[0], timestep_embedding(torch.tensor([999.37]), 32).to(torch.bfloat16))
    assert not torch.equal(seen[0], seen[1])


def test_forward_leaves_its_inputs_untouched(sd15_pair):
    """The blocks add residuals in place; that must never reach the caller's tensors."""
    _, ours = sd15_pair
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 20.0]), torch.randn(2, 3, 48)
    copies = x.clone(), t.clone(), context.clone()
    with torch.no_grad():
        ours(x, t, context, freeu=FreeU.common())
    assert all(torch.equal(a, b) for a, b in zip((x, t, context), copies, strict=True))


def test_forward_supports_autograd(sd15_pair):
    _, ours = sd15_pair
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    ours(x, 500.0, torch.randn(1, 3, 48)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    ours.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    ("shape", "t", "context_shape", "message"),
    [
        ((1, 3, 8, 8), 1.0, (1, 3, 48), r"x must be \[B, 4, H, W\]"),
        ((2, 4, 8, 8), 1.0, (1, 3, 48), "context must be"),
        ((1, 4, 8, 8), 1.0, (1, 3, 32), "context must be"),
        ((2, 4, 8, 8), torch.ones(3), (2, 3, 48), "t must be"),
    ],
)
def test_malformed_inputs_are_refused_with_a_clear_message(sd15_pair, shape, t, context_shape, message):
    _, ours = sd15_pair
    with pytest.raises(ValueError, match=message):
        ours(torch.randn(shape), t, torch.randn(context_shape))


def test_y_is_required_exactly_when_the_model_has_label_emb(sd15_pair, sdxl_pair):
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="y is required"):
        sdxl_pair[1](x, 1.0, torch.randn(1, 3, 40))
    with pytest.raises(ValueError, match="takes no y"):
        sd15_pair[1](x, 1.0, torch.randn(1, 3, 48), y=torch.randn(1, 72))


# --- full size ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_sd15_matches_diffusers():
    reference = diffusers_unet(sd15_config(FULL))
    with torch.device("meta"):
        ours = UNet(UNetConfig.sd1())
    ours.load_state_dict(ldm_state_dict(reference), assign=True)  # shares the reference's tensors
    x, t, context = torch.randn(1, 4, 32, 32), torch.tensor([617.3]), torch.randn(1, 77, 768)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        got = ours.eval()(x, t, context)
    assert rel_err(got, expected) <= PARITY_TOL
