"""Reader of Ali-CCP in PaddleRec's line format:

    sample_id,click,buy[,md5],field:feat,field:feat,...

Every token from the first feature column on is read. Some published copies carry a 32-hex-digit
common-feature (md5) column before the features; it is recognised by its shape and skipped.
Output: chunks of arrays, `ids` int64 [n, fields, max_len] (0 pads), `click`, `buy` int64 [n],
`sample_id` int64 [n]. Files ending in .gz are read through gzip.
"""
import collections
import gzip
import logging
import re

import numpy as np

from rectools.contract import Reader
from rectools.errors import DataError

log = logging.getLogger(__name__)
MD5 = re.compile(r"[0-9a-fA-F]{32}")


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


class RecDataset(Reader):
    def __init__(self, file_list, config, chunk_lines=8192):
        self.file_list = list(file_list)
        self.fields = config["hyper_parameters.fields"]
        self.slot = {field: i for i, field in enumerate(self.fields)}
        self.max_len = config["hyper_parameters.max_len"]
        self.vocab = config["hyper_parameters.sparse_feature_number"]
        self.chunk_lines = chunk_lines
        self.reported = set()  # files whose drop counts were logged: once per file, not per epoch

    def chunks(self):
        for path in self.file_list:
            yield from self._file_chunks(path)

    def _file_chunks(self, path):
        stats = collections.Counter()
        unknown = collections.Counter()
        truncated = collections.Counter()
        rows = []
        with _open(path) as f:
            for line_no, raw in enumerate(f, 1):
                try:  # decoded line by line, so that the error names the right line
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, line_no, f"not UTF-8 text: {e}") from None
                row = self._parse(line, path, line_no, unknown, truncated)
                if row is None:
                    stats["blank"] += 1
                    continue
                rows.append(row)
                if len(rows) == self.chunk_lines:
                    yield self._to_arrays(rows)
                    rows = []
        if rows:
            yield self._to_arrays(rows)
        self._report(path, stats, unknown, truncated)

    def _parse(self, line, path, line_no, unknown, truncated):
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
            slot = self.slot.get(field)
            if slot is None:
                unknown[field] += 1
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
                truncated[field] += 1
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
                "click": head[:, 1], "buy": head[:, 2], "sample_id": head[:, 0]}

    def _report(self, path, stats, unknown, truncated):
        if path in self.reported:
            return
        self.reported.add(path)
        if stats["blank"]:
            log.warning("%s: %d blank line(s) skipped", path, stats["blank"])
        if unknown:
            log.info("%s: %d token(s) of fields not in hyper_parameters.fields skipped (%s)", path,
                     sum(unknown.values()), ", ".join(f"{k}: {v}" for k, v in sorted(unknown.items())))
        if truncated:
            log.warning("%s: %d id(s) beyond max_len=%d dropped (%s)", path, sum(truncated.values()),
                        self.max_len, ", ".join(f"{k}: {v}" for k, v in sorted(truncated.items())))


def _integer(text, what, path, line_no):
    """A non-negative decimal integer; int() alone would also take ' 7', '+7' and '7_0'."""
    if not (text.isascii() and text.isdigit()):
        raise DataError(path, line_no, f"{what} is not a non-negative integer: {text[:40]!r}")
    return int(text)
