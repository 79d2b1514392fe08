"""From a data folder to fixed-size numpy batches. A reader yields chunks: dicts of arrays that
share their first dimension (samples). Batching re-cuts chunks without per-sample Python."""
import os
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .model_loader import model_module


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


def reader(config, package, data_key, reader_key):
    """The model folder's RecDataset (module named by `reader_key`) over every file of the folder
    named by `data_key`."""
    config.require(reader_key, by="reading " + data_key)
    files = data_files(config[data_key], data_key)
    return model_module(package, config[reader_key], reader_key).RecDataset(files, config)


def rows(chunk):
    """Samples in a chunk or batch (the first dimension its arrays share)."""
    return len(next(iter(chunk.values())))


def batches(chunks, batch_size):
    """Cut a stream of chunks into batches of `batch_size` samples; the last one may be smaller."""
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
