"""From a data folder to fixed-size numpy batches. A reader yields chunks: dicts of arrays that
share their first dimension (samples). Batching re-cuts chunks without per-sample Python."""
import os

import numpy as np

from .errors import ConfigError


def data_files(folder, key):
    """Every regular, non-hidden file of `folder`, sorted by name."""
    if folder is None:
        raise ConfigError(f"{key} is not set")
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}: folder not found: {folder}")
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if not name.startswith(".") and os.path.isfile(os.path.join(folder, name)))
    if not files:
        raise ConfigError(f"{key}: no data files in {folder}")
    return files


def _rows(chunk):
    return len(next(iter(chunk.values())))


def batches(chunks, batch_size):
    """Cut a stream of chunks into batches of `batch_size` samples; the last one may be smaller."""
    buffer, start = None, 0
    for chunk in chunks:
        if buffer is None or start == _rows(buffer):
            buffer = chunk
        else:
            buffer = {k: np.concatenate([buffer[k][start:], chunk[k]]) for k in chunk}
        start = 0
        while _rows(buffer) - start >= batch_size:
            yield {k: v[start:start + batch_size] for k, v in buffer.items()}
            start += batch_size
    if buffer is not None and start < _rows(buffer):
        yield {k: v[start:] for k, v in buffer.items()}
