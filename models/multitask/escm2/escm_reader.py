"""Reader of Ali-CCP in PaddleRec's line format:

    sample_id,click,buy[,md5],field:feat,field:feat,...

Every token from the first feature column on is read. Some published copies carry a 32-hex-digit
common-feature (md5) column before the features; it is recognised by its shape and skipped.
Output: chunks of arrays, `ids` int64 [n, fields, max_len] (0 pads), `click`, `buy` int64 [n],
`sample_id` int64 [n]. Files ending in .gz are read through gzip; a UTF-8 byte order mark at the
start of a file is skipped; CRLF line ends are accepted.

Two parsers give the same arrays and counts:
  * `BlockParser`: vectorised over a block of whole lines (~2 MB) with numpy: separator positions;
    the 8 bytes before each ':' name the field (a hash table); the 8 bytes ending each id are
    checked as digits and against the vocabulary in a few word operations (SWAR); ranks of ids
    within their field come from run lengths, and only the ids kept (max_len) are decoded. No
    Python per token or per line. Blocks are parsed in worker processes (rectools.data.process_map).
  * `LineParser`: the reference, line by line in Python. It runs whenever the fast parser meets
    anything outside the plain grammar (a bad line, non-ASCII bytes, a stray CR, field names longer
    than 8 bytes, numbers longer than 16 digits...), so every error message comes from it and names
    file and line.
The parsed arrays of each file are cached on disk (rectools.cache, keyed by the file's identity and
this parsing schema); later epochs and runs read the cache instead of the text.
"""
import logging
import os
import re
import threading
import zlib

import numpy as np

from rectools import cache
from rectools.contract import Reader
from rectools.data import open_data, process_map
from rectools.errors import DataError

log = logging.getLogger(__name__)
MD5 = re.compile(r"[0-9a-fA-F]{32}")
BOM = b"\xef\xbb\xbf"
INT64_LIMIT = 2 ** 63
PARSER_VERSION = 2  # part of the cache key: bump whenever the parsed arrays or counts change
BLOCK_BYTES = 2 << 20  # text parsed at once: enough to amortise the numpy calls of a block
FIRST_BLOCK_BYTES = 64 << 10  # the first block of a file: training starts without waiting for 2 MB
SMALL_FILE_BYTES = 256 << 10  # a file up to this size (as stored: a .gz compressed) is parsed without workers


class RecDataset(Reader):
    """The model's data: PaddleRec Ali-CCP lines of `file_list`, in order, as chunks of arrays.

    `config` gives hyper_parameters.fields (F), max_len (L) and sparse_feature_number (vocabulary),
    and runner.cache_dir. `chunk_lines` bounds the lines of one chunk.
    `processes`: parse workers (None: one per core; 0: parse in the calling thread).
    chunks() yields dicts: ids int64 [n, F, L] (0 pads), click, buy, sample_id int64 [n].
    Raises DataError naming file and line for malformed data (see LineParser).
    """

    def __init__(self, file_list, config, chunk_lines=8192, processes=None):
        self.file_list = list(file_list)
        self.fields = list(config["hyper_parameters.fields"])
        self.max_len = config["hyper_parameters.max_len"]
        self.vocab = config["hyper_parameters.sparse_feature_number"]
        self.chunk_lines = chunk_lines
        self.processes = processes
        self.block_bytes = BLOCK_BYTES
        self.cache = cache.ArrayCache(cache.cache_dir(config), {
            "format": "PaddleRec Ali-CCP lines", "parser_version": PARSER_VERSION, "fields": self.fields,
            "max_len": self.max_len, "sparse_feature_number": self.vocab},
            narrow={"ids": cache.narrowest(self.vocab - 1), "click": np.int8, "buy": np.int8},
            limit=cache.max_bytes(config))
        self.reported = set()  # files whose drop counts were logged: once per file, not per epoch

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
        parse = BlockParse(self.fields, self.max_len, self.vocab, path)
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


def new_counts(fields):
    """What a parse reports: blank lines, tokens of unknown fields, ids beyond max_len per field."""
    return {"blank": 0, "unknown": {}, "truncated": {field: 0 for field in fields}}


def add_counts(total, part):
    total["blank"] += part["blank"]
    for key in ("unknown", "truncated"):
        for field, n in part[key].items():
            total[key][field] = total[key].get(field, 0) + n


class BlockParse:
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
            line_no = yield from _cut(text[:end], line_no, max_lines)
    if carry:
        yield line_no, carry + b"\n"


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


def _cut(text, line_no, max_lines):
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


# ----------------------------------------------------------------------------- the reference parser

class LineParser:
    """The reference parser: one line at a time in Python (a few thousand lines/s on real lines).

    parse(block, path, first_line) -> (arrays, counts), the same as BlockParser.parse. Raises
    DataError naming path and line for: bytes that are not UTF-8, fewer than 3 columns, a
    sample_id, click or buy that is not a non-negative integer, click or buy other than 0/1, buy
    without click, a sample_id beyond signed 64 bits, a 4th column that is neither field:feat nor
    a 32-hex-digit md5, a feature token without ':' or without a field name before it, a feature id
    of a known field that is not a
    non-negative integer or not below sparse_feature_number. Tokens of other fields are counted,
    not checked.
    """

    def __init__(self, fields, max_len, vocab):
        self.fields, self.max_len, self.vocab = fields, max_len, vocab
        self.slot = {field: i for i, field in enumerate(fields)}

    def parse(self, block, path, first_line):
        counts = new_counts(self.fields)
        rows = []
        for line_no, raw in enumerate(block.split(b"\n")[:-1], first_line):
            try:  # decoded line by line, so that the error names the right line
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, line_no, f"not UTF-8 text: {e}") from None
            row = self._parse(line, path, line_no, counts)
            if row is None:
                counts["blank"] += 1
            else:
                rows.append(row)
        return self._to_arrays(rows), counts

    def _parse(self, line, path, line_no, counts):
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        cols = line.split(",")
        if len(cols) < 3:
            raise DataError(path, line_no, f"expected sample_id,click,buy,field:feat,... but got {len(cols)} column(s)")
        sample_id = _integer(cols[0], "sample_id", path, line_no)
        click = _integer(cols[1], "click", path, line_no)
        buy = _integer(cols[2], "buy", path, line_no)
        if click not in (0, 1) or buy not in (0, 1):
            raise DataError(path, line_no, f"click and buy must be 0 or 1, got click={cols[1]!r} buy={cols[2]!r}")
        if buy > click:
            raise DataError(path, line_no, "buy=1 on an impression with click=0")
        if sample_id >= INT64_LIMIT:
            raise DataError(path, line_no, f"sample_id {sample_id} does not fit a signed 64-bit integer")
        tokens = cols[3:]
        if tokens and ":" not in tokens[0]:
            if not MD5.fullmatch(tokens[0]):
                raise DataError(path, line_no, f"column 4 is neither a field:feat token nor a 32-hex-digit md5: "
                                               f"{tokens[0][:40]!r}")
            tokens = tokens[1:]
        ids, fill = [], {}
        for token in tokens:
            field, sep, feat = token.partition(":")
            if not sep:
                raise DataError(path, line_no, f"feature token {token[:40]!r} is not field:feat")
            if not field:
                raise DataError(path, line_no, f"feature token {token[:40]!r} has no field name")
            slot = self.slot.get(field)
            if slot is None:
                counts["unknown"][field] = counts["unknown"].get(field, 0) + 1
                continue
            feat_id = _integer(feat, f"feature id of field {field}", path, line_no)
            if not 0 <= feat_id < self.vocab:
                raise DataError(path, line_no, f"feature id {feat_id} of field {field} is outside "
                                               f"[0, hyper_parameters.sparse_feature_number={self.vocab})")
            count = fill.get(slot, 0)
            if count < self.max_len:
                ids.append((slot * self.max_len + count, feat_id))
                fill[slot] = count + 1
            else:
                counts["truncated"][field] += 1
        return sample_id, click, buy, ids

    def _to_arrays(self, rows):
        n, width = len(rows), len(self.fields) * self.max_len
        flat_pos, flat_ids = [], []
        for i, (_, _, _, ids) in enumerate(rows):
            base = i * width
            for pos, feat_id in ids:
                flat_pos.append(base + pos)
                flat_ids.append(feat_id)
        ids = np.zeros(n * width, dtype=np.int64)
        ids[np.asarray(flat_pos, dtype=np.int64)] = np.asarray(flat_ids, dtype=np.int64)
        head = np.asarray([row[:3] for row in rows], dtype=np.int64).reshape(n, 3)
        return {"ids": ids.reshape(n, len(self.fields), self.max_len),
                "click": head[:, 1].copy(), "buy": head[:, 2].copy(), "sample_id": head[:, 0].copy()}


def _integer(text, what, path, line_no):
    """A non-negative decimal integer; int() alone would also take ' 7', '+7' and '7_0'."""
    if not (text.isascii() and text.isdigit()):
        raise DataError(path, line_no, f"{what} is not a non-negative integer: {text[:40]!r}")
    return int(text)


# ----------------------------------------------------------------------------- the vectorised parser

class Irregular(Exception):
    """The block holds something outside the fast parser's grammar: the reference parses it."""


_U64 = np.uint64
_ASCII_ZEROS = _U64(0x3030303030303030)


class _Scratch(threading.local):
    """Work arrays of the block parser that outlive a parse, one set per thread (a parse worker
    process keeps them for its next block). Fresh memory costs a page fault per 4 KB, often
    more than the numpy passes over it, and the allocator gives a parse's freed temporaries back
    to the system; kept here, they are faulted in once. About 6 times the largest block parsed
    (12 MB for blocks of 2 MB of real lines); arrays whose contents are used up lend their
    memory to later ones of the same parse under the same name."""

    def __init__(self):
        self.buffers = {}

    def __call__(self, name, n, dtype):
        """An uninitialised array of n items of dtype, at the start of the memory of `name`."""
        size = n * np.dtype(dtype).itemsize
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < size:
            buffer = self.buffers[name] = np.empty(size + (size >> 3), dtype=np.uint8)  # room for larger blocks
        return buffer[:size].view(dtype)


_SCRATCH = _Scratch()


def _separators(text, scratch, exact):
    """(positions (intp), bytes (uint8, in scratch)) of the separators ',' ':' and LF of the text;
    with exact=False, of ':' and every byte below '0' (two numpy passes fewer)."""
    is_sep = np.equal(text, 58, out=scratch("mask", len(text), bool))
    other = scratch("words", len(text), bool)  # the memory of the words, made later
    if exact:
        is_sep |= np.equal(text, 44, out=other)
        is_sep |= np.equal(text, 10, out=other)
    else:
        is_sep |= np.less(text, 48, out=other)
    sep = np.flatnonzero(is_sep)  # intp: gathers index with it unconverted
    return sep, text.take(sep, out=scratch("kind", len(sep), np.uint8), mode="clip")


def _line_ends_and_colons(kind, scratch):
    """(the separators that are LF: the last segment of each line, those that are ':': one per
    field:feat token), positions among the separators of _separators' `kind`."""
    is_kind = scratch("mask", len(kind), bool)  # the separators' mask is used up by now
    return np.flatnonzero(np.equal(kind, 10, out=is_kind)), np.flatnonzero(np.equal(kind, 58, out=is_kind))


def _words(text, out):
    """The text behind 8 zero bytes and before 8 or more, as aligned little-endian words: out
    (uint64, len(text) // 8 + 2 of them), word q holding padded bytes [8q, 8q + 8)."""
    n = len(text)
    padded = out.view(np.uint8)
    padded[:8] = 0
    padded[8:8 + n] = text
    padded[8 + n:] = 0
    return out


def _ending(words, end, out, high, shift):
    """The 8 bytes text[e - 8:e] of each e in `end` (intp, 0 <= e <= len(text)) as little-endian
    uint64 words (zero bytes before the text) into `out`; `high` and `shift` are work arrays of the
    same length (uint64, intp). Two gathers of aligned words and shifts: numpy gathers 8 bytes at
    unaligned addresses no faster, and only into new memory."""
    np.right_shift(end, 3, out=shift)  # the aligned word where the 8 bytes start, then the next
    words.take(shift, out=out, mode="clip")
    words[1:].take(shift, out=high, mode="clip")
    np.bitwise_and(end, 7, out=shift)
    shift <<= 3
    shift = shift.view(_U64)  # bits of the first word before the 8 bytes
    out >>= shift
    np.subtract(_U64(64), shift, out=shift)
    high <<= shift  # a shift by 64 gives 0 in numpy
    out |= high
    return out


def _ending_new(words, end):
    """_ending into new arrays."""
    return _ending(words, end, np.empty(len(end), dtype=_U64), np.empty(len(end), dtype=_U64),
                   np.empty(len(end), dtype=np.intp))


def _bits_before(n, extra=0):
    """In place: the bits of a word below its last n - extra bytes, 8 * (8 + extra - n), as
    uint64 (n: intp, overwritten)."""
    np.subtract(8 + extra, n, out=n)
    n <<= 3
    return n.view(_U64)


def _digit_values(word, bits):
    """In place: the bytes of each word of ASCII text above its lowest `bits` (see _bits_before)
    as digit values (byte - '0'), the bytes below them 0: an 8-digit number with leading zeros,
    when those bytes are digits."""
    word ^= _ASCII_ZEROS
    word >>= bits
    word <<= bits
    return word


def _all_digits(v):
    """Whether every byte of every word of _digit_values is a digit value (0..9)."""
    return v.view(np.uint8).max(initial=0) <= 9


def _value8(v):
    """Values of 8-digit words of digit values (see _digit_values). SWAR: digit pairs, quads and
    the eight combined by three multiplications (the method of Lemire's fast_float and simdjson);
    in place where it can, as temporaries cost page faults."""
    t = v >> _U64(8)
    v = v * _U64(10)  # digit values, the most significant digit in the lowest byte
    v += t  # pairs
    np.right_shift(v, _U64(16), out=t)
    t &= _U64(0x000000FF000000FF)
    t *= _U64(1 + (10000 << 32))
    v &= _U64(0x000000FF000000FF)
    v *= _U64(100 + (1000000 << 32))
    v += t
    v >>= _U64(32)
    return v.view(np.int64)


def _decimal(words, start, end):
    """(values, all digits?) of the numbers text[start:end]; Irregular unless 1 to 16 digits long."""
    n = end - start
    if len(n) and (n.min() < 1 or n.max() > 16):
        raise Irregular
    v = _digit_values(_ending_new(words, end), _bits_before(np.minimum(n, 8)))
    ok = _all_digits(v)
    value = _value8(v)
    long = np.flatnonzero(n > 8)
    if len(long):
        high = _digit_values(_ending_new(words, end[long] - 8), _bits_before(n[long] - 8))
        value[long] += _value8(high) * 10 ** 8
        ok = ok and _all_digits(high)
    return value, ok


def _key(name):
    """A field name of at most 8 bytes as the word of its bytes (little-endian), as the parser
    reads names; None for longer names, which never match."""
    raw = name.encode("utf-8")
    return int.from_bytes(raw, "little") if len(raw) <= 8 else None


class _FieldTable:
    """Field name words -> slots by a multiplicative hash into a small table without collisions."""

    def __init__(self, fields):
        keys = {_key(field): slot for slot, field in enumerate(fields) if _key(field) is not None}
        self.bits = max(4, (4 * len(keys)).bit_length())
        rng = np.random.default_rng(0)  # a fixed search: the same table in every run
        while True:
            self.multiplier = _U64(int(rng.integers(1, 2 ** 63)) * 2 + 1)
            buckets = {k: self._bucket(np.array([k], dtype=_U64))[0] for k in keys}
            if len(set(buckets.values())) == len(keys):
                break
        self.key = np.zeros(2 ** self.bits, dtype=_U64)  # 0 is the empty name: unknown unless a field
        self.slot = np.full(2 ** self.bits, -1, dtype=np.int64)
        for k, slot in keys.items():
            self.key[buckets[k]], self.slot[buckets[k]] = k, slot

    def _bucket(self, key):
        bucket = key * self.multiplier
        bucket >>= _U64(64 - self.bits)
        return bucket.view(np.int64)  # small values: no conversion when indexing

    def __call__(self, key):
        """Slots of the keys, -1 for names that are no field."""
        bucket = self._bucket(key)
        slot = self.slot.take(bucket)
        slot[self.key.take(bucket) != key] = -1
        return slot


class BlockParser:
    """The fast parser: a block of whole lines -> the arrays and counts LineParser gives, by numpy
    over the whole block. Raises Irregular when the block holds anything outside the plain grammar
    (ASCII, LF or CRLF line ends, field names of at most 8 bytes, numbers of 1 to 16 digits) or any
    bad value, and the reference decides. Its work arrays are kept per thread (_Scratch)."""

    def __init__(self, fields, max_len, vocab):
        self.fields, self.max_len, self.vocab = fields, max_len, vocab
        self.table = _FieldTable(fields)
        # the largest id as 8 digit values, most significant first in a big-endian word: words of
        # digit values compare like their numbers when read big-endian
        self.largest = (_U64(int.from_bytes(bytes(int(d) for d in f"{vocab - 1:08d}"), "big"))
                        if vocab <= 10 ** 8 else None)

    def parse(self, block):
        if not block:
            raise Irregular  # nothing to vectorise (a byte range inside one long line)
        text = np.frombuffer(block, dtype=np.uint8)
        if text.max() > 127:  # not ASCII (the reference checks UTF-8)
            raise Irregular
        scratch = _SCRATCH
        # segments: the text between separators; segment k is text[sep[k - 1] + 1:sep[k]], sep[k]
        # being a ',', ':' or LF (sep[-1] is taken as -1). Plain lines have no other byte below
        # '0' (such as CR, NUL, or a space in the name of another field): all those bytes are
        # found at once, and the exact separators only when there are others among them
        sep, kind = _separators(text, scratch, exact=False)
        last, field = _line_ends_and_colons(kind, scratch)
        commas = np.count_nonzero(np.equal(kind, 44, out=scratch("mask", len(kind), bool)))
        if len(last) + len(field) + commas != len(sep):
            if b"\r" in block:
                block = block.replace(b"\r\n", b"\n")
                if b"\r" in block:
                    raise Irregular
                return self.parse(block)
            if text.min() == 0:  # NUL
                raise Irregular
            sep, kind = _separators(text, scratch, exact=True)
            last, field = _line_ends_and_colons(kind, scratch)
        words = _words(text, scratch("words", len(text) // 8 + 2, _U64))
        counts = new_counts(self.fields)
        F, L = len(self.fields), self.max_len
        first = np.empty_like(last)
        first[0], first[1:] = 0, last[:-1] + 1
        line_start = np.where(first > 0, sep[first - 1] + 1, 0)
        blank = line_start == sep[last]  # nothing but LF
        counts["blank"] = int(blank.sum())
        if counts["blank"]:
            first, last, line_start = first[~blank], last[~blank], line_start[~blank]
        n = len(first)

        # sample_id,click,buy: numbers ending in ',' ',' and ',' or LF; click and buy one byte each
        if n and (np.any(last - first < 2) or np.any(kind[first] != 44) or np.any(kind[first + 1] != 44)
                  or np.any(kind[first + 2] == 58) or np.any(sep[first + 1] - sep[first] != 2)
                  or np.any(sep[first + 2] - sep[first + 1] != 2)):
            raise Irregular
        click = text[sep[first] + 1].astype(np.int64) - 48
        buy = text[sep[first + 1] + 1].astype(np.int64) - 48
        if n and np.any((click < 0) | (click > 1) | (buy < 0) | (buy > click)):
            raise Irregular
        sample_id, ok = _decimal(words, line_start, sep[first])
        if not ok:
            raise Irregular

        # the rest: field:feat tokens, and an md5 column 4 (the one column there without ':')
        T = len(field)
        md5 = first[last - first >= 3] + 3
        md5 = md5[kind[md5] != 58]
        if len(sep) != 3 * n + counts["blank"] + 2 * T + len(md5):
            raise Irregular  # a segment that is none of these: a token without ':' or with two (see below)
        if len(md5):
            md5_start = sep[md5 - 1] + 1
            if np.any(sep[md5] - md5_start != 32):
                raise Irregular
            digits = text[md5_start[:, None] + np.arange(32)]
            letters = digits | 32  # lower case; for letters only, as it would make '0'-'9' of bytes 0x10-0x19
            if not np.all(((digits >= 48) & (digits <= 57)) | ((letters >= 97) & (letters <= 102))):
                raise Irregular
        line_tok = np.searchsorted(field, first)  # the first token of each line
        # token k: field name text[sep[field - 1] + 1:colon], id text[colon + 1:end]
        colon = sep.take(field, out=scratch("colon", T, np.intp), mode="clip")
        end = sep[1:].take(field, out=scratch("end", T, np.intp), mode="clip")
        # the name's length + 1: from the end of the token before, or, for the first token of a
        # line, from the column before. A segment between ids and names (a ',' too many) is
        # matched by a ':' too many elsewhere (the count above), which makes a name's length -1
        opens = line_tok[np.diff(np.append(line_tok, T)) > 0]
        name_span = scratch("span", T, np.intp)
        np.subtract(colon[1:], end[:-1], out=name_span[1:])
        name_span[opens] = colon[opens] - sep[field[opens] - 1]
        if T and (name_span.max() > 9 or name_span.min() < 2):
            raise Irregular
        high, shift = scratch("high", T, _U64), scratch("shift", T, np.intp)
        key = _ending(words, colon, scratch("word", T, _U64), high, shift)
        key >>= _bits_before(name_span, extra=1)  # the name alone
        # runs of tokens of one field within a line (Ali-CCP's behaviour fields: hundreds long):
        # the field table is consulted once per run, not once per token
        run, run_slot = self._runs(key, line_tok)
        if np.any(run_slot < 0):
            run_len = np.diff(np.append(run, T))
            unknown = run_slot < 0
            names, where = np.unique(key[run[unknown]], return_inverse=True)
            times = np.bincount(where, weights=run_len[unknown])
            counts["unknown"] = {int(k).to_bytes(8, "little").rstrip(b"\0").decode("ascii"): int(t)
                                 for k, t in zip(names, times)}
            known = np.repeat(~unknown, run_len)
            colon, end, key = colon[known], end[known], key[known]
            line_tok = np.append(0, np.cumsum(known))[line_tok]  # the known tokens before each line's first
            T = len(key)
            run, run_slot = self._runs(key, line_tok)
        ids = np.zeros((n, F, L), dtype=np.int64)
        if T:
            span = np.subtract(end, colon, out=scratch("span", T, np.intp))  # the id's length + 1 (names' used up)
            if span.min() < 2 or span.max() > 9 or self.vocab > 10 ** 8:
                value, ok = _decimal(words, colon + 1, end)  # the general way: every value decoded
                if not ok or value.max() >= self.vocab:
                    raise Irregular
                kept, at = self._place(run, run_slot, T, line_tok, counts)
                ids.reshape(-1)[at] = value[kept]
            else:  # up to 8 digits: checked in place, the ids beyond max_len never decoded
                digits = _ending(words, end, scratch("word", T, _U64), high[:T], shift[:T])  # keys used up
                digits = _digit_values(digits, _bits_before(span, extra=1))
                if not _all_digits(digits) or digits.view(">u8").max() > self.largest:
                    raise Irregular
                kept, at = self._place(run, run_slot, T, line_tok, counts)
                ids.reshape(-1)[at] = _value8(digits[kept])
        return {"ids": ids, "click": click, "buy": buy, "sample_id": sample_id}, counts

    def _runs(self, key, line_tok):
        """(first token of each run of equal field names within a line, the run's slot or -1)."""
        T = len(key)
        if not T:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        boundary = _SCRATCH("mask", T, bool)
        boundary[0] = True
        np.not_equal(key[1:], key[:-1], out=boundary[1:])
        boundary[line_tok[line_tok < T]] = True
        run = np.flatnonzero(boundary)
        return run, self.table(key[run])

    def _place(self, run, run_slot, T, line_start, counts):
        """(tokens kept, their flat positions in ids [n, F, L]): the first max_len ids of each
        (row, slot); the rest are counted per field. Works per run of tokens of one field in a
        line (see _runs); line_start: first token of each row, T: tokens."""
        F, L = len(self.fields), self.max_len
        run_len = np.diff(np.append(run, T))
        run_cell = (np.searchsorted(line_start, run, side="right") - 1) * F + run_slot
        offset = np.zeros_like(run)  # ids of the cell in earlier runs: a field split within a line
        if np.bincount(run_cell).max(initial=0) > 1:
            order = np.argsort(run_cell, kind="stable")
            before = np.cumsum(run_len[order]) - run_len[order]
            group = np.flatnonzero(np.diff(run_cell[order], prepend=-1))
            offset[order] = before - np.repeat(before[group], np.diff(np.append(group, len(order))))
        kept = np.clip(L - offset, 0, run_len)
        which = np.repeat(np.arange(len(run)), kept)
        j = np.arange(len(which)) - np.repeat(np.cumsum(kept) - kept, kept)
        dropped = np.bincount(run_slot, weights=run_len - kept, minlength=F)
        counts["truncated"] = dict(zip(self.fields, dropped.astype(np.int64).tolist()))
        return run[which] + j, run_cell[which] * L + offset[which] + j
