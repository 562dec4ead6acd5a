"""The denoiser D(x; sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)) around an eps U-Net."""

import math

import pytest
import torch
from torch import nn

from model import Denoiser, FreeU, UNet, UNetConfig
from schedule import DiscreteSchedule

SCHEDULE = DiscreteSchedule.sd()


class RecordingUNet(nn.Module):
    """Stands in for the U-Net: eps = tanh(x_in) + context mean, and every call is recorded."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=dtype))  # gives the module its dtype
        self.calls = []

    def forward(self, x, t, context, freeu=None, **kwargs):
        self.calls.append({"x": x, "t": t, "context": context, "freeu": freeu, **kwargs})
        return torch.tanh(x) + context.mean(dim=(1, 2))[:, None, None, None]


def test_x0_is_x_minus_sigma_times_eps_of_the_scaled_input():
    unet = RecordingUNet()
    x, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 5)
    sigma = 3.7
    x0 = Denoiser(unet, SCHEDULE)(x, sigma, cond)
    x_in = x / math.sqrt(sigma**2 + 1)
    # float32 throughout: a few ulps of |x| ~ 4 => 1e-5 absolute.
    torch.testing.assert_close(unet.calls[0]["x"], x_in, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0, x - sigma * unet(x_in, None, cond), rtol=0, atol=1e-5)


def test_the_unet_gets_the_schedules_fractional_time():
    unet = RecordingUNet()
    sigmas = torch.tensor(
        [SCHEDULE.sigma(123.4), SCHEDULE.sigma(999.0), SCHEDULE.sigma(0.25)], dtype=torch.float64
    )
    Denoiser(unet, SCHEDULE)(torch.randn(3, 4, 8, 8), sigmas, torch.randn(3, 2, 5))
    t = unet.calls[0]["t"]
    assert t.dtype == torch.float32
    # sigma(t) and t(sigma) are exact inverses in float64; 1e-4 covers the float32 rounding of t.
    torch.testing.assert_close(t, torch.tensor([123.4, 999.0, 0.25]), rtol=0, atol=1e-4)


def test_round_timesteps_rounds_t_for_the_network_only():
    unet = RecordingUNet()
    x, cond, sigma = torch.randn(1, 4, 8, 8), torch.randn(1, 2, 5), SCHEDULE.sigma(123.4)
    x0 = Denoiser(unet, SCHEDULE, round_timesteps=True)(x, sigma, cond)
    assert unet.calls[0]["t"].tolist() == [123.0]
    x_in = x / math.sqrt(sigma**2 + 1)
    torch.testing.assert_close(x0, x - sigma * unet(x_in, None, cond), rtol=0, atol=1e-5)


def test_float_0d_and_per_sample_sigma_agree():
    denoiser = Denoiser(RecordingUNet(), SCHEDULE)
    x, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 5)
    expected = denoiser(x, 2.5, cond)
    assert torch.equal(denoiser(x, torch.tensor(2.5), cond), expected)
    assert torch.equal(denoiser(x, torch.tensor([2.5, 2.5]), cond), expected)


def test_low_precision_unet_gets_its_dtype_and_x0_keeps_x_dtype():
    unet = RecordingUNet(torch.bfloat16)
    x, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 5)
    y = torch.randn(2, 6)
    x0 = Denoiser(unet, SCHEDULE)(x, 1.5, cond, y=y, mask=torch.ones(2, dtype=torch.long), flag=True)
    call = unet.calls[0]
    assert call["x"].dtype == call["context"].dtype == call["y"].dtype == torch.bfloat16
    assert call["mask"].dtype == torch.long and call["flag"] is True  # only floating tensors are cast
    assert x0.dtype == torch.float32


def test_a_dict_cond_gives_the_context_and_the_other_unet_inputs():
    """solvers/guidance.py batches SDXL conditioning as {"context": ..., "y": ...}."""
    unet = RecordingUNet()
    context, y = torch.randn(2, 3, 5), torch.randn(2, 6)
    Denoiser(unet, SCHEDULE)(torch.randn(2, 4, 8, 8), 1.0, {"context": context, "y": y})
    assert torch.equal(unet.calls[0]["context"], context) and torch.equal(unet.calls[0]["y"], y)
    with pytest.raises(ValueError, match="needs a 'context' entry"):
        Denoiser(unet, SCHEDULE)(torch.randn(2, 4, 8, 8), 1.0, {"y": y})


def test_freeu_is_passed_on_as_given_and_a_plans_dict_is_left_to_the_prepared_loop():
    """A plan's dict of FreeU's fields is read into a FreeU once per run by its option (solvers/freeu.py),
    so the denoiser takes only that form."""
    unet = RecordingUNet()
    denoiser, x, cond = Denoiser(unet, SCHEDULE), torch.randn(1, 4, 8, 8), torch.randn(1, 2, 5)
    denoiser(x, 1.0, cond, freeu=FreeU.common())
    denoiser(x, 1.0, cond)
    assert [c["freeu"] for c in unet.calls] == [FreeU.common(), None]
    for other in ((1.1, 1.2, 0.9, 0.2), FreeU.common().to_dict()):
        with pytest.raises(TypeError, match="freeu must be a FreeU or None"):
            denoiser(x, 1.0, cond, freeu=other)


def test_sigma_zero_returns_x_without_calling_the_network():
    unet = RecordingUNet()
    x = torch.randn(2, 4, 8, 8)
    x0 = Denoiser(unet, SCHEDULE)(x, 0.0, torch.randn(2, 2, 5))
    assert torch.equal(x0, x) and not unet.calls
    mixed = Denoiser(unet, SCHEDULE)(x, torch.tensor([0.0, 1.0]), torch.randn(2, 2, 5))
    assert torch.equal(mixed[0], x[0]) and not torch.equal(mixed[1], x[1])


@pytest.mark.parametrize(
    ("sigma", "message"),
    [(torch.ones(3), "sigma must be a float"), (-1.0, "sigma must be >= 0"), (100.0, "outside")],
)
def test_bad_sigma_is_refused(sigma, message):
    with pytest.raises(ValueError, match=message):
        Denoiser(RecordingUNet(), SCHEDULE)(torch.randn(2, 4, 8, 8), sigma, torch.randn(2, 2, 5))


def test_a_guidance_batch_of_2b_equals_its_halves_run_apart():
    """How solvers/guidance.py calls it: [uncond; cond] stacked, one sigma for all. Tolerance 1e-5
    relative: a batch of 4 and of 2 may block the matmuls differently."""
    config = UNetConfig(
        model_channels=16,
        channel_mult=(1, 2),
        transformer_depth=(1, 0),
        num_heads=2,
        context_dim=8,
        norm_groups=8,
    )
    denoiser = Denoiser(UNet(config).eval(), SCHEDULE)
    x, uncond, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        both = denoiser(torch.cat([x, x]), 4.2, torch.cat([uncond, cond]), freeu=FreeU(1.1, 1.1, 0.9, 0.2))
        apart = torch.cat([denoiser(x, 4.2, c, freeu=FreeU(1.1, 1.1, 0.9, 0.2)) for c in (uncond, cond)])
    assert ((both - apart).abs().max() / apart.abs().max()).item() <= 1e-5
