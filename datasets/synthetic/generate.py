#!/usr/bin/env python3
"""Synthetic Ali-CCP-shaped impressions with their ground truth, or lines of the real data's shape:

    python datasets/synthetic/generate.py --out DIR --train 30000 --test 10000 --seed 0 \
        --selection-bias 0.5 --ctr 0.04 --cvr 0.05 [--gzip] [--force]
    python datasets/synthetic/generate.py --shape real --out DIR --train 200000 --test 1000 [--md5]

The generator itself is the model folder's synthetic.py (models/multitask/escm2/synthetic.py),
where the bias study imports it; --help lists every parameter."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from rectools.model_loader import import_model_package, model_module  # noqa: E402

if __name__ == "__main__":
    package = import_model_package(os.path.join(REPO, "models", "multitask", "escm2"))
    sys.exit(model_module(package, "synthetic", "generator").main())
