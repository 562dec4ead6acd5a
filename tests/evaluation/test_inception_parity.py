"""FIDInception against pytorch-fid's InceptionV3 given the same random state dict.

pytorch-fid builds its network from torchvision, which does not import beside the project's CPU
torch; `tests/inception_parity_env.sh` runs this module in a virtual environment where it does.
"""

import pytest
import torch

torchvision = pytest.importorskip(
    "torchvision", reason="pytorch-fid needs torchvision; run tests/inception_parity_env.sh"
)
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")

from evaluation.fid import FIDInception  # noqa: E402


def random_checkpoint(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A stand-in for pt_inception-2015-12-05 with every entry random: torchvision's Inception3 with
    1008 classes and no aux head has the checkpoint's keys (pytorch-fid's FID blocks add none).
    He-scaled convolutions and batch-norm statistics near 1 keep activations O(1) through the net."""
    template = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=False
    ).state_dict()
    state = {}
    for key, value in template.items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2 / fan_in) ** 0.5
        elif key.endswith(("bn.weight", "bn.running_var")):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        else:  # batch-norm bias and running mean, the classifier
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
    return state


@pytest.fixture(scope="module")
def networks():
    state = random_checkpoint(torch.Generator().manual_seed(0))
    # pytorch-fid downloads the checkpoint inside its constructor; hand it the random one instead
    original = pytorch_fid_inception.load_state_dict_from_url
    pytorch_fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        reference = pytorch_fid_inception.InceptionV3([3]).eval()
    finally:
        pytorch_fid_inception.load_state_dict_from_url = original
    ours = FIDInception()
    ours.load_state_dict(state)
    return ours, reference


@pytest.mark.parametrize("size", [(512, 512), (200, 150)])
@torch.no_grad()
def test_features_match_pytorch_fid(networks, size):
    """Max abs difference <= 1e-5 of the largest reference feature: the same float32 operations in
    the same order, except the final mean, computed by adaptive_avg_pool2d there."""
    ours, reference = networks
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(size[1]))
    expected = reference(images)[0].flatten(1)
    got = ours(images)
    assert got.shape == expected.shape == (2, 2048)
    assert expected.abs().max() > 1e-2  # activations did not vanish: the comparison means something
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    print(f"{size}: max rel. error {error:.2e}")
    assert error <= 1e-5
