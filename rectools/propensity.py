"""Propensities from a file (runner.propensity_file): each training impression's propensity, joined to
the training batches by sample_id, for a model's counterfactual risks to divide by instead of its own
pCTR. The file is CSV with a header: `sample_id` and `propensity`, or the `pctr` column that
tools/predict.py writes, so a separately trained CTR model's predictions on the training folder can
serve directly. Every value must be a probability in (0, 1]; every training sample_id must have one.
"""
import io
import logging
import re

import numpy as np

from .contract import Reader
from .data import open_data
from .errors import ConfigError, DataError, UserError

log = logging.getLogger("rectools")

KEY = "runner.propensity_file"
COLUMNS = ("propensity", "pctr")  # the value column, by preference


class Propensities:
    """The propensities of one file: `lookup(sample_id)` -> float32 [n].

    The file may be gzipped (.gz) and start with a UTF-8 byte order mark; blank lines carry nothing and
    are passed over. Raises ConfigError when the file cannot be read, is empty, or its header lacks
    sample_id or a value column or names one twice; DataError (file:line) for a line of another width,
    a sample_id that is not an int64, a value outside (0, 1] or a sample_id seen before."""

    def __init__(self, path):
        self.path = path
        try:
            with open_data(path) as f:
                body = f.read()
        except (OSError, EOFError) as e:
            raise ConfigError(f"{KEY}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        body = body.removeprefix(b"\xef\xbb\xbf")
        head, _, body = body.partition(b"\n")
        try:
            header = head.decode("utf-8").rstrip("\r").split(",")
        except UnicodeDecodeError:
            raise ConfigError(f"{KEY}: {path}:1: not a UTF-8 CSV header (a gzipped file needs the .gz suffix)") \
                from None
        if header == [""]:
            raise ConfigError(f"{KEY}: {path} is empty")
        value = next((c for c in COLUMNS if c in header), None)
        if "sample_id" not in header or value is None:
            raise ConfigError(f"{KEY}: {path}:1: the header needs sample_id and one of {', '.join(COLUMNS)} "
                              f"(tools/predict.py writes sample_id,pctr,...), got {','.join(header)!r}")
        for name in ("sample_id", value):
            if header.count(name) > 1:
                raise ConfigError(f"{KEY}: {path}:1: the header names {name} twice")
        ids, values, lines = _columns(path, body, len(header), header.index("sample_id"), header.index(value),
                                      value)
        order = np.argsort(ids, kind="stable")
        self.ids, self.values = ids[order], values[order]
        repeated = np.flatnonzero(self.ids[1:] == self.ids[:-1])
        if len(repeated):
            first, second = sorted(lines[order[repeated[0]:repeated[0] + 2]])
            raise DataError(path, second, f"sample_id {self.ids[repeated[0]]} again (line {first} has it; {KEY} "
                                          "needs one line per impression, and a data folder whose files repeat "
                                          "sample_ids cannot have one)")
        self.column = value

    def __len__(self):
        return len(self.ids)

    def lookup(self, sample_id, data_files):
        """The propensities of `sample_id` (int64 [n]) as float32 [n]. Raises UserError naming the first
        sample_id the file has none for (`data_files`: the data it was read from, for the message)."""
        at = np.minimum(np.searchsorted(self.ids, sample_id), len(self.ids) - 1)
        missing = self.ids[at] != sample_id
        if missing.any():
            raise UserError(f"{KEY}: {self.path} has no propensity for sample_id {sample_id[missing][0]} of "
                            f"{', '.join(data_files)} ({int(missing.sum())} of this chunk's {len(sample_id)} lack "
                            f"one): the file must cover every training impression")
        return self.values[at]


_INT64 = re.compile(rb"\s*[+-]?[0-9]+\s*")


def _columns(path, body, width, id_column, value_column, value_name):
    """(sample_id int64 [n], value float32 [n], line number [n]) of the CSV body after the header line
    (line 2 on), blank lines passed over. Raises DataError naming the first line that has another width,
    a sample_id that is not an int64 or a value that is not a probability in (0, 1]."""
    if not body.strip():
        raise ConfigError(f"{KEY}: {path} holds no propensities")
    data = np.frombuffer(body, np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    if not len(ends) or ends[-1] != len(data) - 1:
        ends = np.append(ends, len(data))  # a last line without its newline
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts - (data[np.maximum(ends - 1, 0)] == ord("\r")) * (ends > starts)
    filled = length > 0
    # commas from each filled line's start to the next's: the blank lines between hold none
    commas = np.add.reduceat(data == ord(","), starts[filled], dtype=np.int64)
    number = np.flatnonzero(filled) + 2
    wrong = np.flatnonzero(commas != width - 1)
    if len(wrong):
        raise DataError(path, number[wrong[0]], f"{commas[wrong[0]] + 1} columns, the header has {width} ({KEY})")
    try:  # numpy's C parser (it passes over blank lines); where it balks, the scan below names the line
        table = np.loadtxt(io.BytesIO(body), delimiter=",", usecols=(id_column, value_column), ndmin=1,
                           dtype=[("id", np.int64), ("value", np.float64)])
    except ValueError as e:
        table, reason = None, e
    if table is not None and len(table) == len(number):
        bad = np.flatnonzero(~((table["value"] > 0) & (table["value"] <= 1)))
        if not len(bad):
            return table["id"], table["value"].astype(np.float32), number
        line = bytes(data[starts[filled][bad[0]]:ends[filled][bad[0]]]).rstrip(b"\r").split(b",")
        raise DataError(path, number[bad[0]], f"{value_name} {line[value_column].decode(errors='replace')!r} is not "
                                              f"a probability in (0, 1] ({KEY})")
    for line, start, end in zip(number, starts[filled], ends[filled]):
        cells = bytes(data[start:end]).rstrip(b"\r").split(b",")
        if not _INT64.fullmatch(cells[id_column]) or not -2 ** 63 <= int(cells[id_column]) < 2 ** 63:
            raise DataError(path, line, f"sample_id {cells[id_column].decode(errors='replace')!r} is not an "
                                        f"int64 ({KEY})")
        try:
            if b"_" in cells[value_column]:  # Python's float takes digit separators, numpy's parser does not
                raise ValueError
            float(cells[value_column])
        except ValueError:
            raise DataError(path, line, f"{value_name} {cells[value_column].decode(errors='replace')!r} is not a "
                                        f"probability in (0, 1] ({KEY})") from None
    raise ConfigError(f"{KEY}: {path} cannot be read as CSV: {reason}")


class WithPropensity(Reader):
    """A reader whose chunks also carry `propensity` float32 [n], looked up in a Propensities by
    sample_id; otherwise `dataset` as it is."""

    def __init__(self, dataset, propensities):
        self.dataset, self.propensities, self.file_list = dataset, propensities, dataset.file_list

    def chunks(self):
        for chunk in self.dataset.chunks():
            yield {**chunk, "propensity": self.propensities.lookup(chunk["sample_id"], self.file_list)}

    def layout(self):
        return self.dataset.layout()

    def size(self):
        return self.dataset.size()


def attach(config, dataset):
    """`dataset` with the propensities of runner.propensity_file, or as it is when the key is unset."""
    if config[KEY] is None:
        return dataset
    propensities = Propensities(config[KEY])
    log.info("%s: %d propensities (column %s) of %s; the counterfactual risks divide by them instead of pCTR",
             KEY, len(propensities), propensities.column, config[KEY])
    return WithPropensity(dataset, propensities)
