"""From a data folder to fixed-size numpy batches. A reader yields chunks: dicts of arrays that
share their first dimension (samples). Batching re-cuts chunks without per-sample Python.

Two ways of using the second core: batches() reads and cuts in a background thread while the
caller trains (`prefetch`), and process_map() lets a reader run its parse function in forked
worker processes, in order, a few blocks ahead.
"""
import collections
import concurrent.futures
import ctypes
import ctypes.util
import gc
import gzip
import multiprocessing
import os
import queue
import signal
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError, UserError
from .model_loader import model_module
from .stops import raise_pending_stop

PREFETCH = 4  # batches made ahead of the training step
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which text files may start with


def data_files(folder, key):
    """Every regular, non-hidden file of `folder`, sorted by name."""
    if folder is None:
        raise ConfigError(f"{key} is not set")
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}: folder not found: {folder}{_how_to_get(folder)}")
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if not name.startswith(".") and os.path.isfile(os.path.join(folder, name)))
    if not files:
        raise ConfigError(f"{key}: no data files in {folder}")
    return files


def _how_to_get(folder):
    """What the folder above a missing data folder offers for getting the data: its run.sh
    (PaddleRec's habit for a data set's folder) or its README.md, as a clause; '' for neither."""
    parent = os.path.dirname(os.path.abspath(folder))
    readme = os.path.join(parent, "README.md")
    more = f"; {readme} says more" if os.path.isfile(readme) else ""
    if os.path.isfile(os.path.join(parent, "run.sh")):
        return f" (to fetch the data: cd {parent} && sh run.sh{more})"
    return f" (see {readme} for how to get the data)" if more else ""


def open_data(path):
    """A data file's bytes (a binary file object), read through gzip when its name ends in .gz."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_blocks(path, block_bytes, max_lines):
    """(number of the first line, bytes of whole lines, each ending in \\n) of the file, in order.

    A block holds at most `max_lines` lines and about `block_bytes` bytes (more only when one line
    is longer). A BOM at the start of the file is dropped. Raises DataError for a damaged .gz file,
    naming the last line read whole.
    """
    line_no, carry, first = 1, b"", True
    with open_data(path) as f:
        while True:
            try:
                data = f.read(block_bytes)
            except (OSError, EOFError, zlib.error) as e:  # gzip raises all three for damaged data
                where = f"after line {line_no - 1} (the last line read whole)" if line_no > 1 else "at its start"
                raise DataError(path, line_no, f"not readable as gzip {where}: {e}") from None
            if first:
                data, first = (data[len(BOM):] if data.startswith(BOM) else data), False
            if not data:
                break
            text = carry + data
            end = text.rfind(b"\n") + 1
            carry = text[end:]
            line_no = yield from _line_pieces(text[:end], line_no, max_lines)
    if carry:
        yield line_no, carry + b"\n"


def _line_pieces(text, line_no, max_lines):
    """Yields whole-line pieces of `text` of at most max_lines lines each; returns the number of
    the line after them."""
    lines = text.count(b"\n")
    if lines <= max_lines:
        if text:
            yield line_no, text
        return line_no + lines
    ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 10)[max_lines - 1::max_lines] + 1
    start = 0
    for piece, end in enumerate([*ends.tolist(), len(text)]):
        if end > start:
            yield line_no + piece * max_lines, text[start:end]
            start = end
    return line_no + lines


def reader(config, package, data_key, reader_key):
    """The model folder's RecDataset (module named by `reader_key`) over every file of the folder
    named by `data_key`."""
    config.require(reader_key, by="reading " + data_key)
    files = data_files(config[data_key], data_key)
    return model_module(package, config[reader_key], reader_key).RecDataset(files, config)


def no_samples(dataset):
    """The error of a pass that read no sample (evaluation, prediction): names the files read."""
    return UserError(f"no samples in {', '.join(dataset.file_list)}")


def rows(chunk):
    """Samples in a chunk or batch (the first dimension its arrays share)."""
    return len(next(iter(chunk.values())))


def batches(chunks, batch_size, prefetch=PREFETCH):
    """Cut a stream of chunks into batches of `batch_size` samples; the last one may be smaller.

    With prefetch > 0 the chunks are read and cut in a background thread, up to `prefetch`
    batches ahead of the caller; the order is the same and an exception raised while reading
    (a DataError...) is raised by the caller's next(). Memory: one chunk, plus `prefetch` batches.
    """
    cut = _cut(chunks, batch_size)
    return background(cut, prefetch) if prefetch else cut


def _cut(chunks, batch_size):
    buffer, start = None, 0
    for chunk in chunks:
        if buffer is None or start == rows(buffer):
            buffer = chunk
        else:
            buffer = {k: np.concatenate([buffer[k][start:], chunk[k]]) for k in chunk}
        start = 0
        while rows(buffer) - start >= batch_size:
            yield {k: v[start:start + batch_size] for k, v in buffer.items()}
            start += batch_size
    if buffer is not None and start < rows(buffer):
        yield {k: v[start:] for k, v in buffer.items()}


@dataclass(frozen=True)
class Shard:
    """Which samples this process reads: of the batches of an epoch, numbered from 0, those whose
    number is `index` modulo `count`. Shard() is everything (one process)."""
    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}")


def epoch_batches(dataset, batch_size, shard=Shard()):
    """This shard's batches of one pass over `dataset` (a rectools.contract.Reader)."""
    for number, batch in enumerate(batches(dataset.chunks(), batch_size)):
        if number % shard.count == shard.index:
            yield batch
_ITEM, _END, _ERROR = range(3)


def background(iterable, depth):
    """The items of `iterable`, produced by a daemon thread at most `depth` items ahead.

    An exception of the producer is re-raised here, as the same object. When the caller stops
    early (break, or an error of its own), the producer stops after its current item and the
    iterable is closed in the producer's thread, so its cleanup (e.g. a half-written cache
    entry's removal) runs before this generator returns.
    """
    items = queue.Queue(depth)
    stop = threading.Event()

    def put(message):
        while not stop.is_set():
            try:
                items.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as e:  # noqa: BLE001  handed to the consumer, which raises it
            put((_ERROR, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            raise_pending_stop()
            kind, value = items.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _worker_start(parent):
    """In a forked worker: end with `parent` (its pid; see die_with); the default signal handlers
    (not the parent's, e.g. Paddle's fatal-signal reports; Ctrl-C is the parent's to handle); never
    collect what the parent left (its objects may hold locks or resources of the parent's threads,
    e.g. tensors); and keep freed memory for reuse: glibc otherwise serves each numpy temporary of
    a few MB from a fresh mmap, and page faults cost as much as the parsing."""
    die_with(parent)
    for name in ("SIGTERM", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: the defaults stay
        pass


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
WATCH_SECONDS = 1.0  # how often a worker looks for its parent where the kernel does not tell it


def die_with(parent):
    """End this process (SIGKILL: a parse worker holds nothing to clean up) when the process
    `parent` (pid) ends, however it ends (kill -9 too), so that no worker outlives its trainer.

    On Linux the kernel sends the signal (prctl PR_SET_PDEATHSIG, through ctypes; it fires when the
    thread that forked this process ends, and process_map's pool never outlives the thread that
    made it). A daemon thread also checks every WATCH_SECONDS that the parent is still this
    process's parent, elsewhere and should the kernel call fail. A parent that already ended before
    this call ends this process at once."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc or no prctl (not Linux): the watchdog alone
        pass
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def workers():
    """Parse workers to use: one per core (they share the cores with training, which waits for data
    when parsing is the slower side); none where processes cannot be forked, or inside a daemonic
    worker (of a multiprocessing pool), which may not have children."""
    if "fork" not in multiprocessing.get_all_start_methods() or multiprocessing.current_process().daemon:
        return 0
    return os.cpu_count() or 1


def process_map(function, items, processes=None, ahead=None):
    """function(item) for each of `items`, in order, computed in `processes` forked processes.

    At most `ahead` items (default 2 per process) are in flight, so memory stays bounded.
    `function` and the items must pickle (a forked worker has every module the caller imported).
    An exception raised by function() is re-raised here with its type and message. With 0
    processes (or where fork is unavailable) it runs in the calling thread.
    """
    processes = workers() if processes is None else processes
    if not processes or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(function, items)
        return
    ahead = ahead or 2 * processes
    pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_worker_start, initargs=(os.getpid(),))
    pending = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
