"""CLIP text transformer(s) in the Hugging Face layout, the CLIP BPE tokenizer, and SDXL's text
conditioning from its two encoders."""

from text_encoder.clip import CLIPTextConfig, CLIPTextModel
from text_encoder.sdxl import sdxl_text
from text_encoder.tokenizer import Tokenizer

__all__ = ["CLIPTextConfig", "CLIPTextModel", "Tokenizer", "sdxl_text"]
