"""The CLIP text transformer matches transformers' CLIPTextModel(WithProjection) on the official key
layout: every hidden state, the last hidden state and the pooled/projected output.

Tolerance: max |ours - ref| / max |ref| <= 1e-5 in float32. Both sides run the same float32 math in a
different order (fused SDPA vs eager softmax attention), which leaves errors of a few 1e-7 relative;
1e-5 still catches any wrong mask, scale, activation or layer order (those give errors of order 1).
"""

import warnings

import pytest
import torch

from tests.helpers import rel_err
from tests.reference.clip import B32_TEXT, BIGG_TEXT, SD1_TEXT, SMALL_TEXT, hf_text_model
from text_encoder import CLIPTextConfig, CLIPTextModel, Tokenizer

PROMPTS = ["a photo of a cat", "", "An astronaut riding a horse on Mars, highly detailed, 8k"]


def ours_from(hf_model, **config) -> CLIPTextModel:
    model = CLIPTextModel(CLIPTextConfig(**config))
    model.load_state_dict(hf_model.state_dict())  # strict: the names are the official ones
    return model.eval()


def small_config(**overrides) -> dict:
    return dict(hidden_size=64, intermediate_size=128, layers=3, heads=2, **overrides)


@pytest.fixture(scope="module")
def small():
    hf = hf_text_model(SMALL_TEXT)
    return hf, ours_from(hf, **small_config())


@pytest.mark.parametrize("batch", [1, 3])
def test_every_hidden_state_matches_transformers(small, batch):
    hf, ours = small
    ids = Tokenizer.sd1()(PROMPTS[:batch])
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        assert rel_err(ours(ids), ref.last_hidden_state) <= 1e-5
        for k in range(-4, 4):
            assert rel_err(ours(ids, layer=k, final_norm=False), ref.hidden_states[k]) <= 1e-5, k


def test_penultimate_layer_with_final_norm_is_clip_skip_2(small):
    hf, ours = small
    ids = Tokenizer.sd1()(PROMPTS)
    with torch.no_grad():
        ref = hf.text_model.final_layer_norm(hf(ids, output_hidden_states=True).hidden_states[-2])
        assert rel_err(ours(ids, layer=-2), ref) <= 1e-5


def test_pooled_without_projection_is_the_eos_state(small):
    hf, ours = small
    ids = Tokenizer.sd1()(PROMPTS)
    with torch.no_grad():
        assert rel_err(ours.pooled(ids), hf(ids).pooler_output) <= 1e-5


@pytest.mark.parametrize("eos_token_id", [2, 49407])
@pytest.mark.parametrize("pad_id", [49407, 0])
def test_pooled_projection_matches_text_model_with_projection(eos_token_id, pad_id):
    """Both transformers eos rules (legacy argmax, first eos id) and both paddings agree with ours."""
    hf = hf_text_model(SMALL_TEXT, projection_dim=32, eos_token_id=eos_token_id)
    ours = ours_from(hf, **small_config(projection_dim=32))
    ids = Tokenizer.sd1(pad_id=pad_id)(PROMPTS)
    with torch.no_grad():
        assert rel_err(ours.pooled(ids), hf(ids).text_embeds) <= 1e-5


@pytest.mark.parametrize("layer", [-2, 1, 0])
def test_hidden_and_pooled_is_one_pass_of_both(layer):
    """SDXL's bigG conditioning: the penultimate state (no final LN) and the projected pooled vector."""
    hf = hf_text_model(SMALL_TEXT, projection_dim=32)
    ours = ours_from(hf, **small_config(projection_dim=32))
    ids = Tokenizer.sd1(pad_id=0)(PROMPTS)
    with torch.no_grad():
        hidden, pooled = ours.hidden_and_pooled(ids, layer)
        ref = hf(ids, output_hidden_states=True)
        assert rel_err(hidden, ref.hidden_states[layer]) <= 1e-5
        assert rel_err(pooled, ref.text_embeds) <= 1e-5
        assert torch.equal(hidden, ours(ids, layer=layer, final_norm=False))
        assert torch.equal(pooled, ours.pooled(ids))
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        ours.hidden_and_pooled(ids, 5)


def test_exact_gelu_variant_matches_transformers():
    """bigG (SDXL's second encoder) uses exact erf GELU instead of quick_gelu."""
    hf = hf_text_model(dict(SMALL_TEXT, hidden_act="gelu"), projection_dim=64)
    ours = ours_from(hf, **small_config(activation="gelu", projection_dim=64))
    ids = Tokenizer.sd1(pad_id=0)(PROMPTS)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        assert rel_err(ours(ids, layer=-2, final_norm=False), ref.hidden_states[-2]) <= 1e-5
        assert rel_err(ours.pooled(ids), ref.text_embeds) <= 1e-5


def test_shorter_sequences_use_the_first_positions(small):
    hf, ours = small
    ids = Tokenizer.sd1()(PROMPTS)[:, :20]
    with torch.no_grad():
        assert rel_err(ours(ids), hf(ids).last_hidden_state) <= 1e-5


@pytest.mark.slow
def test_full_size_sd1_text_encoder_matches_transformers():
    hf = hf_text_model(SD1_TEXT)
    ours = ours_from(hf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = Tokenizer.sd1()([*PROMPTS, "word " * 100])
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        out = ours(ids)
        assert out.shape == (4, 77, 768)
        assert rel_err(out, ref.last_hidden_state) <= 1e-5
        assert rel_err(ours(ids, layer=-2, final_norm=False), ref.hidden_states[-2]) <= 1e-5


@pytest.mark.parametrize(
    "ours, hf_config, projection_dim",
    [
        (CLIPTextConfig.sd1(), SD1_TEXT, None),
        (CLIPTextConfig.vit_b32(), B32_TEXT, 512),
        (CLIPTextConfig.bigg(), BIGG_TEXT, 1280),
    ],
    ids=["sd1", "vit_b32", "bigg"],
)
def test_preset_configs_have_the_official_names_and_shapes(ours, hf_config, projection_dim):
    with torch.device("meta"):  # shapes only, no memory
        ref = hf_text_model(hf_config, projection_dim, randomize=False).state_dict()
        mine = CLIPTextModel(ours).state_dict()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in ref.items()}


def test_position_ids_buffer_in_a_checkpoint_is_ignored(small):
    hf, _ = small
    state = dict(hf.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    CLIPTextModel(CLIPTextConfig(**small_config())).load_state_dict(state)  # strict, no error


def test_hidden_state_index_out_of_range_is_refused(small):
    _, ours = small
    ids = Tokenizer.sd1()("a cat")
    with pytest.raises(ValueError, match=r"indexed -4\.\.3"):
        ours(ids, layer=4)
    with pytest.raises(ValueError, match="out of range"):
        ours(ids, layer=-5)


def test_bad_token_ids_are_refused(small):
    _, ours = small
    with pytest.raises(TypeError, match="integer tensor"):
        ours(torch.zeros(1, 77))
    with pytest.raises(ValueError, match=r"shape \[batch, <= 77\]"):
        ours(torch.zeros(77, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \[1, 78\]"):
        ours(torch.zeros(1, 78, dtype=torch.long))


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation 'relu'"):
        CLIPTextConfig(activation="relu")
