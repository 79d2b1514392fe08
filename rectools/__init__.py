"""A small runtime for PaddleRec-style model folders: config, data, metrics, checkpoints, loops."""
