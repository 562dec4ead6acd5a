"""weights.unet_file: a U-Net state dict in the diffusers or the LDM layout, as safetensors or as a
weights-only pickle (DMD2's `.bin`), loads into the same U-Net as the checkpoint holding the same weights;
a pickle with anything but tensors, a U-Net of the other family or an incomplete one is refused."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

import weights
from tests.checkpoints import reference_models, write_checkpoint
from tests.helpers import one_thread
from tests.reference.unet import ldm_state_dict
from weights import unet_file


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The U-Nets weights.load gives for the tiny SD 1.5 and SDXL checkpoints."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        kind: weights.load(write_checkpoint(folder, "single", kind=kind)).unet for kind in ("sd1", "sdxl")
    }


def assert_same_unet(unet, expected) -> None:
    assert unet.config == expected.config
    state = expected.state_dict()
    assert unet.state_dict().keys() == state.keys()
    for key, tensor in unet.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def save(path, tensors):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    else:
        torch.save(tensors, path)
    return path


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
@pytest.mark.parametrize(
    ("layout", "name"),
    [
        ("diffusers", "unet.safetensors"),
        ("ldm", "sdxl_lightning_8step_unet.safetensors"),
        ("prefixed", "unet.safetensors"),
        ("diffusers", "dmd2_unet_fp16.bin"),
    ],
)
def test_a_unet_file_in_either_layout_loads_the_checkpoints_unet(loaded, tmp_path, kind, layout, name):
    refs = reference_models(kind=kind)
    state = {
        "diffusers": refs.unet.state_dict(),
        "ldm": ldm_state_dict(refs.unet),
        "prefixed": ldm_state_dict(refs.unet, prefix="model.diffusion_model."),
    }[layout]
    path = save(tmp_path / name, {k: v.half() for k, v in state.items()})  # the weights are float16 numbers
    assert_same_unet(unet_file.load(path, kind), loaded[kind])
    half = unet_file.load(path, kind, torch.float16)
    assert all(t.dtype == torch.float16 for t in half.state_dict().values())


def test_record_names_the_file_and_its_sha256(tmp_path):
    path = save(tmp_path / "u.safetensors", reference_models().unet.state_dict())
    assert unet_file.record(path) == {
        "file": "u.safetensors",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def refused(path, kind: str, match: str) -> str:
    with pytest.raises(weights.WeightsError, match=match) as info:
        unet_file.load(path, kind)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


class Payload:
    """Unpickling this calls os.system: the weights-only unpickler must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_with_a_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = save(tmp_path / "evil.bin", {"conv_in.weight": torch.ones(2), "x": Payload(marker)})
    refused(path, "sd1", "not a weights-only PyTorch zip file")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"conv_in.weight": torch.ones(2), "step": 5}, "'step' is a int, not a tensor"),
        ([torch.ones(2)], "holds a list, not a state dict"),
        ({"conv_in.weight": torch.ones(2, dtype=torch.int32)}, "stored as int32"),
    ],
)
def test_a_pickle_holding_anything_but_named_float_tensors_is_refused(tmp_path, content, match):
    refused(save(tmp_path / "u.bin", content), "sd1", match)


def test_an_old_style_pickle_is_refused_since_it_cannot_be_mapped(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(reference_models().unet.state_dict(), path, _use_new_zipfile_serialization=False)
    refused(path, "sd1", "not a weights-only PyTorch zip file")


def test_a_unet_of_the_other_family_is_refused(tmp_path):
    xl = save(tmp_path / "xl.safetensors", reference_models(kind="sdxl").unet.state_dict())
    refused(xl, "sd1", "holds an SDXL U-Net .* but the model is SD 1.x")
    sd15 = save(tmp_path / "sd15.safetensors", reference_models(kind="sd1").unet.state_dict())
    refused(sd15, "sdxl", "holds an SD 1.x U-Net .* but the model is SDXL")


def test_an_incomplete_unet_or_a_full_checkpoint_is_refused(tmp_path):
    state = dict(reference_models().unet.state_dict())
    del state["down_blocks.0.attentions.0.proj_in.weight"]
    refused(save(tmp_path / "cut.safetensors", state), "sd1", "not a complete U-Net: 1 missing")
    full = write_checkpoint(tmp_path, "single")
    refused(full, "sd1", "holds more than a U-Net")
