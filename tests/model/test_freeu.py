"""FreeU: settings, the Fourier filter, where it acts in the decoder, and its effect on the U-Net.

Tolerances: the U-Net comparisons use max|ours - ref| / max|ref| <= 1e-5 (float32; the FFT round
trip adds ~1e-7 relative to the ~1e-6 of reordered sums); filter checks against numpy's float64 FFT
use 1e-5 relative to the data's scale (float32 FFT rounding).
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from model import FreeU, UNet, fourier_filter, timestep_embedding
from solvers.presets import PAPER_FREEU, XL_FREEU_LAST
from tests.helpers import rel_err
from tests.reference.unet import diffusers_unet, ldm_state_dict, sd15_config, unet_config

TOL = 1e-5


@pytest.fixture(scope="module")
def sd15_pair():
    reference = diffusers_unet(sd15_config())
    ours = UNet(unet_config(sd15_config())).eval()
    ours.load_state_dict(ldm_state_dict(reference))
    return reference, ours


def inputs(batch=2, height=16, width=16):
    return (
        torch.randn(batch, 4, height, width),
        torch.tensor([801.5, 99.25][:batch]),
        torch.randn(batch, 7, 48),
    )


# --- settings --------------------------------------------------------------------------------------


def test_the_recipes_settings_read_as_freeu_and_common_holds_freeus_defaults():
    paper = FreeU.option(PAPER_FREEU)
    assert paper == FreeU(1.1, 1.1, 0.9, 0.2)
    assert FreeU.common() == FreeU(1.1, 1.2, 0.9, 0.2)
    # the authors' last SDXL step uses the v1 formula: their FreeU code has no v2 (docs/recipe.md 8.1)
    assert FreeU.option(XL_FREEU_LAST) == FreeU(1.3, 1.4, 0.9, 0.2, version=1)
    assert paper.placement == "channels" and paper.version == 1
    assert FreeU.option(None) is None and FreeU.option(paper) is paper


def test_text_shows_the_four_factors_and_what_is_not_default():
    assert FreeU(1.1, 1.1, 0.9, 0.2).text() == "1.1/1.1/0.9/0.2"
    assert FreeU(1.3, 1.4, 0.9, 0.2, version=2, placement="blocks").text() == "1.3/1.4/0.9/0.2 v2 blocks"


def test_dict_form_round_trips_through_json():
    freeu = FreeU(1.3, 1.4, 0.9, 0.2, version=2, placement="blocks")
    as_dict = freeu.to_dict()
    assert as_dict == {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2, "version": 2, "placement": "blocks"}
    assert FreeU.from_dict(json.loads(json.dumps(as_dict))) == freeu
    assert FreeU.from_dict({"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}) == FreeU.common()


def test_zero_dim_tensors_are_accepted_and_stored_as_floats():
    freeu = FreeU(torch.tensor(1.1, dtype=torch.float64), 1.2, torch.tensor(0.9, dtype=torch.float64), 0.2)
    assert freeu == FreeU.common() and hash(freeu) == hash(FreeU.common())
    assert all(type(v) is float for v in (freeu.b1, freeu.b2, freeu.s1, freeu.s2))
    assert FreeU(torch.tensor(1.1), 1.2, 0.9, 0.2).b1 == float(torch.tensor(1.1))  # the float32 value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"b1": -1.0}, "b1 must be >= 0"),
        ({"s2": float("nan")}, "s2 must be a finite number"),
        ({"b2": True}, "b2 must be a finite number"),
        ({"s1": "0.9"}, "s1 must be a finite number"),
        ({"b1": torch.ones(2)}, "b1 must be a number or a 0-d tensor"),
        ({"version": 3}, "version must be one of"),
        ({"placement": "levels"}, "placement must be one of"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FreeU(**{**FreeU.common().to_dict(), **kwargs})


@pytest.mark.parametrize(
    "mapping", [{"b1": 1.1, "b2": 1.2, "s1": 0.9}, {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2, "scale": 1}]
)
def test_malformed_dicts_are_refused(mapping):
    with pytest.raises(ValueError, match="FreeU dict"):
        FreeU.from_dict(mapping)


def test_settings_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FreeU.common().b1 = 2.0


# --- Fourier filter --------------------------------------------------------------------------------


def numpy_fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> np.ndarray:
    """The official formula in float64: fftn, fftshift, scale the centred square, back."""
    freq = np.fft.fftshift(np.fft.fftn(x.double().numpy(), axes=(-2, -1)), axes=(-2, -1))
    rows, cols = freq.shape[-2] // 2, freq.shape[-1] // 2
    freq[..., rows - threshold : rows + threshold, cols - threshold : cols + threshold] *= scale
    return np.fft.ifftn(np.fft.ifftshift(freq, axes=(-2, -1)), axes=(-2, -1)).real


@pytest.mark.parametrize(("height", "width"), [(8, 8), (6, 10), (5, 7)])
@pytest.mark.parametrize("threshold", [1, 2])
def test_fourier_filter_scales_the_centred_low_frequencies(height, width, threshold):
    x = torch.randn(2, 3, height, width)
    got = fourier_filter(x, threshold, 0.3)
    np.testing.assert_allclose(got.numpy(), numpy_fourier_filter(x, threshold, 0.3), rtol=0, atol=TOL * 4)


def test_fourier_filter_with_scale_one_is_the_identity_and_keeps_the_dtype():
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(fourier_filter(x, 1, 1.0), x, rtol=0, atol=1e-6)  # FFT round trip only
    low = x.to(torch.bfloat16)
    assert fourier_filter(low, 1, 0.5).dtype == torch.bfloat16


def test_fourier_filter_accepts_a_tensor_scale():
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(fourier_filter(x, 1, torch.tensor(0.2)), fourier_filter(x, 1, 0.2))


# --- placement -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordingFreeU(FreeU):
    """FreeU that notes which stage each call applies (the U-Net calls it only for stage 0 or 1)."""

    calls: list = dataclasses.field(default_factory=list, compare=False)

    def __call__(self, h, skip, stage):
        self.calls.append((h.shape[1], stage))
        return super().__call__(h, skip, stage)


def test_channel_placement_follows_the_backbone_width_and_block_placement_the_level(sd15_pair):
    """SD 1.5 decoder: h has 1280 channels in output blocks 0-6 and 640 in 7-9 (scaled to 4:2:1 of
    32 here); diffusers' up_blocks.0 / .1 are output blocks 0-2 / 3-5."""
    _, unet = sd15_pair
    channels = RecordingFreeU(*FreeU.common().to_dict().values())
    blocks = RecordingFreeU(1.1, 1.2, 0.9, 0.2, placement="blocks")
    with torch.no_grad():
        unet(*inputs(), freeu=channels)
        unet(*inputs(), freeu=blocks)
    assert channels.calls == [(128, 0)] * 7 + [(64, 1)] * 3
    assert blocks.calls == [(128, 0)] * 3 + [(128, 1)] * 3


@pytest.mark.parametrize(("height", "width"), [(16, 16), (16, 24)])
def test_block_placement_matches_diffusers_enable_freeu(sd15_pair, height, width):
    reference, ours = sd15_pair
    x, t, context = inputs(2, height, width)
    reference.enable_freeu(s1=0.9, s2=0.2, b1=1.1, b2=1.2)
    try:
        with torch.no_grad():
            expected = reference(x, t, encoder_hidden_states=context).sample
    finally:
        reference.disable_freeu()
    with torch.no_grad():
        got = ours(x, t, context, freeu=FreeU(b1=1.1, b2=1.2, s1=0.9, s2=0.2, placement="blocks"))
        plain = ours(x, t, context)
    assert rel_err(got, expected) <= TOL
    assert rel_err(plain, expected) > 100 * TOL  # FreeU changed the output


def official_freeu_forward(unet: UNet, x, t, context, freeu: FreeU) -> torch.Tensor:
    """ChenyangSi/FreeU's Free_UNetModel.forward, restated on our blocks: before each decoder block,
    if h has 4C (2C) channels, scale its first half by b1 (b2), or for v2 by (b - 1) * mean-map + 1,
    and Fourier-filter the skip with s1 (s2)."""
    mc = unet.config.model_channels
    emb = unet.time_embed(timestep_embedding(t, mc))
    skips, h = [], x
    for block in unet.input_blocks:
        h = block(h, emb, context)
        skips.append(h)
    h = unet.middle_block(h, emb, context)
    for block in unet.output_blocks:
        skip = skips.pop()
        for width, b, s in ((4 * mc, freeu.b1, freeu.s1), (2 * mc, freeu.b2, freeu.s2)):
            if h.shape[1] == width:
                h = h.clone()
                factor = b
                if freeu.version == 2:
                    hidden_mean = h.mean(1).unsqueeze(1)
                    flat = hidden_mean.view(h.shape[0], -1)
                    hidden_max = flat.max(dim=-1, keepdim=True).values[:, :, None, None]
                    hidden_min = flat.min(dim=-1, keepdim=True).values[:, :, None, None]
                    factor = (b - 1) * (hidden_mean - hidden_min) / (hidden_max - hidden_min) + 1
                h[:, : width // 2] = h[:, : width // 2] * factor
                skip = torch.from_numpy(numpy_fourier_filter(skip, 1, s)).float()
        size = tuple(skips[-1].shape[2:]) if skips else None  # our Upsample's output size
        h = block(torch.cat([h, skip], dim=1), emb, context, size)
    return unet.out(h)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("height", "width"), [(16, 16), (24, 16)])
def test_channel_placement_matches_the_official_formula(sd15_pair, version, height, width):
    _, unet = sd15_pair
    x, t, context = inputs(2, height, width)
    freeu = FreeU(1.3, 1.4, 0.9, 0.2, version=version)
    with torch.no_grad():
        expected = official_freeu_forward(unet, x, t, context, freeu)
        got = unet(x, t, context, freeu=freeu)
    assert rel_err(got, expected) <= TOL


# --- switching -------------------------------------------------------------------------------------


def test_freeu_none_is_bitwise_the_plain_unet(sd15_pair):
    _, unet = sd15_pair
    x, t, context = inputs()
    with torch.no_grad():
        assert torch.equal(unet(x, t, context, freeu=None), unet(x, t, context))


def test_freeu_can_change_from_call_to_call(sd15_pair):
    _, unet = sd15_pair
    x, t, context = inputs()
    with torch.no_grad():
        plain = unet(x, t, context)
        first = unet(x, t, context, freeu=FreeU.common())
        other = unet(x, t, context, freeu=FreeU(1.3, 1.4, 0.9, 0.2, version=2))
        assert torch.equal(unet(x, t, context), plain)
        assert torch.equal(unet(x, t, context, freeu=FreeU.common()), first)
    assert rel_err(first, plain) > 100 * TOL and rel_err(other, first) > 100 * TOL
