"""Measurements: arrays in, results out. Confusion-matrix metrics, evaluation passes,
the analytic location prior, per-image information scores, bootstrap evidence and
train/val split consistency."""
