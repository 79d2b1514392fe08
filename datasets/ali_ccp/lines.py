"""Ali-CCP in PaddleRec's line format, read into arrays:

    sample_id,click,buy[,md5],field:feat,field:feat,...

Output: chunks of arrays, `ids` int64 [n, fields, max_len] (0 pads), `click`, `buy` int64 [n],
`sample_id` int64 [n]. Files ending in .gz are read through gzip; a UTF-8 byte order mark at the
start of a file is skipped; CRLF line ends are accepted.

Two parsers give the same arrays and counts:
  * `BlockParser` (block_parser.py): vectorised over a block of whole lines (~2 MB) with numpy.
    Blocks are parsed in worker processes (rectools.data.process_map).
  * `LineParser` (line_parser.py): the reference, line by line in Python. It runs whenever the
    fast parser meets anything outside the plain grammar (a bad line, non-ASCII bytes, a stray CR,
    field names longer than 8 bytes, numbers longer than 16 digits...), so every error message
    comes from it and names file and line.
The parsed arrays of each file are cached on disk (rectools.cache, keyed by the file's identity and
this parsing schema); later epochs and runs read the cache instead of the text. A model binds
LinesReader to its fields in its reader module (the ESCM2 folder's escm_reader.py).
"""
import logging
import os

import numpy as np

from rectools import cache
from rectools.contract import Reader
from rectools.data import BOM, process_map, read_blocks
from rectools.errors import DataError

from .block_parser import BlockParser, Irregular
from .line_parser import LineParser, add_counts, new_counts

log = logging.getLogger(__name__)
PARSER_VERSION = 2  # part of the cache key: bump whenever the parsed arrays or counts change
BLOCK_BYTES = 2 << 20  # text parsed at once: enough to amortise the numpy calls of a block
FIRST_BLOCK_BYTES = 64 << 10  # the first block of a file: training starts without waiting for 2 MB
SMALL_FILE_BYTES = 256 << 10  # a file up to this size (as stored: a .gz compressed) is parsed without workers


class LinesReader(Reader):
    """PaddleRec Ali-CCP lines of `file_list`, in order, as chunks of arrays.

    `fields` (F field names, in input order), `max_len` (L ids kept per field and line) and `vocab`
    (every id must be below it) are what a model reads; `cache_dir` holds the parsed arrays
    (rectools.cache; None: no cache), at most `cache_limit` bytes of them (None: no limit).
    `chunk_lines` bounds the lines of one chunk.
    `processes`: parse workers (None: one per core; 0: parse in the calling thread).
    chunks() yields dicts: ids int64 [n, F, L] (0 pads), click, buy, sample_id int64 [n].
    Raises DataError naming file and line for malformed data (see LineParser).
    """

    def __init__(self, file_list, fields, max_len, vocab, cache_dir, cache_limit=None, chunk_lines=8192,
                 processes=None):
        self.file_list = list(file_list)
        self.fields = list(fields)
        self.max_len = max_len
        self.vocab = vocab
        self.chunk_lines = chunk_lines
        self.processes = processes
        self.block_bytes = BLOCK_BYTES
        self.cache = cache.ArrayCache(cache_dir, {
            "format": "PaddleRec Ali-CCP lines", "parser_version": PARSER_VERSION, "fields": self.fields,
            "max_len": self.max_len, "sparse_feature_number": self.vocab},
            narrow={"ids": cache.narrowest(self.vocab - 1), "click": np.int8, "buy": np.int8}, limit=cache_limit)
        self.reported = set()  # files whose drop counts were logged: once per file, not per epoch

    def size(self):
        """The lines of a pass, once every file's cache entry holds them (rectools.contract.Reader.size)."""
        return self.cache.rows(self.file_list)

    def chunks(self):
        for path in self.file_list:
            counts = yield from self.cache.chunks(path, self.parse_file, self.chunk_lines)
            self._report(path, counts)

    def parse_file(self, path):
        """Generator of the file's chunks, parsed from its text in blocks of whole lines by worker
        processes, in order; returns the counts to report. A plain file is cut into byte ranges
        that each worker reads itself (the text never passes through this process); a .gz file is
        read here and its blocks sent."""
        counts = new_counts(self.fields)
        parse = ParseJob(self.fields, self.max_len, self.vocab, path)
        # a file of one block or less is parsed here: workers would only add their start (a fork each)
        processes = 0 if os.path.getsize(path) <= SMALL_FILE_BYTES else self.processes
        if path.endswith(".gz"):
            parts = process_map(parse, read_blocks(path, self.block_bytes, self.chunk_lines), processes)
        else:
            parts = process_map(parse, byte_ranges(os.path.getsize(path), self.block_bytes), processes)
        lines = 0  # before the block: a worker reading a range numbers its lines from 1
        try:
            for arrays, block_counts, block_lines in parts:
                lines += block_lines
                add_counts(counts, block_counts)
                for start in range(0, len(arrays["click"]), self.chunk_lines):
                    yield {k: v[start:start + self.chunk_lines] for k, v in arrays.items()}
        except DataError as e:
            if path.endswith(".gz") or e.path != path:
                raise
            raise DataError(path, lines + e.line_no, e.message) from None
        return counts

    def _report(self, path, counts):
        if path in self.reported:
            return
        self.reported.add(path)
        if counts["blank"]:
            log.warning("%s: %d blank line(s) skipped", path, counts["blank"])
        unknown, truncated = counts["unknown"], {k: v for k, v in counts["truncated"].items() if v}
        if unknown:
            log.info("%s: %d token(s) of fields not in hyper_parameters.fields skipped (%s)", path,
                     sum(unknown.values()), ", ".join(f"{k}: {v}" for k, v in sorted(unknown.items())))
        if truncated:
            log.warning("%s: %d id(s) beyond max_len=%d dropped (%s)", path, sum(truncated.values()),
                        self.max_len, ", ".join(f"{k}: {v}" for k, v in sorted(truncated.items())))


class ParseJob:
    """The parse of one block in a worker process: the fast parser, or the reference where the
    block is irregular (it names the first bad line). Picklable.

    Called with (first line number, block of lines) -> (arrays, counts, lines in the block); or
    with a byte range (start, end, file size) of a plain file, whose lines it reads itself and
    numbers from 1 (the caller adds the lines before the range to a DataError's line number).
    """

    def __init__(self, fields, max_len, vocab, path):
        self.path = path
        self.fast = BlockParser(fields, max_len, vocab)
        self.reference = LineParser(fields, max_len, vocab)

    def __call__(self, item):
        if len(item) == 3:
            item = 1, read_range(self.path, *item)
        first_line, block = item
        try:
            arrays, counts = self.fast.parse(block)
        except Irregular:
            arrays, counts = self.reference.parse(block, self.path, first_line)
        return arrays, counts, block.count(b"\n")


# ----------------------------------------------------------------------------- reading text

def byte_ranges(size, block_bytes, first_bytes=FIRST_BLOCK_BYTES):
    """(start, end, size) ranges tiling a file of `size` bytes: a small first one, so that the first
    batches come at once, then `block_bytes` each."""
    start, step = 0, min(first_bytes, block_bytes)
    while start < size:
        yield start, min(start + step, size), size
        start, step = start + step, block_bytes


def read_range(path, start, end, size):
    """The lines of a plain file that start at a byte in [start, end), whole, each ending in \\n
    (bytes: empty when none starts there); a BOM at the start of the file is dropped. Ranges that
    tile the file give every line once, in order."""
    with open(path, "rb") as f:
        f.seek(max(start - 1, 0))
        data = f.read(end - max(start - 1, 0))
        if start > 0:  # the line running into the range belongs to the range before
            cut = data.find(b"\n")
            if cut < 0 or cut == len(data) - 1:  # no line starts before `end`
                return b""
            data = data[cut + 1:]
        elif data.startswith(BOM):
            data = data[len(BOM):]
        if end < size and not data.endswith(b"\n"):  # finish the last line
            rest = [data]
            while True:
                more = f.read(1 << 16)
                cut = more.find(b"\n")
                if cut >= 0 or not more:
                    rest.append(more[:cut + 1] if cut >= 0 else more)
                    break
                rest.append(more)
            data = b"".join(rest)
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data
