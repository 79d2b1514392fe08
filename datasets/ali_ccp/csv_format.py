"""Ali-CCP as a column CSV, the layout of AITM's and torch-rechub's preprocessing:

    click,purchase,101,121,122,...,301[,D109_14,...]
    0,0,1,1,1,...,1[,0.4734,...]

one row per impression: the labels, then one integer id per sparse field, numbered per field
(torch-rechub numbers a field's kept values from 1 and gives 0 to rare or missing ones), then
optionally dense `D*` float columns. Columns are found by their header name, in any order.

Ids: one shared embedding table holds every field, so each field gets its own range. A field's
size is 1 + its largest id in the training files (read at start, for training and for evaluation
alike); field f's id v becomes `1 + sum(sizes of the fields before f) + v`, row 0 stays padding,
and the table needs `1 + sum(sizes)` rows (`rows_needed`). An evaluation id beyond its field's
training size was never trained: it becomes the field's id 0 (the format's id for rare values),
counted and logged once per file.

Output: chunks of arrays, `ids` int64 [n, fields, max_len] (single-valued fields: column 0 holds
the id, the rest pads with 0), `click`, `buy` int64 [n], `sample_id` int64 [n] = the row's
number (1-based) across the files in order. Columns the net does not use (dense `D*` ones
included) are ignored with one log line per file. Bad data (a header without a configured field,
a row with another number of columns than the header, a label that is not 0/1, a purchase
without a click, an id that is not a non-negative integer) stops with file and line.

`parse_file` turns one file into arrays, block by block; each file's arrays are cached on disk
(rectools.cache), so a file is parsed once: the training files' field sizes come from their
first pass, and later passes and runs read the arrays. Files ending in .gz are read through gzip.
"""
import io
import logging
import re

import numpy as np

from rectools import cache
from rectools.contract import Reader
from rectools.data import open_data
from rectools.errors import DataError

log = logging.getLogger(__name__)
LABELS = ("click", "purchase")
BLOCK_BYTES = 1 << 20  # parse granularity: ~10k rows; larger blocks fall out of the CPU caches
MAX_ID = 2 ** 31 - 1   # ids are kept as int32 between parsing and batching
_INTEGER = re.compile(r"[+-]?[0-9]+")  # what loadtxt reads as an integer (with spaces or tabs around)
PARSER_VERSION = 1  # part of the cache key: bump whenever the parsed arrays or the summary change


def read_header(stream, path):
    """The column names of the first line; DataError for a missing, non-UTF-8 or repeated name."""
    line = stream.readline()
    try:
        names = line.decode("utf-8-sig").rstrip("\r\n").split(",")
    except UnicodeDecodeError as e:
        raise DataError(path, 1, f"header is not UTF-8 text: {e}") from None
    if names == [""]:
        raise DataError(path, 1, "empty file: expected a header click,purchase,<field ids>,...")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(path, 1, f"header repeats column(s) {', '.join(repeated)}")
    return names


def header_columns(names, fields, path):
    """Positions of click, purchase and each field in the header."""
    missing = [name for name in (*LABELS, *fields) if name not in names]
    if missing:
        raise DataError(path, 1, f"header lacks column(s) {', '.join(missing)} (hyper_parameters.fields and the labels "
                                 f"{'/'.join(LABELS)}); it has {','.join(names)[:200]}")
    return [names.index(name) for name in (*LABELS, *fields)]


def parse_file(path, fields):
    """Generator of one CSV file's rows in blocks: {"ids": int32 [n, len(fields)] (the file's
    per-field ids), "click": int8 [n], "buy": int8 [n]}; blank lines are skipped. Returns the
    file's summary: {"columns": the header's names, "largest": each field's largest id (-1 for
    none)}. Raises DataError with file and line."""
    largest = np.full(len(fields), -1, dtype=np.int64)
    with open_data(path) as stream:
        names = read_header(stream, path)
        columns = header_columns(names, fields, path)
        line_no, carry = 1, b""  # line_no: lines read so far
        while True:
            data = stream.read(BLOCK_BYTES)
            block = carry + data
            end = block.rfind(b"\n") + 1 if data else len(block)
            if data and end == 0:  # a single line longer than a block
                carry = block
                continue
            block, carry = block[:end], block[end:]
            if block:
                if not block.endswith(b"\n"):
                    block += b"\n"
                table = _parse_block(block, line_no, names, columns, path)
                line_no += block.count(b"\n")
                if len(table):
                    largest = np.maximum(largest, table[:, 2:].max(axis=0))
                    yield {"ids": table[:, 2:], "click": table[:, 0].astype(np.int8), "buy": table[:, 1].astype(np.int8)}
            if not data:
                break
    return {"columns": names, "largest": largest.tolist()}


def _parse_block(block, line_no, names, columns, path):
    """The used columns of the complete lines of `block` (lines line_no + 1 ...) as int32."""
    n_columns = len(names)
    raw = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    blank = (ends == starts) | ((ends == starts + 1) & (raw[ends - 1] == ord("\r")))
    commas = np.diff(np.searchsorted(np.flatnonzero(raw == ord(",")), ends), prepend=0)
    wrong = np.flatnonzero(~blank & (commas != n_columns - 1))
    if len(wrong):
        first = wrong[0]
        raise DataError(path, line_no + 1 + first, f"{commas[first] + 1} columns, but the header has {n_columns}")
    if blank.all():  # loadtxt would warn of a block without data
        return np.zeros((0, len(columns)), dtype=np.int32)
    try:
        values = np.loadtxt(io.BytesIO(block), delimiter=",", usecols=columns, dtype=np.int64, comments=None,
                            encoding="latin-1", ndmin=2)
    except ValueError as e:
        _locate(block, line_no, names, columns, path, e)
    rows = line_no + 1 + np.flatnonzero(~blank)  # the line of each parsed row
    labels = values[:, :2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        row, col = divmod(bad[0], 2)
        raise DataError(path, rows[row], f"{LABELS[col]} must be 0 or 1, got {labels[row, col]}")
    bad = np.flatnonzero(labels[:, 1] > labels[:, 0])
    if len(bad):
        raise DataError(path, rows[bad[0]], "purchase=1 on an impression with click=0")
    ids = values[:, 2:]
    bad = np.flatnonzero(((ids < 0) | (ids > MAX_ID)).any(axis=1))
    if len(bad):
        raise DataError(path, rows[bad[0]], f"ids must be integers in [0, {MAX_ID}], got "
                                            f"{ids[bad[0]][(ids[bad[0]] < 0) | (ids[bad[0]] > MAX_ID)][0]}")
    return values.astype(np.int32)


def _locate(block, line_no, names, columns, path, error):
    """Raise a DataError for the first line of `block` with a used value that is not an integer
    (the column counts are already checked)."""
    for offset, line in enumerate(block.decode("latin-1").split("\n"), 1):
        cols = line.rstrip("\r").split(",")
        for c in columns if len(cols) > 1 else ():
            if not _INTEGER.fullmatch(cols[c].strip(" \t")):  # stricter than int(), which takes 7_0 and 2\r
                raise DataError(path, line_no + offset, f"{names[c]} is not an integer: {cols[c][:40]!r}")
    raise DataError(path, line_no + 1, f"cannot parse the lines from here on: {error}")


class ColumnCsvReader(Reader):
    """Chunks of a list of column-CSV files (see the module's docstring for the id layout). Each
    file's parsed columns are cached (rectools.cache, in `cache_dir`; None: no cache) with its
    header and its fields' largest ids, so the field sizes of the training files (`train_files`)
    come from their cache entries and later passes read no text.

    `fields`: the field columns read, in input order; `max_len`: the ids width of the output (the
    id goes to column 0). After construction, `sizes` (int64 [fields]) holds 1 + each field's
    largest training id and `rows_needed` the embedding rows the ids reach (1 + sum(sizes)).
    Raises DataError (file and line) for bad data in a training file."""

    def __init__(self, file_list, fields, max_len, train_files, cache_dir, chunk_lines=8192, cache_limit=None):
        self.file_list = list(file_list)
        self.fields = fields
        self.max_len = max_len
        self.chunk_lines = chunk_lines
        self.cache = cache.ArrayCache(cache_dir, {
            "format": "column CSV", "parser_version": PARSER_VERSION, "fields": self.fields}, limit=cache_limit)
        self.sizes = np.ones(len(self.fields), dtype=np.int64)  # 1 + the largest id of each field (1 if none)
        for path in train_files:
            self.sizes = np.maximum(self.sizes, np.array(self._summary(path)["largest"]) + 1)
        self.offsets = 1 + np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.rows_needed = 1 + int(self.sizes.sum())
        self.reported = set()  # files whose ignored columns and unseen ids were logged: once per file

    def layout(self):
        """The field sizes the ids are numbered by (rectools.contract.Reader.layout)."""
        return {f"size of field {f}": n for f, n in zip(self.fields, self.sizes.tolist())}

    def size(self):
        """The rows of a pass, once every file's cache entry holds them (rectools.contract.Reader.size)."""
        return self.cache.rows(self.file_list)

    def _parsed(self, path, summary):
        """Generator of the file's parsed blocks (from its cache entry, else its text); once the
        file is done, its summary (parse_file's) goes into the dict `summary`."""
        summary.update((yield from self.cache.chunks(path, lambda source: parse_file(source, self.fields),
                                                     self.chunk_lines)))

    def _summary(self, path):
        manifest = self.cache.manifest(path)
        if manifest is not None:
            return manifest["summary"]
        summary = {}
        for _ in self._parsed(path, summary):  # one pass, which writes the cache entry the first epoch then reads
            pass
        return summary

    def chunks(self):
        row = 0
        for path in self.file_list:
            unseen_counts, summary = np.zeros(len(self.fields), dtype=np.int64), {}
            for arrays in self._parsed(path, summary):
                ids, n = arrays["ids"], len(arrays["ids"])
                for start in range(0, n, self.chunk_lines):
                    stop = min(start + self.chunk_lines, n)
                    unseen = ids[start:stop] >= self.sizes  # [m, fields]: ids the training files never had
                    unseen_counts += unseen.sum(axis=0)
                    out = np.zeros((stop - start, len(self.fields), self.max_len), dtype=np.int64)
                    out[:, :, 0] = np.where(unseen, 0, ids[start:stop]) + self.offsets
                    yield {"ids": out, "click": arrays["click"][start:stop].astype(np.int64),
                           "buy": arrays["buy"][start:stop].astype(np.int64),
                           "sample_id": np.arange(row + start + 1, row + stop + 1, dtype=np.int64)}
                row += n
            self._report(path, summary["columns"], unseen_counts)

    def _report(self, path, names, unseen):
        if path in self.reported:
            return
        self.reported.add(path)
        ignored = [name for name in names if name not in (*LABELS, *self.fields)]
        if ignored:
            log.info("%s: %d column(s) the net does not use are ignored (%s)", path, len(ignored), ",".join(ignored))
        if unseen.any():
            log.warning("%s: %d id(s) beyond the training files' range mapped to their field's id 0 (%s)", path,
                        int(unseen.sum()), ", ".join(f"{f}: {n}" for f, n in zip(self.fields, unseen.tolist()) if n))
