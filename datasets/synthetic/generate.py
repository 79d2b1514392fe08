#!/usr/bin/env python3
"""Synthetic Ali-CCP-shaped impressions with their ground truth, or lines of the real data's shape:

    python datasets/synthetic/generate.py --out DIR --train 30000 --test 10000 --seed 0 \
        --selection-bias 0.5 --ctr 0.04 --cvr 0.05 [--gzip] [--force]
    python datasets/synthetic/generate.py --shape real --out DIR --train 200000 --test 1000 [--md5]

The generator itself is datasets/synthetic/generator.py, where the bias study imports it; --help
lists every parameter."""
import sys

from datasets.synthetic import generator

if __name__ == "__main__":
    sys.exit(generator.main())
