"""Progress lines of a pass over data (training, evaluation, prediction), with an ETA where the
size of the pass is known."""
import logging
import time
import weakref

from .data import Shard

log = logging.getLogger("rectools")

FIRST_LINE = 10  # batches before the first progress line when print_interval is larger: a sign of life

_passes = weakref.WeakKeyDictionary()  # reader -> {shard: samples it read in its last pass}


def expected_samples(dataset, shard=Shard()):
    """Samples this shard will read in a pass over `dataset`, for the ETA: what the previous pass over
    the same reader read in this process, else the reader's size() (optional, rectools.contract.Reader)
    shared among the shards; None when neither is known."""
    try:
        seen = _passes.get(dataset, {}).get(shard)
    except TypeError:  # a reader that cannot be weakly referenced
        seen = None
    if seen is not None:
        return seen
    size = getattr(dataset, "size", None)
    total = size() if callable(size) else None
    return None if total is None else -(-int(total) // shard.count)


def remember_pass(dataset, shard, samples):
    try:
        _passes.setdefault(dataset, {})[shard] = samples
    except TypeError:
        pass


def format_metrics(values):
    """`name: value, ...` of a log line; floats with 4 decimals (losses and AUCs line up from one
    line to the next; the records file holds every figure in full)."""
    return ", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())


def headline(values):
    """The figures of a log line out of a record or a window: the loss and the AUCs."""
    return {k: v for k, v in values.items() if k == "loss" or k.startswith("auc")}


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress lines of one pass over data: after the first FIRST_LINE batches (when print_interval
    is larger), then every print_interval batches,
    `<prefix>, batch_id: <batches>, <details>, ips: <samples/s since the last line> ins/s`, ending in
    `, eta: h:mm:ss` (at the pass's mean rate so far) when `total`, the pass's samples, is known."""

    def __init__(self, prefix, interval, total=None):
        self.prefix, self.interval, self.total = prefix, interval, total
        self.start = self.mark = time.perf_counter()
        self.samples = self.batches = self.mark_samples = self.mark_batches = 0

    def due(self, size):
        """Count a batch of `size` samples; True when a progress line is due after it."""
        self.batches += 1
        self.samples += size
        return self.batches % self.interval == 0 or self.batches == FIRST_LINE < self.interval

    @property
    def span(self):
        """(batches, samples) since the last line."""
        return self.batches - self.mark_batches, self.samples - self.mark_samples

    def line(self, details=None):
        """Log the progress line with `details` ({name: value}) and start the next span."""
        now = time.perf_counter()
        parts = [f"{self.prefix}, batch_id: {self.batches}"] + ([format_metrics(details)] if details else [])
        parts.append(f"ips: {self.span[1] / max(now - self.mark, 1e-9):.1f} ins/s")
        if self.total and self.total > self.samples:
            parts.append(f"eta: {_clock((self.total - self.samples) * (now - self.start) / self.samples)}")
        log.info(", ".join(parts))
        self.mark, self.mark_batches, self.mark_samples = now, self.batches, self.samples

    def seconds(self):
        return time.perf_counter() - self.start
