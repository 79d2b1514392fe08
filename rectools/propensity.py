"""Propensities from a file (runner.propensity_file): each training impression's propensity, joined to
the training batches by sample_id, for a model's counterfactual risks to divide by instead of its own
pCTR. The file is CSV with a header: `sample_id` and `propensity`, or the `pctr` column that
tools/predict.py writes, so a separately trained CTR model's predictions on the training folder can
serve directly. Every value must be a probability in (0, 1]; every training sample_id must have one.
"""
import io
import itertools
import logging
import warnings

import numpy as np

from .contract import Reader
from .data import read_blocks
from .errors import ConfigError, DataError, UserError

log = logging.getLogger("rectools")

KEY = "runner.propensity_file"
COLUMNS = ("propensity", "pctr")  # the value column, by preference
BLOCK_BYTES, BLOCK_LINES = 16 << 20, 1 << 20  # the file is parsed in blocks of whole lines: memory stays bounded


class Propensities:
    """The propensities of one file: `lookup(sample_id)` -> float32 [n].

    The file may be gzipped (.gz) and start with a UTF-8 byte order mark; blank lines carry nothing and
    are passed over. Memory: about 40 bytes a line while it loads (12 after) and a few blocks. Raises
    ConfigError when the file cannot be read, is empty, or its header lacks sample_id or a value column or
    names one twice; DataError (file:line) for a damaged .gz file, a line of another width, a sample_id
    that is not an int64, a value that is not a probability in (0, 1] (as float32) or a sample_id seen
    before."""

    def __init__(self, path):
        self.path = path
        try:
            blocks = read_blocks(path, BLOCK_BYTES, BLOCK_LINES)
            first = next(blocks, None)
            if first is None:
                raise ConfigError(f"{KEY}: {path} is empty")
            head, _, rest = first[1].partition(b"\n")
            header = self._header(head)
            value = next((c for c in COLUMNS if c in header), None)
            if "sample_id" not in header or value is None:
                raise ConfigError(f"{KEY}: {path}:1: the header needs sample_id and one of {', '.join(COLUMNS)} "
                                  f"(tools/predict.py writes sample_id,pctr,...), got {','.join(header)!r}")
            for name in ("sample_id", value):
                if header.count(name) > 1:
                    raise ConfigError(f"{KEY}: {path}:1: the header names {name} twice")
            columns = (len(header), header.index("sample_id"), header.index(value), value)
            parts = [_block_columns(path, block, line, *columns)
                     for line, block in itertools.chain([(2, rest)], blocks) if block]
        except OSError as e:
            raise ConfigError(f"{KEY}: cannot read {path}: {e.strerror or e}") from None
        ids, values, lines = (np.concatenate([part[k] for part in parts]) if parts else np.zeros(0)
                              for k in range(3))
        if not len(ids):
            raise ConfigError(f"{KEY}: {path} holds no propensities")
        order = np.argsort(ids, kind="stable")
        self.ids, self.values = ids[order].astype(np.int64), values[order].astype(np.float32)
        repeated = np.flatnonzero(self.ids[1:] == self.ids[:-1])
        if len(repeated):
            first, second = sorted(lines[order[repeated[0]:repeated[0] + 2]])
            raise DataError(path, second, f"sample_id {self.ids[repeated[0]]} again (line {first} has it; {KEY} "
                                          "needs one line per impression, and a data folder whose files repeat "
                                          "sample_ids cannot have one)")
        self.column = value

    def _header(self, head):
        """The header's column names, from the first line's bytes. Raises ConfigError."""
        try:
            header = head.decode("utf-8").rstrip("\r").split(",")
        except UnicodeDecodeError:
            raise ConfigError(f"{KEY}: {self.path}:1: not a UTF-8 CSV header (a gzipped file needs the .gz "
                              "suffix)") from None
        if header == [""]:
            raise ConfigError(f"{KEY}: {self.path}:1: the line is blank; the header must come first")
        return header

    def __len__(self):
        return len(self.ids)

    def lookup(self, sample_id, data_files):
        """The propensities of `sample_id` (int64 [n]) as float32 [n]. Raises UserError naming the first
        sample_id the file has none for (`data_files`: the data it was read from, for the message)."""
        at = np.minimum(np.searchsorted(self.ids, sample_id), len(self.ids) - 1)
        missing = self.ids[at] != sample_id
        if missing.any():
            where = data_files[0] + (f" and {len(data_files) - 1} more file(s)" if len(data_files) > 1 else "")
            raise UserError(f"{KEY}: {self.path} has no propensity for sample_id {sample_id[missing][0]} of "
                            f"{where} ({int(missing.sum())} of this chunk's {len(sample_id)} lack one): the file "
                            "must cover every training impression")
        return self.values[at]


def _block_columns(path, block, first_line, width, id_column, value_column, value_name):
    """(sample_id int64 [n], value float32 [n], line number [n]) of a block of whole CSV lines, the first
    of which is line `first_line` of the file; blank lines are passed over. Raises DataError naming the
    first line that has another width, a sample_id that is not an int64 or a value that is not a
    probability in (0, 1] as float32, each as numpy's parser reads them."""
    data = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    if not len(ends) or ends[-1] != len(data) - 1:
        ends = np.append(ends, len(data))  # a last line without its newline
    starts = np.concatenate([[0], ends[:-1] + 1])
    crlf = (ends > starts) & (data[np.maximum(ends - 1, 0)] == ord("\r"))
    filled = ends - starts - crlf > 0
    none = np.zeros(0, np.int64)
    if not filled.any():
        return none, np.zeros(0, np.float32), none
    starts, ends, number = starts[filled], ends[filled] - crlf[filled], np.flatnonzero(filled) + first_line

    def cells(k):
        return bytes(data[starts[k]:ends[k]]).split(b",")

    # commas from each filled line's start to the next's: the blank lines between hold none
    commas = np.add.reduceat(data == ord(","), starts, dtype=np.int64)
    wrong = np.flatnonzero(commas != width - 1)
    if len(wrong):
        raise DataError(path, number[wrong[0]], f"{commas[wrong[0]] + 1} columns, the header has {width} ({KEY})")
    table = _parse(block, id_column, value_column)
    if table is None or len(table) != len(number):  # numpy balks at some line: find the first by bisection
        low, high = 0, len(number) - 1  # the first bad line is in [low, high]
        while low < high:
            middle = (low + high) // 2
            parsed = _parse(block[:ends[middle] + 1], id_column, value_column)
            low, high = (middle + 1, high) if parsed is not None and len(parsed) == middle + 1 else (low, middle)
        row = cells(low)
        if any(b"\r" in cell for cell in row):  # numpy ends a line there
            raise DataError(path, number[low], f"a carriage return inside the line ({KEY})")
        if _parse(row[id_column], 0, 0, ids_only=True) is None:
            raise DataError(path, number[low], f"sample_id {row[id_column].decode(errors='replace')!r} is not an "
                                               f"int64 ({KEY})")
        raise DataError(path, number[low], f"{value_name} {row[value_column].decode(errors='replace')!r} is not "
                                           f"a probability in (0, 1] ({KEY})")
    values = table["value"].astype(np.float32)
    bad = np.flatnonzero(~((values > 0) & (values <= 1)))
    if len(bad):
        raise DataError(path, number[bad[0]], f"{value_name} {cells(bad[0])[value_column].decode(errors='replace')!r}"
                                              f" is not a probability in (0, 1] as float32 ({KEY})")
    return table["id"], values, number


def _parse(text, id_column, value_column, ids_only=False):
    """numpy's C parser over CSV lines (no comment character; blank lines passed over): a structured
    array of `id` int64 and `value` float64, or None where it cannot read them."""
    dtype = np.int64 if ids_only else [("id", np.int64), ("value", np.float64)]
    try:
        with warnings.catch_warnings():  # an empty cell is "no data": None below, not a warning
            warnings.simplefilter("ignore", UserWarning)
            parsed = np.loadtxt(io.BytesIO(text), delimiter=",", comments=None, ndmin=1, dtype=dtype,
                                usecols=id_column if ids_only else (id_column, value_column))
    except ValueError:
        return None
    return None if ids_only and len(parsed) != 1 else parsed


class WithPropensity(Reader):
    """A reader whose chunks also carry `propensity` float32 [n], looked up in a Propensities by
    sample_id; otherwise `dataset` as it is (its layout and size too)."""

    def __init__(self, dataset, propensities):
        self.dataset, self.propensities, self.file_list = dataset, propensities, dataset.file_list

    def chunks(self):
        """The wrapped reader's chunks with `propensity`. Raises UserError at the first sample_id the
        file has no propensity for."""
        for chunk in self.dataset.chunks():
            yield {**chunk, "propensity": self.propensities.lookup(chunk["sample_id"], self.file_list)}

    def layout(self):
        return self.dataset.layout()

    def size(self):
        return self.dataset.size()


def attach(config, dataset):
    """`dataset` with the propensities of runner.propensity_file, or as it is when the key is unset.
    Raises ConfigError or DataError for a file that cannot serve (Propensities)."""
    if config[KEY] is None:
        return dataset
    propensities = Propensities(config[KEY])
    log.info("%s: %d propensities (column %s) of %s; the counterfactual risks divide by them instead of pCTR",
             KEY, len(propensities), propensities.column, config[KEY])
    return WithPropensity(dataset, propensities)
