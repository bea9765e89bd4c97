"""Inference: from model probabilities to masks (post-processing and its parameter search)."""
