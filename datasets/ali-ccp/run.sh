#!/bin/sh
# PaddleRec's entry point for this data set: fetch and check train_data/ and test_data/ here.
# Flags pass through to datasets/ali_ccp/download.py (--train-url, --test-url, --out, --force, --timeout).
exec python3 "$(dirname "$0")/../ali_ccp/download.py" "$@"
