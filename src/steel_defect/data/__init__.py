"""Data layer: RLE, label files, image decoding, datasets, transforms, folds, synthetic data."""
