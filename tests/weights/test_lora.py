"""weights.lora: LoRA files of every format (random weights, written here or by diffusers / peft) merged
into tiny SD 1.5 and SDXL models equal diffusers' `load_lora_weights` + `fuse_lora` on the same file;
every malformed or misplaced file is refused in one line, before any weight changes."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import pipeline
import weights
from solvers import preset
from tests.checkpoints import diffusers_pipeline, reference_models, write_checkpoint
from tests.helpers import one_thread
from tests.reference.unet import _ldm_key, ldm_state_dict
from weights import keymaps, lora, lora_keys

UNET_LAYERS = re.compile(
    r".*(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out|conv1|conv2"
    r"|conv_shortcut|time_emb_proj|downsamplers\.0\.conv|upsamplers\.0\.conv)"
)
TEXT_LAYERS = re.compile(r".*(q_proj|k_proj|v_proj|out_proj|fc1|fc2)")
RANK = 4
# Both sides add the same float32 rank-4 products to float32 weights, summed in another order (ours a
# matmul, peft a matmul or a conv); the weights and products are O(1), so each element may differ by a
# few float32 ulps (1.2e-7 each) of the largest term: 1e-6 of the largest weight bounds it.
TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():  # many small ops: far faster so on a shared machine
        yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_checkpoint(folder, "single", kind=kind) for kind in ("sd1", "sdxl")}


def modules(module: nn.Module, pattern: re.Pattern) -> dict[str, nn.Module]:
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and pattern.fullmatch(name)
    }


def random_layers(module: nn.Module, pattern: re.Pattern, seed: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """name -> (down, up) of a rank-4 LoRA on every matching layer: conv layers get a conv kernel down
    [r, in, kh, kw] and a 1 x 1 up (LoCon)."""
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, m in modules(module, pattern).items():
        out, rest = m.weight.shape[0], m.weight.shape[1:]
        down = torch.randn(RANK, *rest, generator=generator) / rest.numel() ** 0.5
        up = torch.randn(out, RANK, *([1, 1] if m.weight.ndim == 4 else []), generator=generator) / RANK**0.5
        layers[name] = (down, up)
    return layers


def kohya_file(path, parts: dict[str, dict], alpha: float | None, names=lambda component, name: name):
    """A kohya file: `lora_{prefix}_{name with _}.lora_down.weight` / `.lora_up.weight` (`.alpha`)."""
    tensors = {}
    for prefix, layers in parts.items():
        for name, (down, up) in layers.items():
            stem = f"lora_{prefix}_{names(prefix, name).replace('.', '_')}"
            tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = down, up
            if alpha is not None:
                tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


def sdxl_ldm_name(unet) -> callable:
    blocks = unet.config.layers_per_block + 1
    up_attention = ["CrossAttn" in kind for kind in unet.config.up_block_types]

    def name(prefix: str, module: str) -> str:
        if prefix != "unet":
            return module
        return _ldm_key(module + ".weight", blocks, up_attention).removesuffix(".weight")

    return name


def reference_fused(kind: str, path, strength: float, tmp_path):
    """diffusers' pipeline over the reference models with the LoRA loaded and fused; the fused U-Net in
    LDM names and the text encoders' state dicts."""
    refs = copy.deepcopy(reference_models(kind=kind))
    pipe = diffusers_pipeline(refs, tmp_path / "pipe")
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=strength)
    pipe.unload_lora_weights()
    fused = {"unet": ldm_state_dict(pipe.unet), "text_encoder": pipe.text_encoder.state_dict()}
    if kind == "sdxl":
        fused["text_encoder_2"] = pipe.text_encoder_2.state_dict()
    return fused


def merged(checkpoint, path, strength: float):
    sd = weights.load(checkpoint)
    lora.merge(sd, [(lora.read(path), strength)])
    return {c: m.state_dict() for c, m in lora.components(sd).items()}


def assert_fused_equal(ours: dict, reference: dict) -> None:
    """Every weight within TOLERANCE of the largest element of the reference tensor."""
    for component, state in reference.items():
        for key, ref in state.items():
            difference = (ours[component][key] - ref).abs().max().item()
            assert difference <= TOLERANCE * ref.abs().max().item(), f"{component} {key}"


def changed_layers(checkpoint, ours: dict) -> set[str]:
    plain = weights.load(checkpoint)
    before = {c: m.state_dict() for c, m in lora.components(plain).items()}
    return {f"{c}:{k}" for c in ours for k, t in ours[c].items() if not torch.equal(t, before[c][k])}


# --- parity with diffusers ----------------------------------------------------------------------------


def test_an_image_of_the_merged_lora_is_within_one_level_of_one_on_diffusers_fused_weights(
    checkpoints, tmp_path
):
    """The same run (paper-5, 64 px, seed 1) on our merge and on diffusers' fused U-Net and text encoder
    loaded into the same model: the weights differ by float32 summation order (<= 1e-6 relative), so
    the pixels may differ by one 8-bit level where a value sits on a rounding boundary, no more."""
    refs = reference_models(kind="sd1")
    parts = {
        "unet": random_layers(refs.unet, UNET_LAYERS, 1),
        "te": random_layers(refs.text_encoder, TEXT_LAYERS, 2),
    }
    path = kohya_file(tmp_path / "kohya.safetensors", parts, 2.0)
    ours, theirs = weights.load(checkpoints["sd1"]), weights.load(checkpoints["sd1"])
    lora.merge(ours, [(lora.read(path), 0.7)])
    fused = reference_fused("sd1", path, 0.7, tmp_path)
    for component, module in lora.components(theirs).items():
        module.load_state_dict(fused[component])
    plan = preset("paper-5")
    images = [
        pipeline.generate(pipeline.run_in_memory(sd, plan), [pipeline.Job("a cat", 1)])
        for sd in (ours, theirs)
    ]
    plain = pipeline.generate(
        pipeline.run_in_memory(weights.load(checkpoints["sd1"]), plan), [pipeline.Job("a cat", 1)]
    )
    assert (images[0].int() - images[1].int()).abs().max() <= 1
    assert not torch.equal(images[0], plain)  # the LoRA changes the image: the comparison can fail


@pytest.mark.parametrize("alpha", [None, 2.0])
def test_kohya_sd15_lora_with_conv_and_text_layers_equals_diffusers_fuse(checkpoints, tmp_path, alpha):
    refs = reference_models(kind="sd1")
    parts = {
        "unet": random_layers(refs.unet, UNET_LAYERS, 1),
        "te": random_layers(refs.text_encoder, TEXT_LAYERS, 2),
    }
    path = kohya_file(tmp_path / "kohya.safetensors", parts, alpha)
    ours = merged(checkpoints["sd1"], path, 0.7)
    assert_fused_equal(ours, reference_fused("sd1", path, 0.7, tmp_path))
    expected = len(parts["unet"]) + len(parts["te"])
    assert len(changed_layers(checkpoints["sd1"], ours)) == expected


def test_kohya_sdxl_lora_in_ldm_names_equals_diffusers_fuse(checkpoints, tmp_path):
    refs = reference_models(kind="sdxl")
    parts = {
        "unet": random_layers(refs.unet, UNET_LAYERS, 3),
        "te1": random_layers(refs.text_encoder, TEXT_LAYERS, 4),
        "te2": random_layers(refs.text_encoder_2, TEXT_LAYERS, 5),
    }
    path = kohya_file(tmp_path / "kohya-xl.safetensors", parts, 8.0, sdxl_ldm_name(refs.unet))
    assert lora.read(path).formats == ("kohya",)
    ours = merged(checkpoints["sdxl"], path, 1.0)
    assert_fused_equal(ours, reference_fused("sdxl", path, 1.0, tmp_path))
    assert len(changed_layers(checkpoints["sdxl"], ours)) == sum(len(p) for p in parts.values())


def test_dmd2_hybrid_kohya_prefix_with_diffusers_names_on_sdxl_equals_diffusers_fuse(checkpoints, tmp_path):
    refs = reference_models(kind="sdxl")
    path = kohya_file(tmp_path / "dmd2.safetensors", {"unet": random_layers(refs.unet, UNET_LAYERS, 6)}, 8.0)
    ours = merged(checkpoints["sdxl"], path, 1.0)
    assert_fused_equal(ours, reference_fused("sdxl", path, 1.0, tmp_path))


def peft_file(kind: str, path, alpha: int | None, old: bool = False, **options):
    """A LoRA written by peft (random A and B) and diffusers' save_lora_weights; `alpha` goes into the
    header's lora_adapter_metadata. `old`: the keys renamed to the older lora.down / lora.up format."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    refs = copy.deepcopy(reference_models(kind=kind))
    layers, metadata = {}, {}
    texts = [("text_encoder", refs.text_encoder)] + (
        [("text_encoder_2", refs.text_encoder_2)] if kind == "sdxl" else []
    )
    for component, module, pattern in [
        ("unet", refs.unet, UNET_LAYERS),
        *((c, m, TEXT_LAYERS) for c, m in texts),
    ]:
        config = LoraConfig(
            r=RANK,
            lora_alpha=alpha or RANK,
            init_lora_weights=False,
            target_modules=list(modules(module, pattern)),
            **options,
        )
        torch.manual_seed(len(layers))
        module.add_adapter(config) if component == "unet" else _peft_text(module, config)
        layers[component] = get_peft_model_state_dict(module)
        metadata[component] = config.to_dict() if alpha else None
    if old:
        for component, state in layers.items():
            down, up = (
                ("lora.down", "lora.up")
                if component == "unet"
                else ("lora_linear_layer.down", "lora_linear_layer.up")
            )
            layers[component] = {k.replace("lora_A", down).replace("lora_B", up): v for k, v in state.items()}
    pipeline = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    options = {f"{c}_lora_layers": s for c, s in layers.items() if c != "unet"}
    options |= {f"{c}_lora_adapter_metadata": m for c, m in metadata.items() if m and c != "unet"}
    pipeline.save_lora_weights(
        path.parent,
        unet_lora_layers=layers["unet"],
        weight_name=path.name,
        unet_lora_adapter_metadata=metadata["unet"],
        **options,
    )
    return path


def _peft_text(module, config):
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, module)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
@pytest.mark.parametrize("alpha", [None, 16])
def test_peft_lora_written_by_diffusers_equals_diffusers_fuse(checkpoints, tmp_path, kind, alpha):
    path = peft_file(kind, tmp_path / "peft.safetensors", alpha)
    read = lora.read(path)
    assert read.formats == ("peft",)
    assert {layer.scale for layer in read.layers} == {(alpha or RANK) / RANK}
    ours = merged(checkpoints[kind], path, 0.5)
    assert_fused_equal(ours, reference_fused(kind, path, 0.5, tmp_path))


def test_peft_alpha_pattern_and_rank_stabilised_scale_equal_diffusers_fuse(checkpoints, tmp_path):
    path = peft_file("sd1", tmp_path / "rs.safetensors", 16, alpha_pattern={"to_k": 2}, use_rslora=True)
    scales = {layer.name.rpartition(".")[2]: layer.scale for layer in lora.read(path).layers}
    assert scales["to_k"] == 2 / RANK**0.5 and scales["to_q"] == 16 / RANK**0.5
    ours = merged(checkpoints["sd1"], path, 1.0)
    assert_fused_equal(ours, reference_fused("sd1", path, 1.0, tmp_path))


def test_older_diffusers_lora_down_up_format_equals_diffusers_fuse(checkpoints, tmp_path):
    path = peft_file("sd1", tmp_path / "old.safetensors", None, old=True)
    assert lora.read(path).formats == ("diffusers",)
    ours = merged(checkpoints["sd1"], path, 1.0)
    assert_fused_equal(ours, reference_fused("sd1", path, 1.0, tmp_path))


# --- the merge itself ---------------------------------------------------------------------------------


def test_tucker_mid_lora_equals_its_three_convolutions_in_a_row(checkpoints, tmp_path):
    """A LoCon layer with lora_mid is down (1 x 1 conv) -> mid (3 x 3 conv) -> up (1 x 1 conv) beside the
    layer; the merged kernel must give the same output as that chain (float64, exact up to rounding)."""
    sd = weights.load(checkpoints["sd1"])
    name = "input_blocks.1.0.in_layers.2"
    conv = sd.unet.get_submodule(name)
    out, inp = conv.weight.shape[:2]
    g = torch.Generator().manual_seed(0)
    down, mid, up = (
        torch.randn(3, inp, 1, 1, generator=g),
        torch.randn(2, 3, 3, 3, generator=g),
        torch.randn(out, 2, 1, 1, generator=g),
    )
    stem = "lora_unet_down_blocks_0_resnets_0_conv1"
    tensors = {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_mid.weight": mid,
        f"{stem}.lora_up.weight": up,
        f"{stem}.alpha": torch.tensor(1.5),
    }
    save_file(tensors, tmp_path / "tucker.safetensors")
    x = torch.randn(1, inp, 8, 8, generator=g, dtype=torch.float64)
    before = conv.weight.double().clone()
    lora.merge(sd, [(lora.read(tmp_path / "tucker.safetensors"), 0.8)])
    chain = F.conv2d(F.conv2d(F.conv2d(x, down.double()), mid.double(), padding=1), up.double())
    expected = F.conv2d(x, before, padding=1) + 0.8 * 1.5 / 3 * chain
    got = F.conv2d(x, conv.weight.double(), padding=1)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-6  # float32 weights


def test_several_loras_add_up_as_diffusers_fuses_two_adapters_and_a_half_model_rounds_once_each(
    checkpoints, tmp_path
):
    refs = reference_models(kind="sd1")
    first = kohya_file(tmp_path / "a.safetensors", {"unet": random_layers(refs.unet, UNET_LAYERS, 7)}, 2.0)
    second = kohya_file(tmp_path / "b.safetensors", {"unet": random_layers(refs.unet, UNET_LAYERS, 8)}, None)
    loras = [(lora.read(first), 1.0), (lora.read(second), -0.5)]
    sd = weights.load(checkpoints["sd1"])
    lora.merge(sd, loras)
    pipe = diffusers_pipeline(copy.deepcopy(refs), tmp_path / "pipe")
    pipe.load_lora_weights(str(first), adapter_name="a")
    pipe.load_lora_weights(str(second), adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, -0.5])
    pipe.fuse_lora(adapter_names=["a", "b"])
    pipe.unload_lora_weights()
    assert_fused_equal({"unet": sd.unet.state_dict()}, {"unet": ldm_state_dict(pipe.unet)})
    half = weights.load(checkpoints["sd1"], dtype=torch.float16)
    lora.merge(half, loras)
    for key, tensor in half.unet.state_dict().items():
        assert tensor.dtype == torch.float16
        expected = sd.unet.state_dict()[key]
        # the same float16 start (the weights are float16 numbers), one float16 rounding per LoRA:
        # at most 2 half-ulps of the largest element (ulp 2^-10 relative)
        assert (tensor.float() - expected).abs().max() <= 2**-10 * expected.abs().max(), key


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_every_adaptable_unet_layer_has_a_diffusers_name_that_keymaps_maps_back(kind):
    refs = reference_models(kind=kind)
    diffusers_keys = set(refs.unet.state_dict())
    rules = keymaps.diffusers_unet(diffusers_keys)
    ldm = {targets[0].name: key for key, targets in rules.items()}
    layers = lora_keys.adaptable((name, tuple(t.shape)) for name, t in ldm_state_dict(refs.unet).items())
    assert layers
    for module in layers:
        name = lora_keys.diffusers_unet_module(module, refs.unet.config.layers_per_block)
        assert ldm[module + ".weight"] == name + ".weight"


def test_record_names_the_file_its_sha256_and_the_strength(tmp_path):
    refs = reference_models(kind="sd1")
    path = kohya_file(tmp_path / "r.safetensors", {"unet": random_layers(refs.unet, UNET_LAYERS, 9)}, None)
    assert lora.record(lora.read(path), 0.25) == {
        "file": "r.safetensors",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "strength": 0.25,
    }


# --- refusals -----------------------------------------------------------------------------------------


def one_line_refusal(call, match: str) -> str:
    with pytest.raises(weights.WeightsError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def layer(
    name="lora_unet_down_blocks_0_attentions_0_proj_in", out=32, inp=32, rank=4, up_rank=None, value=1.0
):
    down = torch.full((rank, inp, 1, 1), value)
    return {
        f"{name}.lora_down.weight": down,
        f"{name}.lora_up.weight": torch.ones(out, up_rank or rank, 1, 1),
    }


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        (layer(up_rank=3), "has rank 4"),
        (layer(value=float("nan")), "NaN or infinite"),
        (layer(value=float("inf")), "NaN or infinite"),
        ({"model.weight": torch.ones(2)}, "is not a LoRA tensor"),
        ({"lora_unet_x.lora_down.weight": torch.ones(4, 8)}, "has no up weight"),
        (
            {
                "lora_unet_x.lora_down.weight": torch.ones(4, 8),
                "lora_unet_x.lora_up.weight": torch.ones(8, 4),
                "lora_unet_x.alpha": torch.ones(2),
            },
            "not one number",
        ),
        ({"lora_unet_x.lora_down.weight": torch.ones(4, 8), "lora_unet_x.dora_scale": torch.ones(8)}, "DoRA"),
        ({}, "holds no tensors"),
    ],
)
def test_a_malformed_lora_file_is_refused_when_read(tmp_path, tensors, match):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path)
    message = one_line_refusal(lambda: lora.read(path), match)
    assert str(path) in message


@pytest.mark.parametrize(
    ("metadata", "match"),
    [('{"unet.use_dora": true}', "a DoRA, which is not supported"), ("[1", "not a JSON object")],
)
def test_peft_metadata_that_cannot_be_followed_is_refused(tmp_path, metadata, match):
    path = tmp_path / "meta.safetensors"
    save_file(layer(), path, metadata={"lora_adapter_metadata": metadata})
    one_line_refusal(lambda: lora.read(path), match)


def test_a_truncated_lora_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(layer(), path)
    path.write_bytes(path.read_bytes()[:-10])
    one_line_refusal(lambda: lora.read(path), "truncated")


def refused_merge(checkpoint, loras, match: str) -> str:
    """merge refuses with one line and changes no weight."""
    sd = weights.load(checkpoint)
    before = {c: {k: t.clone() for k, t in m.state_dict().items()} for c, m in lora.components(sd).items()}
    message = one_line_refusal(lambda: lora.merge(sd, loras), match)
    for component, module in lora.components(sd).items():
        for key, tensor in module.state_dict().items():
            assert torch.equal(tensor, before[component][key]), key
    return message


def test_a_key_that_matches_no_layer_is_refused_naming_it(checkpoints, tmp_path):
    save_file(layer("lora_unet_down_blocks_0_attentions_0_nowhere"), tmp_path / "x.safetensors")
    message = refused_merge(
        checkpoints["sd1"], [(lora.read(tmp_path / "x.safetensors"), 1.0)], "does not have"
    )
    assert "lora_unet_down_blocks_0_attentions_0_nowhere.lora_down.weight" in message


def test_one_layer_named_in_both_unet_trees_is_refused(checkpoints, tmp_path):
    both = layer() | layer("lora_unet_input_blocks_1_1_proj_in")
    save_file(both, tmp_path / "both.safetensors")
    refused_merge(checkpoints["sd1"], [(lora.read(tmp_path / "both.safetensors"), 1.0)], "both adapt")


def test_a_shape_that_does_not_fit_is_refused_and_an_earlier_good_lora_is_not_merged(checkpoints, tmp_path):
    refs = reference_models(kind="sd1")
    good = kohya_file(
        tmp_path / "good.safetensors", {"unet": random_layers(refs.unet, UNET_LAYERS, 10)}, None
    )
    save_file(layer(inp=40), tmp_path / "wide.safetensors")
    loras = [(lora.read(good), 1.0), (lora.read(tmp_path / "wide.safetensors"), 1.0)]
    refused_merge(checkpoints["sd1"], loras, r"makes a \[32, 40, 1, 1\] update, which does not fit")


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "1", True])
def test_a_strength_that_is_not_a_finite_number_is_refused(checkpoints, tmp_path, strength):
    save_file(layer(), tmp_path / "ok.safetensors")
    refused_merge(
        checkpoints["sd1"], [(lora.read(tmp_path / "ok.safetensors"), strength)], "not a finite number"
    )


def test_an_sdxl_lora_on_sd15_and_an_sd15_lora_on_sdxl_are_refused_naming_the_family(checkpoints, tmp_path):
    xl = reference_models(kind="sdxl")
    parts = {
        "unet": random_layers(xl.unet, UNET_LAYERS, 11),
        "te2": random_layers(xl.text_encoder_2, TEXT_LAYERS, 12),
    }
    path = kohya_file(tmp_path / "xl.safetensors", parts, None, sdxl_ldm_name(xl.unet))
    refused_merge(checkpoints["sd1"], [(lora.read(path), 1.0)], "made for SDXL")
    sd15 = reference_models(kind="sd1")
    path = kohya_file(
        tmp_path / "sd15.safetensors", {"unet": random_layers(sd15.unet, UNET_LAYERS, 13)}, None
    )
    refused_merge(checkpoints["sdxl"], [(lora.read(path), 1.0)], r"made for SD 1\.x")
