"""CLIP ViT-B/32 and CLIP score: the model matches transformers' CLIPModel, preprocessing matches
CLIPImageProcessor, and the score is torchmetrics' CLIPScore computed from those pieces.

Tolerances: embeddings max |ours - ref| / max |ref| <= 1e-5 in float32 (same math, different
summation order, leaves a few 1e-7); preprocessed pixels within 1e-6 (the same PIL resize, then float32
rescale/normalize); scores within 1e-4 on the 0-100 scale (float32 embeddings in the reference).
"""

import json

import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from PIL import Image

from evaluation.clip import CLIP_MEAN, CLIP_STD, CLIPModel, CLIPVisionConfig, load_clip, preprocess
from evaluation.clip_score import clip_score, mean_score, score_folder, similarities
from tests.helpers import rel_err
from tests.reference.clip import (
    B32_TEXT,
    B32_VISION,
    SMALL_TEXT,
    SMALL_VISION,
    hf_clip_model,
    write_tokenizer_files,
)
from text_encoder import CLIPTextConfig, Tokenizer

PROMPTS = ["a photo of a cat", "an astronaut riding a horse on mars", "a bowl of fruit, oil painting", ""]
SMALL_TEXT_OURS = CLIPTextConfig(hidden_size=64, intermediate_size=128, layers=3, heads=2, projection_dim=32)
SMALL_VISION_OURS = CLIPVisionConfig(
    hidden_size=64, intermediate_size=128, layers=2, heads=2, projection_dim=32
)


def random_images(shapes, seed=0) -> list[torch.Tensor]:
    """Noise images, uint8 [3, H, W]: the hardest case for resampling differences."""
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]


def image_processor() -> transformers.CLIPImageProcessor:
    """openai/clip-vit-base-patch32's preprocessor_config.json."""
    return transformers.CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


def torchmetrics_similarities(hf, images, prompts, tokenizer_dir) -> torch.Tensor:
    """What torchmetrics' `_clip_score_update` computes: CLIPProcessor (image processor + fast
    tokenizer, padding=True), get_image_features / get_text_features, L2 normalize, 100 * dot."""
    tokenizer = transformers.CLIPTokenizerFast(*map(str, write_tokenizer_files(tokenizer_dir)))
    pixels = image_processor()(images=images, return_tensors="pt")["pixel_values"]
    text = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_features = hf.get_image_features(pixel_values=pixels)
        text_features = hf.get_text_features(**text)
    image_features = image_features / image_features.norm(p=2, dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
    return 100 * (image_features * text_features).sum(axis=-1)


IMAGES = random_images([(512, 512), (300, 500), (640, 480), (256, 256)])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Random small CLIP, its visual projection's sign chosen so that the test images' mean score is
    positive: otherwise the floor at 0 would hide any difference in the scores."""
    hf = hf_clip_model(SMALL_TEXT, SMALL_VISION, projection_dim=32)
    if torchmetrics_similarities(hf, IMAGES, PROMPTS, tmp_path_factory.mktemp("tok")).mean() < 0:
        with torch.no_grad():
            hf.visual_projection.weight.neg_()
    ours = CLIPModel(SMALL_TEXT_OURS, SMALL_VISION_OURS)
    ours.load_state_dict(hf.state_dict())  # strict: the names are transformers' CLIPModel names
    return hf, ours.eval()


def test_image_and_text_embeddings_match_transformers(small):
    hf, ours = small
    pixels = torch.randn(3, 3, 224, 224)
    ids = Tokenizer.sd1()(PROMPTS[:3])
    with torch.no_grad():
        assert rel_err(ours.image_embeds(pixels), hf.get_image_features(pixel_values=pixels)) <= 1e-5
        assert rel_err(ours.text_embeds(ids), hf.get_text_features(input_ids=ids)) <= 1e-5


def test_vit_b32_has_the_official_names_and_shapes():
    with torch.device("meta"):  # shapes only, no memory
        cfg = transformers.CLIPConfig(text_config=B32_TEXT, vision_config=B32_VISION, projection_dim=512)
        ref = transformers.CLIPModel(cfg).state_dict()
        mine = CLIPModel.vit_b32().state_dict()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in ref.items()}


@pytest.mark.parametrize(
    "shape", [(512, 512), (300, 500), (640, 480), (100, 150), (225, 224), (224, 224), (1024, 768)]
)
def test_preprocess_matches_clip_image_processor(shape):
    image = random_images([shape])
    expected = image_processor()(images=image, return_tensors="pt")["pixel_values"]
    assert (preprocess(image) - expected).abs().max() <= 1e-6


def test_preprocess_takes_pil_images_of_any_mode():
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (300, 260, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (200, 330), dtype=np.uint8), "L"),
    ]
    expected = image_processor()(images=images, return_tensors="pt")["pixel_values"]
    assert (preprocess(images) - expected).abs().max() <= 1e-6


def test_preprocess_refuses_float_images():
    with pytest.raises(TypeError, match="uint8"):
        preprocess([torch.rand(3, 64, 64)])


def test_similarities_and_score_match_torchmetrics_definition(small, tmp_path):
    hf, ours = small
    expected = torchmetrics_similarities(hf, IMAGES, PROMPTS, tmp_path)
    got = similarities(IMAGES, PROMPTS, ours, Tokenizer.sd1(), batch_size=3)
    assert (got - expected).abs().max() <= 1e-4
    assert expected.mean() > 1  # the floor does not hide the comparison
    assert abs(clip_score(IMAGES, PROMPTS, ours, Tokenizer.sd1()) - expected.mean().item()) <= 1e-4


def test_score_matches_torchmetrics_when_it_imports(small, tmp_path):
    """torchmetrics is installed without its dependencies here and may not import; compare when it does."""
    tm = pytest.importorskip("torchmetrics.functional.multimodal.clip_score")
    hf, ours = small
    tokenizer = transformers.CLIPTokenizerFast(*map(str, write_tokenizer_files(tmp_path)))
    processor = transformers.CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    expected = tm.clip_score(IMAGES, PROMPTS, model_name_or_path=lambda: (hf, processor)).item()
    assert expected > 1
    assert abs(clip_score(IMAGES, PROMPTS, ours, Tokenizer.sd1()) - expected) <= 1e-4


def test_the_floor_applies_to_the_mean_not_to_each_image():
    """torchmetrics' CLIPScore.compute(): max(sum / n, 0)."""
    assert mean_score(torch.tensor([30.0, -10.0])) == 10.0
    assert mean_score(torch.tensor([-5.0, 1.0])) == 0.0


def test_images_and_prompts_must_pair_up(small):
    _, ours = small
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        similarities(random_images([(64, 64)] * 2), PROMPTS[:3], ours, Tokenizer.sd1())


def test_load_clip_reads_an_hf_safetensors_file(small, tmp_path):
    hf, ours = small
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    # older hub files also carry the position_ids buffers; they are ignored
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(50)[None]
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    loaded = load_clip(tmp_path / "model.safetensors", text=SMALL_TEXT_OURS, vision=SMALL_VISION_OURS)
    pixels, ids = torch.randn(2, 3, 224, 224), Tokenizer.sd1()(PROMPTS[:2])
    with torch.no_grad():
        assert torch.equal(loaded.image_embeds(pixels), ours.image_embeds(pixels))
        assert torch.equal(loaded.text_embeds(ids), ours.text_embeds(ids))


def test_load_clip_refuses_a_file_of_another_model(small, tmp_path):
    hf, _ = small
    text_only = {k: v.contiguous() for k, v in hf.state_dict().items() if k.startswith("text_model.")}
    safetensors.torch.save_file(text_only, tmp_path / "text.safetensors")
    with pytest.raises(ValueError, match=r"missing \[.*'vision_model\.embeddings"):
        load_clip(tmp_path / "text.safetensors", text=SMALL_TEXT_OURS, vision=SMALL_VISION_OURS)


def write_manifest(path, indices):
    records = [{"index": i, "prompt": PROMPTS[i % 4], "seed": i, "reference": None} for i in indices]
    lines = [json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n")


def test_score_folder_names_missing_images(tmp_path):
    write_manifest(tmp_path / "manifest.jsonl", range(3))
    Image.new("RGB", (64, 64)).save(tmp_path / "00001.png")
    with pytest.raises(FileNotFoundError, match=r"2 of the 3 images .* 00000\.png, 00002\.png"):
        score_folder(tmp_path, tmp_path / "manifest.jsonl", tmp_path / "unused.safetensors")


def test_score_folder_refuses_a_manifest_line_without_a_prompt(tmp_path):
    good = '{"index": 0, "prompt": "a cat", "seed": 0, "reference": null}'
    (tmp_path / "manifest.jsonl").write_text(f'{good}\n\n{{"index": 1, "seed": 1, "reference": null}}\n')
    with pytest.raises(ValueError, match=r"manifest\.jsonl line 3 is not a manifest record \(no 'prompt'\)"):
        score_folder(tmp_path, tmp_path / "manifest.jsonl", tmp_path / "unused.safetensors")


@pytest.mark.slow
def test_score_folder_with_full_size_vit_b32_matches_torchmetrics_definition(tmp_path):
    """End to end at the official size: weights file, PNG folder, manifest."""
    hf = hf_clip_model(B32_TEXT, B32_VISION, projection_dim=512)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors"
    )
    images = random_images([(512, 512), (512, 512), (384, 640), (512, 512), (300, 300)], seed=3)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:05d}.png")
    write_manifest(tmp_path / "manifest.jsonl", range(len(images)))
    prompts = [PROMPTS[i % 4] for i in range(len(images))]
    expected = max(torchmetrics_similarities(hf, images, prompts, tmp_path).mean().item(), 0)
    got = score_folder(tmp_path, tmp_path / "manifest.jsonl", tmp_path / "model.safetensors", batch_size=2)
    assert abs(got - expected) <= 1e-4
