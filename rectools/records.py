"""Per-epoch metric records, <model_save_path>/train_metrics.jsonl and infer_metrics.jsonl: one JSON
object per line, at most one line per epoch (an epoch trained or evaluated again replaces its line),
in epoch order; and, with runner.use_visual, the same figures as VisualDL curves.

A records file is rewritten whole at each change (written beside it, flushed to disk, renamed over
it), so it is the previous content or the new one, never a torn line. A line that is not a whole
record all the same (written by other means, or by an older version that appended) is skipped with
a warning naming the file and line, and is not written back.

Training records and checkpoints agree: an epoch's record is written into its checkpoint's manifest
(checkpoint.json: `run`, `record`) and its line is replaced only once that checkpoint is in place, so
a run that fails or is stopped changes neither; `recover` restores the line of a checkpoint whose
run was stopped between the two writes. `run` (e.g. 20261129-191814-3fa2, the start of the training
run and 4 random hex digits) is in each record, train and infer, and tells which run's checkpoint a
line describes.
"""
import json
import logging
import math
import os
import secrets
import time

from . import checkpoint, disk
from .atomic import atomic_file
from .errors import ConfigError

log = logging.getLogger("rectools")

TRAIN, INFER = "train_metrics.jsonl", "infer_metrics.jsonl"
VISUAL_DIR = "visualDL_log"  # under model_save_path, PaddleRec's name


def new_run():
    """The id of a training run: its start (local time) and 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def clean(record):
    """`record` as strict JSON allows: NaN (an AUC with one class absent) becomes None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


def _whole(record):
    return isinstance(record, dict) and type(record.get("epoch")) is int


def read(path):
    """The records of `path` in file order, [] when it does not exist. A line that is not a whole
    record (a JSON object with an integer `epoch`) is skipped with a warning naming file and line."""
    if not os.path.isfile(path):
        return []
    found = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # UnicodeDecodeError included
                record = None
            if _whole(record):
                found.append(record)
            else:
                text = line.decode("utf-8", "replace").rstrip("\n")
                log.warning("%s:%d: not a whole record (cut short by an interrupted write?), skipped: %s",
                            path, line_no, text if len(text) <= 60 else text[:60] + "...")
    return found


def write(path, found):
    """`found` (records) as the whole content of `path`, which is replaced only once it is on disk."""
    with disk.room(os.path.dirname(os.path.abspath(path)), os.path.basename(path)), atomic_file(path) as f:
        f.writelines(json.dumps(clean(record)) + "\n" for record in found)
        f.flush()
        os.fsync(f.fileno())


def put(path, record):
    """`record` replaces the line(s) of its epoch in `path` (or is added); lines stay in epoch order."""
    kept = [r for r in read(path) if r["epoch"] != record["epoch"]]
    write(path, sorted(kept + [record], key=lambda r: r["epoch"]))  # write() cleans every record


def saved_manifests(root):
    """{epoch: manifest dict} of the checkpoint folders <root>/<epoch> that have a readable
    checkpoint.json (its checksums are rectools.checkpoint's to verify, when one is loaded)."""
    found = {}
    if not os.path.isdir(root):
        return found
    for name in os.listdir(root):
        path = os.path.join(root, name, checkpoint.MANIFEST)
        if name.isdigit() and os.path.isfile(path):
            try:
                with open(path) as f:
                    content = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(content, dict):
                found[int(name)] = content
    return found


def checkpoint_run(folder):
    """The `run` of the checkpoint in `folder` (None for a checkpoint saved without one)."""
    try:
        with open(os.path.join(folder, checkpoint.MANIFEST)) as f:
            run = json.load(f).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) else None


def recover(path, root):
    """Restore in `path` (train_metrics.jsonl) the record of each checkpoint of `root` whose line
    is missing or is of another run: what a run stopped between saving a checkpoint and writing its
    line leaves. Returns the epochs restored; logs one line when there are any."""
    found = {r["epoch"]: r for r in read(path)}
    saved = {epoch: content["record"] for epoch, content in saved_manifests(root).items()
             if _whole(content.get("record")) and content["record"]["epoch"] == epoch}
    restored = sorted(e for e, record in saved.items() if found.get(e, {}).get("run") != record.get("run"))
    if restored:
        found.update((e, saved[e]) for e in restored)
        write(path, [found[e] for e in sorted(found)])
        log.info("%s: restored the record of epoch(s) %s from their checkpoints", path,
                 ", ".join(map(str, restored)))
    return restored


class Curves:
    """Loss and AUC curves for VisualDL (runner.use_visual), in `folder`, one folder per run (VisualDL
    shows each folder under its --logdir as a run). Tags `batch/<name>` at each progress line,
    step = batches of this run so far; `epoch/<name>` at each epoch's end, step = the epoch.
    Each point is flushed to disk when written. Raises ConfigError (runner.use_visual) when VisualDL
    is not installed."""

    def __init__(self, folder):
        try:
            from visualdl import LogWriter
        except ImportError:
            raise ConfigError('runner.use_visual is True but VisualDL is not installed: pip install visualdl '
                              '(or pip install -e ".[visual]"), or set runner.use_visual=False') from None
        self.folder, self.batches = folder, 0
        self.writer = LogWriter(logdir=folder)

    def add(self, prefix, values, step):
        """Points `<prefix>/<name>` at `step` of `values` ({name: number}) that are finite numbers
        (an AUC over one class is None or NaN: no point)."""
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag=f"{prefix}/{name}", value=float(value), step=int(step))
        self.writer.flush()

    def close(self):
        self.writer.close()
