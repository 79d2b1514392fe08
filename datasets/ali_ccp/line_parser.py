"""The reference parser of Ali-CCP in PaddleRec's line format, one line at a time in Python:

    sample_id,click,buy[,md5],field:feat,field:feat,...

Every token from the first feature column on is read. Some published copies carry a 32-hex-digit
common-feature (md5) column before the features; it is recognised by its shape and skipped.
It defines the format: the fast parser (block_parser.py) gives the same arrays and counts and
hands it every block it cannot parse, so every error message comes from here and names file and
line.
"""
import re

import numpy as np

from rectools.errors import DataError

MD5 = re.compile(r"[0-9a-fA-F]{32}")
INT64_LIMIT = 2 ** 63


def new_counts(fields):
    """What a parse reports: blank lines, tokens of unknown fields, ids beyond max_len per field."""
    return {"blank": 0, "unknown": {}, "truncated": {field: 0 for field in fields}}


def add_counts(total, part):
    """Add the counts `part` (new_counts' shape) into `total`."""
    total["blank"] += part["blank"]
    for key in ("unknown", "truncated"):
        for field, n in part[key].items():
            total[key][field] = total[key].get(field, 0) + n


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
