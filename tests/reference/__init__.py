"""Reference models (diffusers / transformers) and independent key maps used only by the tests."""
