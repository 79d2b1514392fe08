"""Per-epoch metric records: one JSON object per line in <model_save_path>/*_metrics.jsonl."""
import json
import math
import os

from . import checkpoint

TRAIN, INFER = "train_metrics.jsonl", "infer_metrics.jsonl"


def keep_before(path, epoch):
    """A run that (re)trains from `epoch` replaces the records of that epoch on."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["epoch"] < epoch]
    with checkpoint.atomic_file(path) as f:
        f.writelines(kept)


def append(path, record):
    """One record as a line; NaN (an AUC with one class absent) is written as null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")


def format_metrics(values):
    return ", ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())
