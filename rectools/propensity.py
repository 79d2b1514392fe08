"""Propensities from a file (runner.propensity_file): each training impression's propensity, joined to
the training batches by sample_id, for a model's counterfactual risks to divide by instead of its own
pCTR. The file is CSV with a header: `sample_id` and `propensity`, or the `pctr` column that
tools/predict.py writes, so a separately trained CTR model's predictions on the training folder can
serve directly. Every value must be a probability in (0, 1]; every training sample_id must have one.
"""
import io
import logging

import numpy as np

from .contract import Reader
from .errors import ConfigError, DataError, UserError

log = logging.getLogger("rectools")

KEY = "runner.propensity_file"
COLUMNS = ("propensity", "pctr")  # the value column, by preference


class Propensities:
    """The propensities of one file: `lookup(sample_id)` -> float32 [n].

    Raises ConfigError when the file cannot be read or its header lacks sample_id or a value column,
    DataError (file:line) for a malformed line, a value outside (0, 1] or a sample_id seen before."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                header = f.readline().decode("utf-8", "replace").strip().split(",")
                body = f.read()
        except OSError as e:
            raise ConfigError(f"{KEY}: cannot read {path}: {e.strerror}") from None
        value = next((c for c in COLUMNS if c in header), None)
        if "sample_id" not in header or value is None:
            raise ConfigError(f"{KEY}: {path}:1: the header needs sample_id and one of {', '.join(COLUMNS)} "
                              f"(tools/predict.py writes sample_id,pctr,...), got {','.join(header)!r}")
        ids, values = _columns(path, body, len(header), header.index("sample_id"), header.index(value), value)
        order = np.argsort(ids, kind="stable")
        self.ids, self.values = ids[order], values[order]
        repeated = np.flatnonzero(self.ids[1:] == self.ids[:-1])
        if len(repeated):
            first, second = sorted(order[repeated[0]:repeated[0] + 2])
            raise DataError(path, second + 2, f"sample_id {self.ids[repeated[0]]} again (line {first + 2} has it)")
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


def _columns(path, body, width, id_column, value_column, value_name):
    """(sample_id int64 [n], value float32 [n]) of a CSV body of `width` columns. Raises DataError naming
    the first line that has another width, a non-integer id or a value that is not in (0, 1]."""
    lines = body.count(b"\n") + (not body.endswith(b"\n") and bool(body.strip()))
    if not body.strip():
        raise ConfigError(f"{KEY}: {path} holds no propensities")
    try:  # numpy's C parser; any doubt and the scan below finds the line
        table = np.loadtxt(io.BytesIO(body), delimiter=",", usecols=(id_column, value_column), ndmin=1,
                           dtype=[("id", np.int64), ("value", np.float64)])
        if body.count(b",") == (width - 1) * len(table) == (width - 1) * lines and \
                ((table["value"] > 0) & (table["value"] <= 1)).all():
            return table["id"], table["value"].astype(np.float32)
    except ValueError:
        pass
    for number, line in enumerate(body.split(b"\n")):
        cells = line.rstrip(b"\r").split(b",")
        if len(cells) != width:
            if line.strip() or number < lines:
                raise DataError(path, number + 2, f"{len(cells)} columns, the header has {width}")
            continue
        try:
            int(cells[id_column])
        except ValueError:
            raise DataError(path, number + 2, f"sample_id {cells[id_column].decode(errors='replace')!r} "
                                              "is not an integer") from None
        try:
            value = float(cells[value_column])
        except ValueError:
            value = np.nan
        if not 0.0 < value <= 1.0:
            raise DataError(path, number + 2, f"{value_name} {cells[value_column].decode(errors='replace')!r} is "
                                              "not a probability in (0, 1]")
    raise DataError(path, 2, "cannot be read as CSV")  # not reached for a body the scan accepts


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
