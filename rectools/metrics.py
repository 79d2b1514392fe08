"""Exact, epoch-wide metrics in bounded memory.

An epoch's predictions are collected by an Accumulator, which writes them to a temporary folder
as they come (Columns reads them back); the metrics pass over them a chunk at a time. AUC stays
exact (no threshold buckets, so the tiny pCTCVR values of conversion data keep their order) by a
distribution sort: a histogram of the scores' leading bits orders every pair of items in
different buckets, and only the items of buckets holding both classes are ranked, at most
SORT_ROWS of them in memory at once. Memory is the same for an epoch of 200 thousand impressions
as for one of 38 million; the disk holds 18 bytes an impression for two float32 scores and two
int8 labels, ~26 while the AUCs run (their buckets' files). A model's own evaluation protocol
(its metrics.py) is built from these.
"""
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import weakref
from collections.abc import Mapping

import numpy as np

from . import disk, leftovers
from .contract import Predictions
from .errors import UserError

EPS = 1e-7
CHUNK_ROWS = 1 << 16  # rows a pass over predictions handles at once
SORT_ROWS = 1 << 17  # scores ranked in memory at once (~5 MB); more go through the distribution sort
SPILL_BYTES = 1 << 22  # an Accumulator writes what it holds to disk once it holds this much


# ----------------------------------------------------------------------------- AUC

@contextlib.contextmanager
def _on_disk(what, folder=None):
    """Turns an OSError of the temporary folder (not writable, full) into one UserError line."""
    try:
        yield
    except OSError as e:
        try:
            folder = folder or tempfile.gettempdir()
        except OSError:  # no usable temporary folder at all
            pass
        free = disk.free_text(folder) if folder else ""
        room = f"; {free}" if free else ""
        where = e.filename or folder or "the temporary folder"
        raise UserError(f"cannot write {what} to {where} ({e.strerror or e}{room}): point TMPDIR at a writable "
                        f"folder with room (an epoch's predictions take ~26 bytes an impression at its end)") from None


_HOST = socket.gethostname()
_swept = False


def _temporary_folder(kind):
    """(a new folder under tempfile's folder ($TMPDIR), named rectools-<kind>-<host>-<pid>-<random>,
    its lock: an open file the caller closes when it removes the folder). The first call of a
    process removes the folders whose process is gone (a SIGKILL, or a second SIGTERM, leaves one
    behind), with one log line: their lock is free (the kernel drops a process's locks when it
    ends, whatever the host or container) and older than a minute (never a folder being made)."""
    global _swept
    if not _swept:
        _swept = True
        root = tempfile.gettempdir()
        gone = [os.path.join(root, name) for name in os.listdir(root) if name.startswith("rectools-")]
        gone = [path for path in gone if leftovers.abandoned(path)]
        for path in gone:
            shutil.rmtree(path, ignore_errors=True)
        if gone:
            logging.getLogger("rectools").info("removed %d temporary folder(s) of stopped runs from %s",
                                               len(gone), root)
    folder = tempfile.mkdtemp(prefix=f"rectools-{kind}-{_HOST}-{os.getpid()}-")
    return folder, leftovers.hold(folder)


def _remove(folder, lock):
    lock.close()
    shutil.rmtree(folder, ignore_errors=True)


def order_keys(scores):
    """Unsigned integers [n] that order as the float `scores` [n] do: the IEEE 754 bit patterns
    with the sign folded (as wide as the float; integers and bools are ranked as float64), -0.0
    taken as 0.0. Every NaN (of either sign bit: arithmetic gives negative ones) ranks above +inf,
    tied with the others."""
    scores = np.asarray(scores)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    scores = np.add(scores, 0, dtype=scores.dtype)  # + 0: -0.0 becomes 0.0
    scores[np.isnan(scores)] = np.nan  # one positive NaN
    bits = scores.view(f"u{scores.itemsize}")
    top = bits.dtype.type(1 << (8 * scores.itemsize - 1))
    return np.where(bits >= top, ~bits, bits | top)


def _ranked_twice_u(keys, hits):
    """2U of items ranked in memory (keys uint [n], hits bool [n]): U counts, over the positives,
    the negatives with a lower key plus half of those with an equal one (Mann-Whitney)."""
    order = np.argsort(keys)
    keys, hits = keys[order], hits[order]
    del order
    negatives = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(~hits, out=negatives[1:])
    bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])  # groups of tied keys
    below = negatives[bounds[:-1]]
    tied = negatives[bounds[1:]] - below
    positives = np.diff(bounds) - tied
    return int(positives @ (2 * below + tied))


def _twice_u(chunks, count, prefix=0):
    """2U (see _ranked_twice_u) of the `count` items `chunks()` yields as (hits bool [k], keys
    uint [k]) chunks, keys whose top `prefix` bits all items share.

    At most SORT_ROWS items are held at once. More are ordered by a histogram of their next 16 key
    bits: pairs in different buckets by the buckets' order, pairs within a bucket holding both
    classes by ranking that bucket's items, read back from a temporary file (several small buckets
    ranked together, their cross pairs, already counted, taken off again; a bucket too large to
    rank is split the same way on the bits below)."""
    if count <= SORT_ROWS:
        held = list(chunks())
        if not held:
            return 0
        return _ranked_twice_u(np.concatenate([k for _, k in held]), np.concatenate([h for h, _ in held]))
    key_bits = 8 * next(keys for _, keys in chunks()).itemsize
    width = min(16, key_bits - prefix)
    shift, mask = key_bits - prefix - width, (1 << width) - 1
    pos, neg = np.zeros(1 << width, dtype=np.int64), np.zeros(1 << width, dtype=np.int64)
    for hits, keys in chunks():
        bucket = ((keys >> shift) & mask).astype(np.intp)
        pos += np.bincount(bucket[hits], minlength=1 << width)
        neg += np.bincount(bucket[~hits], minlength=1 << width)
    twice = 2 * int(pos @ (np.cumsum(neg) - neg))  # pairs in different buckets
    if shift == 0:  # a bucket is one key: its pairs are ties
        return twice + int(pos @ neg)
    # the buckets to rank, in groups of at most SORT_ROWS items (a larger bucket alone, split further)
    group_of = np.full(1 << width, -1, dtype=np.intp)
    groups, size = [], SORT_ROWS
    for b in np.flatnonzero((pos > 0) & (neg > 0)).tolist():
        n = int(pos[b] + neg[b])
        if n > SORT_ROWS or size + n > SORT_ROWS:
            groups.append([])
            size = 0
        groups[-1].append(b)
        group_of[b] = len(groups) - 1
        size = SORT_ROWS if n > SORT_ROWS else size + n
    if not groups:
        return twice
    record = np.dtype([("key", f"u{key_bits // 8}"), ("hit", bool)])
    with _on_disk("the AUC's buckets"):
        folder, lock = _temporary_folder("auc")
    try:
        for hits, keys in chunks():
            group = group_of[((keys >> shift) & mask).astype(np.intp)]
            kept = np.flatnonzero(group >= 0)
            if not len(kept):
                continue
            kept = kept[np.argsort(group[kept], kind="stable")]
            rows = np.empty(len(kept), dtype=record)
            rows["key"], rows["hit"] = keys[kept], hits[kept]
            starts = np.flatnonzero(np.r_[True, np.diff(group[kept]) != 0])
            with _on_disk("the AUC's buckets", folder):
                for start, stop in zip(starts, np.r_[starts[1:], len(kept)]):
                    with open(os.path.join(folder, str(group[kept[start]])), "ab") as f:
                        rows[start:stop].tofile(f)
        for g, buckets in enumerate(groups):
            path = os.path.join(folder, str(g))
            n = int((pos[buckets] + neg[buckets]).sum())
            if n > SORT_ROWS:
                twice += _twice_u(lambda path=path: _records(path, record), n, prefix + width)
            else:
                rows = np.fromfile(path, dtype=record)
                crossed = int(pos[buckets] @ (np.cumsum(neg[buckets]) - neg[buckets]))
                twice += _ranked_twice_u(rows["key"], rows["hit"]) - 2 * crossed
            os.remove(path)  # its disk back at once
    finally:
        _remove(folder, lock)
    return twice


def _records(path, record):
    """(hits, keys) chunks of a file of records of _twice_u."""
    with open(path, "rb") as f:
        while True:
            rows = np.fromfile(f, dtype=record, count=CHUNK_ROWS)
            if not len(rows):
                return
            yield rows["hit"], rows["key"]


def chunked_auc(chunks, n_pos, n_neg):
    """ROC AUC of the (labels, scores) chunks that `chunks()` yields (called again for each pass;
    labels 0/1 [k], scores [k] of any real dtype), with n_pos positive and n_neg negative labels in
    all; NaN when a class is absent. Exact, in memory bounded by SORT_ROWS."""
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    keyed = lambda: ((np.asarray(y).astype(bool), order_keys(s)) for y, s in chunks())  # noqa: E731
    return _twice_u(keyed, n_pos + n_neg) / (2.0 * n_pos * n_neg)


def auc(labels, scores):
    """Rank-based ROC AUC (the Mann-Whitney U over n_pos * n_neg) of `scores` ([n], any real
    dtype, ranked as given) for 0/1 `labels` [n]; tied scores count half. NaN when one class is
    absent. Exact; memory bounded by SORT_ROWS beyond the inputs."""
    columns = Columns.of({"labels": labels, "scores": scores})
    n_pos = int(np.count_nonzero(columns["labels"]))
    return chunked_auc(lambda: columns.chunks("labels", "scores"), n_pos, columns.rows - n_pos)


# ----------------------------------------------------------------------------- the other figures

def cross_entropy_sum(labels, probs):
    """Sum of -(y log p + (1 - y) log(1 - p)) in float64, p clipped to [EPS, 1 - EPS]; labels may be soft."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -float(y @ np.log(p) + (1 - y) @ np.log1p(-p))


def logloss(labels, probs):
    """Mean binary cross-entropy of probabilities `probs` [n] (clipped to [EPS, 1 - EPS]) against
    `labels` [n], 0/1 or soft (probabilities); NaN for no items."""
    return cross_entropy_sum(labels, probs) / len(labels) if len(labels) else float("nan")


# ----------------------------------------------------------------------------- an epoch's predictions

class Columns(Mapping):
    """Named 1-D columns of `rows` values each (rows start..stop of what an Accumulator collected,
    in batch order), held partly in its files and partly in memory. Indexing by name reads the
    whole column into memory (an ndarray); chunks() passes over several columns in bounded memory.
    The files stay while a Columns or its Accumulator refers to them."""

    def __init__(self, parts, start, stop, owner=None):
        self._parts, self.start, self.stop = parts, start, stop
        self._owner = owner  # the Accumulator whose folder holds the files: kept while these are read

    @classmethod
    def of(cls, arrays):
        """Columns over in-memory arrays {name: 1-D array [n]}, all of one length; a Columns as it is."""
        if isinstance(arrays, Columns):
            return arrays
        arrays = {name: np.asarray(a).reshape(-1) for name, a in arrays.items()}
        rows = {len(a) for a in arrays.values()}
        if len(rows) > 1:
            raise ValueError(f"columns of different lengths: { {k: len(a) for k, a in arrays.items()} }")
        n = rows.pop() if rows else 0
        return cls({name: _Column(None, a.dtype, 0, [a]) for name, a in arrays.items()}, 0, n)

    @property
    def rows(self):
        return self.stop - self.start

    def __len__(self):
        return len(self._parts)

    def __iter__(self):
        return iter(self._parts)

    def __getitem__(self, name):
        return self._parts[name].read(self.start, self.stop)

    def chunks(self, *names, rows=CHUNK_ROWS):
        """Tuples of the named columns' values, `rows` rows at a time, in order."""
        for lo in range(self.start, self.stop, rows):
            hi = min(lo + rows, self.stop)
            yield tuple(self._parts[name].read(lo, hi) for name in names)


class _Column:
    """One column: its first `spilled` values in a file of raw `dtype` values, the rest in `held` arrays."""

    def __init__(self, path, dtype, spilled, held):
        self.path, self.dtype, self.spilled, self.held = path, np.dtype(dtype), spilled, held

    def read(self, lo, hi):
        parts = []
        if lo < self.spilled:
            with open(self.path, "rb") as f:
                f.seek(lo * self.dtype.itemsize)
                parts.append(np.fromfile(f, dtype=self.dtype, count=min(hi, self.spilled) - lo))
        at = self.spilled
        for array in self.held:
            if at >= hi:
                break
            if at + len(array) > lo:
                parts.append(array[max(lo - at, 0):hi - at])
            at += len(array)
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, self.dtype)


class Accumulator(Predictions):
    """Collects named per-batch arrays over an epoch (rectools.contract.Predictions): held in
    memory up to SPILL_BYTES, then appended to one file a name in a temporary folder (under
    tempfile's folder: $TMPDIR), removed when nothing refers to it any more."""

    def __init__(self):
        self._columns = {}
        self._held_bytes = 0
        self._folder = None

    def add(self, **arrays):
        """Append one batch's arrays (each flattened to 1-D, copied). ValueError, with nothing
        added, when a name's dtype differs from its earlier batches'."""
        arrays = {name: np.array(value).reshape(-1) for name, value in arrays.items()}  # copies: buffers get reused
        for name, array in arrays.items():
            column = self._columns.get(name)
            if column is not None and array.dtype != column.dtype:
                raise ValueError(f"predictions {name!r}: a batch of {array.dtype} after batches of {column.dtype}")
        for name, array in arrays.items():
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = _Column(None, array.dtype, 0, [])
            column.held.append(array)  # a Columns handed out before reads only the rows it had
            self._held_bytes += array.nbytes
        if self._held_bytes >= SPILL_BYTES:
            self._spill()

    def _spill(self):
        with _on_disk("the epoch's predictions", self._folder):
            if self._folder is None:
                self._folder, lock = _temporary_folder("predictions")
                weakref.finalize(self, _remove, self._folder, lock)
            for name, column in self._columns.items():
                path = column.path or os.path.join(self._folder, name)
                with open(path, "ab") as f:
                    for array in column.held:
                        array.tofile(f)
                rows = sum(len(a) for a in column.held)
                self._columns[name] = _Column(path, column.dtype, column.spilled + rows, [])
        self._held_bytes = 0

    def _rows(self):
        """Rows collected so far (of the longest column)."""
        return max((c.spilled + sum(len(a) for a in c.held) for c in self._columns.values()), default=0)

    def arrays(self, last_rows=None):
        """A Columns of every row so far, or of the last `last_rows` rows."""
        stop = self._rows()
        start = 0 if last_rows is None else max(stop - last_rows, 0)
        return Columns(dict(self._columns), start, stop, self)
