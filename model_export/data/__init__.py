"""Data for mixed supervision: manifests of strong (mask) and weak (boxes-only) cases, volume I/O,
the synthetic benchmark generator, and 2D patch sampling for training."""
