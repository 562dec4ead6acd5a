"""CLIP text transformer(s) in the Hugging Face layout and the CLIP BPE tokenizer (a family's
conditioning from them: model/conditioning.py)."""

from text_encoder.clip import CLIPTextConfig, CLIPTextModel
from text_encoder.tokenizer import Tokenizer

__all__ = ["CLIPTextConfig", "CLIPTextModel", "Tokenizer"]
