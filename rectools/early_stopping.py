"""The validation split of training and early stopping on it.

The split is runner.dev_data_dir (its own files, read with the infer reader) or runner.dev_fraction
(a fraction of the training impressions, held out by a hash of their sample_id: the same samples in
every epoch and every process, whatever the batch size or the number of processes, and never
trained on). After each training epoch the loop evaluates the epoch's model on it; a `Tracker`
follows runner.early_stop_metric over the epochs and says which epoch is the best and when
runner.early_stop_patience has run out. The best epoch is written to <model_save_path>/best.json
(BEST), which export, predict and infer read (`read_best`).
"""
import json
import logging
import math
import os
from typing import Optional

import numpy as np

from . import records
from .atomic import atomic_file
from .contract import Reader
from .data import reader
from .errors import ConfigError
from .keys import lower_is_better, validation_split

log = logging.getLogger("rectools")

BEST = "best.json"
DEV = "dev_"  # prefix of the validation figures in a training record (dev_loss, dev_auc_ctr, ...)

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def held_out(sample_id, fraction):
    """Which of `sample_id` (int64 [n]) are in the validation split of `fraction`: a bool [n], True
    where the id's hash (splitmix64's finaliser, as a number in [0, 1)) is below `fraction`. A
    function of the id alone, so the split is the same in every pass, process and run."""
    z = np.asarray(sample_id, dtype=np.int64).view(np.uint64) + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < fraction


class HeldOut(Reader):
    """One side of runner.dev_fraction's split of a reader's samples: the held-out ones
    (`validation` True) or the others. Reads `dataset` and keeps that side of each chunk."""

    def __init__(self, dataset, fraction, validation):
        self.dataset, self.fraction, self.validation = dataset, fraction, validation
        self.file_list = dataset.file_list

    def chunks(self):
        for chunk in self.dataset.chunks():
            keep = held_out(chunk["sample_id"], self.fraction) == self.validation
            if keep.any():
                yield {k: v[keep] for k, v in chunk.items()}

    def layout(self):
        return self.dataset.layout()


def splits(config, package, dataset):
    """(training data, validation data or None) of a run that trains on `dataset` (a Reader): with
    runner.dev_fraction both sides of its split, with runner.dev_data_dir `dataset` and that folder
    read by runner.infer_reader_path."""
    split = validation_split(config)
    if split == "runner.dev_fraction":
        return (HeldOut(dataset, config[split], False), HeldOut(dataset, config[split], True))
    if split == "runner.dev_data_dir":
        return dataset, reader(config, package, split, "runner.infer_reader_path")
    return dataset, None


def describe_split(config):
    """The validation split of `config` in words, for the log: `runner.dev_data_dir <path>` or
    `runner.dev_fraction 0.1 of the training impressions`."""
    split = validation_split(config)
    if split == "runner.dev_fraction":
        return f"{split} {config[split]:g} of the training impressions"
    return f"{split} {config[split]}"


def dev_figures(record):
    """The validation figures of an evaluation record (rectools.loops.run_epoch's), named DEV + name."""
    return {DEV + k: v for k, v in record.items() if k != "epoch"}


class Tracker:
    """runner.early_stop_metric over the validated epochs: the best epoch and the patience left.

    An epoch improves when its value is a finite number strictly better than the best so far (lower
    or higher, keys.lower_is_better); an undefined value (None, NaN) never does. `stale` counts the
    validated epochs since the last improvement; with `patience`, training stops once it reaches it."""

    def __init__(self, metric, patience):
        self.metric, self.patience = metric, patience
        self.figure = DEV + metric
        self.lower = lower_is_better(metric)
        self.best_epoch = self.best_value = self.best_run = self.last_epoch = None
        self.stale = 0

    def add(self, epoch, record):
        """Count the validated epoch `epoch` of `record` (a training record holding the figure)."""
        value = record[self.figure]
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if finite and (self.best_value is None or
                       (value < self.best_value if self.lower else value > self.best_value)):
            self.best_epoch, self.best_value, self.best_run, self.stale = epoch, value, record.get("run"), 0
        else:
            self.stale += 1
        self.last_epoch = epoch

    @property
    def stopped(self):
        """True once `patience` validated epochs in a row brought no improvement."""
        return self.patience is not None and self.stale >= self.patience

    def check(self, record, source):
        """A ConfigError naming `source` when `record` (with validation figures) lacks the metric."""
        if self.figure not in record:
            names = sorted(k[len(DEV):] for k, v in record.items() if k.startswith(DEV) and
                           lower_is_better(k[len(DEV):]) is not None)
            raise ConfigError(f"{source}: runner.early_stop_metric: the validation record has no {self.metric} "
                              f"(it has {', '.join(names)})")

    def resume(self, found, first_epoch, source):
        """Count the validated epochs among `found` (records, train_metrics.jsonl's) that precede
        `first_epoch`, the epoch a resumed run starts at; records without validation figures
        (epochs trained without a split) are passed over."""
        for record in sorted(found, key=lambda r: r["epoch"]):
            if record["epoch"] < first_epoch and any(k.startswith(DEV) for k in record):
                self.check(record, source)
                self.add(record["epoch"], record)

    def best_text(self):
        """`best epoch 3 (dev_loss 0.312)`, or that there is none yet."""
        if self.best_epoch is None:
            return f"no best epoch yet ({self.figure} undefined)"
        return _best_phrase(self.best_epoch, self.figure, self.best_value)

    def summary(self):
        """What best.json holds: the best epoch, its figure and run, and where the count stands."""
        return {"epoch": self.best_epoch, "metric": self.figure, "value": self.best_value,
                "lower_is_better": self.lower, "run": self.best_run, "last_epoch": self.last_epoch,
                "epochs_without_improvement": self.stale, "patience": self.patience, "stopped": self.stopped}


def write_best(root, tracker):
    """<root>/best.json from `tracker` (Tracker), replaced whole; nothing while there is no best epoch."""
    if tracker.best_epoch is None:
        return
    with atomic_file(os.path.join(root, BEST)) as f:
        json.dump(records.clean(tracker.summary()), f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def forget_best(root):
    """Remove <root>/best.json: a run without a validation split has made the folder's checkpoints
    newer than it. Logs one line when there was one."""
    path = os.path.join(root, BEST)
    if os.path.isfile(path):
        os.unlink(path)
        log.info("removed %s: this run has no validation split (runner.dev_data_dir, runner.dev_fraction)", path)


def read_best(root) -> Optional[dict]:
    """<root>/best.json when it names a checkpoint of <root> that is still the one it describes (the
    same training run), else None. A best.json that is unreadable, or whose epoch was saved again by
    another run since, is passed over with a warning."""
    path = os.path.join(root, BEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            best = json.load(f)
        epoch = best["epoch"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s is not readable (%s): passed over", path, e)
        return None
    if type(epoch) is not int:
        log.warning("%s names no epoch: passed over", path)
        return None
    folder = os.path.join(root, str(epoch))
    if records.checkpoint_run(folder) != best.get("run"):
        log.warning("%s names epoch %d of run %s, but %s is not that checkpoint any more: passed over",
                    path, epoch, best.get("run"), folder)
        return None
    return {**best, "folder": folder, "path": path}


def best_text(best):
    """`best epoch 3 (dev_loss 0.312, out/best.json)` of read_best's dict."""
    return _best_phrase(best["epoch"], best.get("metric"), best.get("value"), best["path"])


def _best_phrase(epoch, figure, value, where=None):
    shown = f"{value:.6g}" if isinstance(value, (int, float)) else value
    return f"best epoch {epoch} ({figure} {shown}{', ' + where if where else ''})"
