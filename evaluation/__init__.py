"""Reproducing the paper's tables: prompt sets, sharded generation, FID, CLIP score, PRD."""
