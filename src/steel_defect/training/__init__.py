"""Training: one Catalyst runner for classifier and segmenter, callbacks, engines, checkpoints."""
