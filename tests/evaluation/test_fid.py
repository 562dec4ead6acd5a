"""Frechet distance, the FID Inception's checkpoint layout and TF pooling, and the two image protocols."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.fid import FIDInception, feature_statistics, frechet_distance
from evaluation.images import clean_view, paper_view


def random_covariance(rng: np.random.Generator, dim: int, samples: int) -> np.ndarray:
    return np.cov(rng.standard_normal((samples, dim)) @ rng.standard_normal((dim, dim)), rowvar=False)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    """Diagonal S1, S2: Tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum_i (sqrt a_i - sqrt b_i)^2.
    Tolerance 1e-12 relative: two float64 eigen-decompositions of diagonal matrices."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 5, 32), rng.uniform(0.1, 5, 32)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dim", [8, 64])
def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances(dim):
    """Reference: pytorch-fid's formula with scipy.linalg.sqrtm(S1 S2), float64. Tolerance 1e-9
    relative: both routes are backward stable on these well-conditioned matrices (~1e-13)."""
    rng = np.random.default_rng(dim)
    s1, s2 = random_covariance(rng, dim, 4 * dim), random_covariance(rng, dim, 4 * dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_handles_singular_covariances_exactly():
    """Fewer samples than dimensions (rank-deficient, as FID on < 2049 images): equal covariances
    leave only the mean term, and the distance is symmetric. Tolerance 1e-12 of the trace scale:
    eigenvalues under the noise floor are exact zeros, so only float64 rounding (~1e-16) remains."""
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 64, 10)  # rank 9
    other = random_covariance(rng, 64, 20)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    scale = np.trace(sigma) + np.trace(other)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(
        (mu1 - mu2) @ (mu1 - mu2), abs=1e-12 * scale
    )
    forward, backward = frechet_distance(mu1, sigma, mu2, other), frechet_distance(mu2, other, mu1, sigma)
    assert forward == pytest.approx(backward, abs=1e-12 * scale)
    assert forward > (mu1 - mu2) @ (mu1 - mu2)


def test_frechet_distance_refuses_what_is_not_a_gaussian():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(3), np.diag([1.0, -1.0, 1.0]), np.zeros(3), eye)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"mean must be \[d\]"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), eye)
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))


def test_feature_statistics_are_mean_and_unbiased_covariance_in_float64():
    features = np.random.default_rng(2).standard_normal((50, 6)).astype(np.float32)
    mu, sigma = feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    centred = features.astype(np.float64) - features.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(features[:1])


# pytorch-fid's checkpoint layout, written down from torchvision's Inception3 (num_classes=1008,
# aux_logits=False) with pytorch-fid's FID blocks, which keep torchvision's parameters:
# (name, in channels, out channels, kernel) for every conv + batch-norm unit.
def _block_a(cin, pool):
    return [("branch1x1", cin, 64, 1), ("branch5x5_1", cin, 48, 1), ("branch5x5_2", 48, 64, 5),
            ("branch3x3dbl_1", cin, 64, 1), ("branch3x3dbl_2", 64, 96, 3), ("branch3x3dbl_3", 96, 96, 3),
            ("branch_pool", cin, pool, 1)]  # fmt: skip


def _block_b(cin):
    return [("branch3x3", cin, 384, 3), ("branch3x3dbl_1", cin, 64, 1), ("branch3x3dbl_2", 64, 96, 3),
            ("branch3x3dbl_3", 96, 96, 3)]  # fmt: skip


def _block_c(cin, c7):
    return [("branch1x1", cin, 192, 1), ("branch7x7_1", cin, c7, 1), ("branch7x7_2", c7, c7, (1, 7)),
            ("branch7x7_3", c7, 192, (7, 1)), ("branch7x7dbl_1", cin, c7, 1),
            ("branch7x7dbl_2", c7, c7, (7, 1)), ("branch7x7dbl_3", c7, c7, (1, 7)),
            ("branch7x7dbl_4", c7, c7, (7, 1)), ("branch7x7dbl_5", c7, 192, (1, 7)),
            ("branch_pool", cin, 192, 1)]  # fmt: skip


def _block_d(cin):
    return [("branch3x3_1", cin, 192, 1), ("branch3x3_2", 192, 320, 3), ("branch7x7x3_1", cin, 192, 1),
            ("branch7x7x3_2", 192, 192, (1, 7)), ("branch7x7x3_3", 192, 192, (7, 1)),
            ("branch7x7x3_4", 192, 192, 3)]  # fmt: skip


def _block_e(cin):
    return [("branch1x1", cin, 320, 1), ("branch3x3_1", cin, 384, 1), ("branch3x3_2a", 384, 384, (1, 3)),
            ("branch3x3_2b", 384, 384, (3, 1)), ("branch3x3dbl_1", cin, 448, 1),
            ("branch3x3dbl_2", 448, 384, 3), ("branch3x3dbl_3a", 384, 384, (1, 3)),
            ("branch3x3dbl_3b", 384, 384, (3, 1)), ("branch_pool", cin, 192, 1)]  # fmt: skip


PYTORCH_FID_UNITS = (
    [("Conv2d_1a_3x3", 3, 32, 3), ("Conv2d_2a_3x3", 32, 32, 3), ("Conv2d_2b_3x3", 32, 64, 3),
     ("Conv2d_3b_1x1", 64, 80, 1), ("Conv2d_4a_3x3", 80, 192, 3)]
    + [(f"{block}.{name}", *rest) for block, units in [
        ("Mixed_5b", _block_a(192, 32)), ("Mixed_5c", _block_a(256, 64)), ("Mixed_5d", _block_a(288, 64)),
        ("Mixed_6a", _block_b(288)), ("Mixed_6b", _block_c(768, 128)), ("Mixed_6c", _block_c(768, 160)),
        ("Mixed_6d", _block_c(768, 160)), ("Mixed_6e", _block_c(768, 192)), ("Mixed_7a", _block_d(768)),
        ("Mixed_7b", _block_e(1280)), ("Mixed_7c", _block_e(2048))] for name, *rest in units]
)  # fmt: skip


def pytorch_fid_shapes(with_num_batches_tracked: bool) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, cin, cout, kernel in PYTORCH_FID_UNITS:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)
        if with_num_batches_tracked:
            shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
    return shapes


@pytest.mark.parametrize("with_num_batches_tracked", [False, True])
def test_fid_inception_loads_pytorch_fid_key_layout_strictly(with_num_batches_tracked):
    """The checkpoint loads as is, whether or not it carries BatchNorm's num_batches_tracked
    (checkpoints saved before PyTorch 0.4.1 do not)."""
    shapes = pytorch_fid_shapes(with_num_batches_tracked)
    assert len(PYTORCH_FID_UNITS) == 94
    state = {k: torch.rand(s) if s else torch.tensor(0) for k, s in shapes.items()}
    model = FIDInception()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == pytorch_fid_shapes(with_num_batches_tracked=True)
    model.load_state_dict(state)
    key = "Mixed_7c.branch3x3dbl_3b.bn.running_var"
    assert torch.equal(model.Mixed_7c.branch3x3dbl_3b.bn.running_var, state[key])
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_fid_inception_returns_2048_features_for_any_input_size():
    """Any H x W is resized to 299 first (one small non-square batch here: each image costs a full
    299 x 299 pass)."""
    with torch.inference_mode():
        features = FIDInception()(torch.rand(2, 3, 75, 90))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_fid_inception_refuses_batches_that_are_not_rgb():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        FIDInception()(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="got shape"):
        FIDInception()(torch.rand(1, 1, 64, 64))


def _select_channels(unit: torch.nn.Module) -> None:
    """Make a conv + BN + ReLU unit pass input channel i to output channel i."""
    weight = torch.zeros_like(unit.conv.weight)
    weight[:, :, 0, 0] = torch.eye(*weight.shape[:2])
    unit.conv.weight.copy_(weight)
    unit.bn.running_var.fill_(1 - unit.bn.eps)  # sqrt(var + eps) = 1
    unit.bn.running_mean.zero_()
    unit.bn.weight.fill_(1)
    unit.bn.bias.zero_()


@pytest.mark.parametrize(("block", "pool"), [("Mixed_5b", "avg"), ("Mixed_6b", "avg"), ("Mixed_7b", "avg"),
                                             ("Mixed_7c", "max")])  # fmt: skip
@torch.no_grad()
def test_pool_branch_follows_the_tf_graph(block, pool):
    """TF's 3x3 average pool leaves padding out of the mean; Mixed_7c max-pools (pytorch-fid's patches).
    The expected pools are written out with unfold, independent of torch's pooling; tolerance 1e-6
    (float32 sums of nine terms)."""
    module = getattr(FIDInception(), block)
    _select_channels(module.branch_pool)
    channels = module.branch_pool.conv.out_channels
    x = torch.rand(1, module.branch_pool.conv.in_channels, 5, 6) + 0.5
    got = module(x)[:, -channels:]

    first = x[:, :channels]
    windows = F.unfold(first, kernel_size=3, padding=1).view(1, channels, 9, 5, 6)
    if pool == "avg":
        valid = F.unfold(torch.ones(1, 1, 5, 6), kernel_size=3, padding=1).view(1, 1, 9, 5, 6)
        expected = windows.sum(dim=2) / valid.sum(dim=2)
        zero_padded = windows.sum(dim=2) / 9
        assert not torch.allclose(got, zero_padded, atol=1e-3)
    else:
        padded = F.pad(first, (1, 1, 1, 1), value=float("-inf"))
        expected = F.unfold(padded, kernel_size=3).view(1, channels, 9, 5, 6).amax(dim=2)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def _halves_image(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return Image.fromarray(pixels)


def test_paper_view_squashes_to_512_without_crop():
    """The paper's protocol: PIL bicubic to 512 x 512, no crop, so both halves survive in the same
    proportion; already-512 images (the generations) pass through unchanged."""
    view = paper_view(_halves_image(800, 400))
    assert view.shape == (512, 512, 3) and view.dtype == np.float32
    assert view[:, :250, 0].min() > 0.99 and view[:, 262:, 2].min() > 0.99
    square = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    np.testing.assert_array_equal(paper_view(Image.fromarray(square)), square.astype(np.float32) / 255)


def test_clean_view_center_crops_then_resizes_to_299_in_clean_fid_units():
    """A 900 x 300 image keeps only its central 300 x 300 (all blue here: x > 450), and the output
    is clean-fid's [0, 255] image divided by 256 (so the network's 2x - 1 equals (x - 128) / 128)."""
    pixels = np.zeros((300, 900, 3), np.uint8)
    pixels[:, :300, 0] = 255  # red strip, cropped away
    pixels[:, 300:, 2] = 255
    view = clean_view(Image.fromarray(pixels))
    assert view.shape == (299, 299, 3)
    np.testing.assert_allclose(view[..., 0], 0, atol=1e-6)
    np.testing.assert_allclose(view[..., 2], 255 / 256, atol=1e-4)
