#!/usr/bin/env python3
"""Raw Ali-CCP (as published on Tianchi, data set 408) -> PaddleRec's line format.

    python datasets/ali_ccp/preprocess.py --skeleton sample_skeleton_train.csv \\
        --common common_features_train.csv [--test-skeleton sample_skeleton_test.csv \\
        --test-common common_features_test.csv] --out DIR [--min-count 10] [--dev-fraction 0.1] [--seed 0] \\
        [--max-len N] [--force]

Input
  sample_skeleton_*.csv   sample_id,click,buy,common_feature_index,feature_num,feature_list
  common_features_*.csv   common_feature_index,feature_num,feature_list
  feature_list: items `field_id \\x02 feat_id \\x03 value` joined by `\\x01`; feature_num is their count.
  Item and context fields are in the skeleton, user fields in the common row it names. Values are
  not used (PaddleRec's format has none). Files ending in .gz are read through gzip.

What it does
  * joins every skeleton row with its common row and keeps the items of the fields of
    datasets.ali_ccp.FIELDS, the model's default hyper_parameters.fields); items of other fields are
    counted and reported;
  * drops rows with click=0 and buy=1 (a purchase without a click), counted per split;
  * splits a dev set off the training rows: a row goes to dev when the seeded generator's next
    draw is below --dev-fraction (one draw per row, in file order: the same files and seed give
    the same split);
  * numbers the ids of each field by descending frequency (occurrences in the kept training
    rows, dev excluded; ties by ascending raw id). Ids seen fewer than --min-count times, and ids
    of dev or test rows never seen in training, become the field's rare id. One id space: 0 is
    padding, then per field (in the order above) its rare id followed by its frequent ids.

Output (DIR appears whole or not at all; an existing non-empty DIR needs --force)
  train_data/part-00000.txt, dev_data/part-00000.txt[, test_data/part-00000.txt]
      sample_id,click,buy,field:id,...  skeleton items first, then common items, each in file order;
      with --max-len N only the first N ids of each field (the ones the model's reader keeps with
      hyper_parameters.max_len <= N), the others counted
  vocab.tsv   id, field, raw feat_id ("rare" for the rare id), training occurrences
  meta.json   sparse_feature_number, id range of each field, rows/clicks/buys per split, drops, skips

Memory: the common-feature table of the split being written (kept items as int32 indices) and
the counts of distinct training ids; the skeleton is streamed, twice for training (count, write).
Malformed input stops the run with one line naming file and line (exit status 2).
"""
import argparse
import collections
import gzip
import json
import logging
import os
import random
import re
import time

import numpy as np

from rectools import cli
from rectools.atomic import atomic_folder
from rectools.errors import DataError, UserError

from datasets.ali_ccp import FIELDS

log = logging.getLogger("preprocess")

_FIELD = re.compile(r"[0-9]+(?:_[0-9]+)*")
_VALUE = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
ITEM = re.compile(f"{_FIELD.pattern}\x02[0-9]+\x03{_VALUE}")
SKELETON_COLUMNS = "sample_id,click,buy,common_feature_index,feature_num,feature_list"
COMMON_COLUMNS = "common_feature_index,feature_num,feature_list"
PART = "part-00000.txt"


def default_fields():
    """Ali-CCP's 23 fields (datasets.ali_ccp.FIELDS), in PaddleRec's order."""
    return list(FIELDS)


class Progress:
    """A log line every `seconds` while a file is read: rows, rate, share of the file."""

    def __init__(self, label, seconds):
        self.label, self.seconds = label, seconds
        self.start = self.last = time.perf_counter()

    def tick(self, rows, fraction):
        now = time.perf_counter()
        if now - self.last >= self.seconds:
            self.last = now
            log.info("%s: %s rows, %s rows/s, %.0f%% of the file", self.label, f"{rows:,}",
                     f"{rows / (now - self.start):,.0f}", 100 * fraction)

    def done(self, rows):
        elapsed = time.perf_counter() - self.start
        log.info("%s: %s rows in %.1f s (%s rows/s)", self.label, f"{rows:,}", elapsed,
                 f"{rows / max(elapsed, 1e-9):,.0f}")


def read_lines(path, progress=None):
    """(line number, line without its end) for every non-blank line; blank lines are counted and
    reported. Raises DataError for a line that is not UTF-8 and UserError for a missing file."""
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    size = max(os.path.getsize(path), 1)
    blank = 0
    with open(path, "rb") as raw:
        stream = gzip.open(raw) if path.endswith(".gz") else raw
        rows = 0
        for line_no, data in enumerate(stream, 1):
            try:
                line = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(path, line_no, f"not UTF-8 text: {e}") from None
            if not line:
                blank += 1
                continue
            yield line_no, line
            rows += 1
            if progress is not None and rows % 4096 == 0:
                progress.tick(rows, raw.tell() / size)
    if blank:
        log.warning("%s: %d blank line(s) skipped", path, blank)
    if progress is not None:
        progress.done(rows)


class Known:
    """Field ids and values already found well-formed in a file."""

    def __init__(self):
        self.fields, self.values = set(), set()


def parse_items(feature_num, feature_list, path, line_no, known):
    """(keys, fields) of a feature_list in file order, key = 'field\\x02feat_id'.

    Whole-string splits instead of a per-item loop: a common row holds ~880 items. Raises
    DataError naming the first malformed item, or a feature_num that does not count the items.
    `known` (a Known) caches the field ids and values already found well-formed.
    """
    if not (feature_num.isascii() and feature_num.isdigit()):
        raise DataError(path, line_no, f"feature_num is not a non-negative integer: {feature_num[:40]!r}")
    n = int(feature_num)
    if not feature_list and n == 0:
        return [], []
    key_value = feature_list.replace("\x03", "\x01").split("\x01")  # key, value, key, value, ...
    keys, values = key_value[0::2], key_value[1::2]
    field_feat = "\x02".join(keys).split("\x02")  # field, feat, field, feat, ...
    fields, feats = field_feat[0::2], field_feat[1::2]
    digits = "".join(feats)
    well_formed = (len(key_value) == 2 * n and len(field_feat) == 2 * n and "" not in feats
                   and digits.isascii() and digits.isdigit())
    for field in set(fields) - known.fields if well_formed else ():
        well_formed = well_formed and _FIELD.fullmatch(field) is not None
        if well_formed:
            known.fields.add(field)
    try:
        if well_formed:
            new_values = set(values) - known.values
            sum(map(float, new_values))  # every value must be a number; the sum itself is not used
            if len(known.values) < 100_000:  # Ali-CCP's values repeat: check each distinct one once
                known.values.update(new_values)
    except ValueError:
        well_formed = False
    if not well_formed:
        items = feature_list.split("\x01")
        for i, item in enumerate(items, 1):
            if not ITEM.fullmatch(item):
                raise DataError(path, line_no, f"feature item {i} of {len(items)} is not "
                                               f"field_id\\x02feat_id\\x03value: {item[:60]!r}")
        raise DataError(path, line_no, f"feature_num is {feature_num} but feature_list holds {len(items)} item(s)")
    return keys, fields


def split_columns(line, expected, path, line_no):
    cols = line.split(",")
    if len(cols) != expected.count(",") + 1:
        raise DataError(path, line_no, f"expected {expected.count(',') + 1} columns ({expected}), got {len(cols)}")
    return cols


class KeyIndex(dict):
    """key -> its index, a new key getting the next one (so that map() interns at C speed)."""

    def __missing__(self, key):
        self[key] = index = len(self)
        return index


def kept_items(keys, fields, keep, skipped):
    """The keys of the kept fields; the items of other fields are counted in `skipped` (if given)."""
    if keep.issuperset(fields):
        return keys
    if skipped is not None:
        skipped.update(field for field in fields if field not in keep)
    return [key for key, field in zip(keys, fields) if field in keep]


class CommonTable:
    """The common-feature rows of one split: `rows` maps common_feature_index to the int32
    indices, into `keys`, of its kept items in file order; `keys` are the distinct
    'field\\x02feat_id' strings, in order of first appearance."""

    def __init__(self, path, keep, skipped, progress_seconds):
        self.path = path
        self.rows = {}
        index = KeyIndex()
        known = Known()
        for line_no, line in read_lines(path, Progress(f"reading {os.path.basename(path)}", progress_seconds)):
            cidx, feature_num, feature_list = split_columns(line, COMMON_COLUMNS, path, line_no)
            if not cidx:
                raise DataError(path, line_no, "common_feature_index is empty")
            if cidx in self.rows:
                raise DataError(path, line_no, f"common_feature_index {cidx!r} appears a second time")
            keys = kept_items(*parse_items(feature_num, feature_list, path, line_no, known), keep, skipped)
            self.rows[cidx] = np.array(list(map(index.__getitem__, keys)), dtype=np.int32)
        self.keys = list(index)

    def get(self, cidx, path, line_no):
        row = self.rows.get(cidx)
        if row is None:
            raise DataError(path, line_no, f"common_feature_index {cidx!r} is not in {self.path}")
        return row


def skeleton_rows(path, table, keep, progress, skipped=None):
    """(sample_id, click, buy, common_feature_index, common row, kept keys) per skeleton row,
    every column checked; click and buy stay the strings '0' / '1'."""
    known = Known()
    for line_no, line in read_lines(path, progress):
        sample_id, click, buy, cidx, feature_num, feature_list = split_columns(line, SKELETON_COLUMNS, path, line_no)
        if not (sample_id.isascii() and sample_id.isdigit()):
            raise DataError(path, line_no, f"sample_id is not a non-negative integer: {sample_id[:40]!r}")
        if click not in ("0", "1") or buy not in ("0", "1"):
            raise DataError(path, line_no, f"click and buy must be 0 or 1, got click={click[:20]!r} buy={buy[:20]!r}")
        common = table.get(cidx, path, line_no)
        keys = kept_items(*parse_items(feature_num, feature_list, path, line_no, known), keep, skipped)
        yield sample_id, click, buy, cidx, common, keys


class Tokens(dict):
    """'field\\x02feat_id' -> 'field:id' of a frequent id; any other key -> its field's rare id."""

    def __init__(self, rare):
        super().__init__()
        self.rare = rare

    def __missing__(self, key):
        return self.rare[key.partition("\x02")[0]]


class Vocabulary:
    """Frequency-ordered ids per field in one space: 0 pads, then per field its rare id and its
    ids seen at least `min_count` times, most frequent first (ties: ascending raw id).
    `tokens[key]` is the output token of a key; `size` is the sparse_feature_number."""

    def __init__(self, fields, counts, min_count):
        by_field = {field: [] for field in fields}
        for key, count in counts.items():
            field, _, feat = key.partition("\x02")
            by_field[field].append((count, feat, key))
        self.tokens = Tokens({})
        self.ranges, self.rows = {}, []  # rows: (id, field, raw feat_id or "rare", training occurrences)
        next_id = 1
        for field in fields:
            entries = sorted(by_field[field], key=lambda e: (-e[0], int(e[1]), e[1]))
            frequent = [e for e in entries if e[0] >= min_count]
            self.tokens.rare[field] = f"{field}:{next_id}"
            self.rows.append((next_id, field, "rare", sum(e[0] for e in entries if e[0] < min_count)))
            self.ranges[field] = {"rare_id": next_id, "last_id": next_id + len(frequent),
                                  "frequent_ids": len(frequent), "rare_distinct_ids": len(entries) - len(frequent)}
            for new_id, (count, feat, key) in enumerate(frequent, next_id + 1):
                self.tokens[key] = f"{field}:{new_id}"
                self.rows.append((new_id, field, feat, count))
            next_id += 1 + len(frequent)
        self.size = next_id

    def write(self, path):
        with open(path, "w") as f:
            f.write("id\tfield\tfeat_id\tcount\n")
            f.writelines(f"{i}\t{field}\t{feat}\t{count}\n" for i, field, feat, count in self.rows)


def count_training_ids(skeleton, table, keep, dev_fraction, seed, skipped, progress_seconds):
    """Pass 1 over the training skeleton: {key: occurrences in the training rows} (dev rows and
    dropped rows excluded; a common row's ids count once per training row that joins it) and
    the number of skeleton rows read."""
    rng = random.Random(seed)
    counts = collections.Counter()
    joins = collections.Counter()  # training rows per common_feature_index
    total = 0
    for _, click, buy, cidx, _, keys in skeleton_rows(skeleton, table, keep, Progress("pass 1/2 (count)",
                                                                                       progress_seconds), skipped):
        total += 1
        if rng.random() < dev_fraction or (click == "0" and buy == "1"):
            continue
        counts.update(keys)
        joins[cidx] += 1
    common_counts = np.zeros(len(table.keys), dtype=np.int64)
    for cidx, weight in joins.items():
        np.add.at(common_counts, table.rows[cidx], weight)
    for i in np.flatnonzero(common_counts).tolist():
        counts[table.keys[i]] += int(common_counts[i])
    return counts, total


class SplitFile:
    """DIR/<split>_data/part-00000.txt, with the split's row, click and buy counts."""

    def __init__(self, folder, split):
        os.makedirs(os.path.join(folder, f"{split}_data"))
        self.split = split
        self.file = open(os.path.join(folder, f"{split}_data", PART), "wb", buffering=1 << 20)
        self.write = self.file.write
        self.rows = self.clicks = self.buys = 0

    def add(self, click, buy):
        self.rows += 1
        self.clicks += click == "1"
        self.buys += buy == "1"

    def stats(self):
        return {"rows": self.rows, "clicks": self.clicks, "buys": self.buys}


def first_ids(keys, max_len):
    """(the first `max_len` keys of each field in order, {field: keys dropped}, {field: keys kept})."""
    taken, dropped, kept = {}, {}, []
    for key in keys:
        field = key[:key.index("\x02")]
        n = taken.get(field, 0)
        if n < max_len:
            taken[field] = n + 1
            kept.append(key)
        else:
            dropped[field] = dropped.get(field, 0) + 1
    return kept, dropped, taken


def write_rows(rows, vocab, table, choose, dropped, max_len=None, truncated=None):
    """Write each row, ids numbered by `vocab`, to the SplitFile `choose()` returns: one call
    per row, dropped rows included, so that a seeded choice sees the rows pass 1 saw. Rows with
    click=0 and buy=1 are counted in `dropped` by split instead. With `max_len`, only the first
    max_len ids of each field are written (what the model's reader keeps of a line with its
    hyper_parameters.max_len at most that), the others counted in `truncated` by field."""
    tokens = vocab.tokens
    last_cidx, common_part, common_cut = None, b"", None
    for sample_id, click, buy, cidx, common, keys in rows:
        out = choose()
        if click == "0" and buy == "1":
            dropped[out.split] += 1
            continue
        if cidx != last_cidx:  # skeleton rows come grouped by common row: render each once
            last_cidx = cidx
            all_common_keys = list(map(table.keys.__getitem__, common.tolist()))
            common_keys = all_common_keys
            if max_len:
                common_keys, common_cut, common_fields = first_ids(all_common_keys, max_len)
            common_part = "".join("," + t for t in map(tokens.__getitem__, common_keys)).encode() + b"\n"
        part = common_part
        if max_len:
            own_keys, cut, own_fields = first_ids(keys, max_len)
            if common_fields.keys().isdisjoint(own_fields):
                keys = own_keys
                truncated.update(common_cut)
            else:  # a field in both files: the line's first max_len ids of it, wherever they come from
                keys, cut, _ = first_ids(keys + all_common_keys, max_len)
                part = b"\n"
            truncated.update(cut)
        own = ",".join(map(tokens.__getitem__, keys))
        out.write(f"{sample_id},{click},{buy},{own}".encode() if own else f"{sample_id},{click},{buy}".encode())
        out.write(part)
        out.add(click, buy)


def preprocess(skeleton, common, out, test_skeleton=None, test_common=None, min_count=10, dev_fraction=0.1,
               seed=0, force=False, progress_seconds=15.0, fields=None, max_len=None):
    """Write DIR (see the module's docstring) and return its meta dict.

    Raises DataError (file:line) for malformed input, UserError for missing files or a DIR that
    would be overwritten without `force`.
    """
    if (test_skeleton is None) != (test_common is None):
        raise UserError("--test-skeleton and --test-common go together")
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1, got {min_count}")
    if max_len is not None and max_len < 1:
        raise UserError(f"--max-len must be at least 1, got {max_len}")
    if not 0 <= dev_fraction < 1:
        raise UserError(f"--dev-fraction must be in [0, 1), got {dev_fraction}")
    for path in (skeleton, common, test_skeleton, test_common):
        if path is not None and not os.path.isfile(path):
            raise UserError(f"file not found: {path}")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or (os.listdir(out) and not force)):
        raise UserError(f"{out} exists and is not an empty folder; pass --force to replace it")
    fields = list(fields or default_fields())
    keep = set(fields)
    skipped = {role: collections.Counter() for role in ("skeleton", "common", "test_skeleton", "test_common")}
    dropped, truncated = collections.Counter(), collections.Counter()

    table = CommonTable(common, keep, skipped["common"], progress_seconds)
    counts, total = count_training_ids(skeleton, table, keep, dev_fraction, seed, skipped["skeleton"],
                                       progress_seconds)
    vocab = Vocabulary(fields, counts, min_count)
    del counts
    log.info("vocabulary: %s frequent ids and %d rare ids (min count %d): sparse_feature_number=%d",
             f"{vocab.size - 1 - len(fields):,}", len(fields), min_count, vocab.size)
    with atomic_folder(out) as tmp:
        train, dev = SplitFile(tmp, "train"), SplitFile(tmp, "dev")
        rng = random.Random(seed)  # pass 1's draws, row for row
        write_rows(skeleton_rows(skeleton, table, keep, Progress("pass 2/2 (write)", progress_seconds)), vocab,
                   table, lambda: dev if rng.random() < dev_fraction else train, dropped, max_len, truncated)
        splits = [train, dev]
        del table
        if test_skeleton is not None:
            test_table = CommonTable(test_common, keep, skipped["test_common"], progress_seconds)
            test = SplitFile(tmp, "test")
            write_rows(skeleton_rows(test_skeleton, test_table, keep, Progress("test", progress_seconds),
                                     skipped["test_skeleton"]), vocab, test_table, lambda: test, dropped, max_len,
                       truncated)
            splits.append(test)
            del test_table
        for split in splits:
            split.file.close()
        if train.rows + dev.rows + dropped["train"] + dropped["dev"] != total:
            raise UserError(f"{skeleton} changed while it was read: {total} rows in pass 1, "
                            f"{train.rows + dev.rows + dropped['train'] + dropped['dev']} in pass 2")
        if train.rows == 0:
            raise UserError(f"{skeleton}: no training rows are left (every row dropped or sent to dev)")
        vocab.write(os.path.join(tmp, "vocab.tsv"))
        meta = {
            "format": "sample_id,click,buy,field:id,... (PaddleRec's Ali-CCP lines)",
            "sparse_feature_number": vocab.size,
            "fields": fields,
            "field_ids": vocab.ranges,
            "min_count": min_count, "dev_fraction": dev_fraction, "seed": seed,
            "inputs": {"skeleton": os.path.abspath(skeleton), "common": os.path.abspath(common),
                       "test_skeleton": test_skeleton and os.path.abspath(test_skeleton),
                       "test_common": test_common and os.path.abspath(test_common)},
            "splits": {split.split: split.stats() for split in splits},
            "dropped_click0_buy1": {split.split: dropped[split.split] for split in splits},
            "skipped_field_items": {role: dict(sorted(c.items())) for role, c in skipped.items()},
            "max_len": max_len,
            "truncated_ids": dict(sorted(truncated.items())),
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description="Raw Ali-CCP (Tianchi) files to PaddleRec's line format.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--skeleton", required=True, help="sample_skeleton_train.csv")
    parser.add_argument("--common", required=True, help="common_features_train.csv")
    parser.add_argument("--test-skeleton", help="sample_skeleton_test.csv (with --test-common)")
    parser.add_argument("--test-common", help="common_features_test.csv (with --test-skeleton)")
    parser.add_argument("--out", required=True, help="output folder (absent or empty unless --force)")
    parser.add_argument("--min-count", type=int, default=10,
                        help="ids seen fewer times in the training rows become their field's rare id")
    parser.add_argument("--dev-fraction", type=float, default=0.1, help="share of training rows sent to dev_data/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev split")
    parser.add_argument("--max-len", type=int, default=None,
                        help="write only the first N ids of each field per line (counted); default: all")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--progress-seconds", type=float, default=15.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    cli.run_command(lambda: report(preprocess(
        args.skeleton, args.common, args.out, args.test_skeleton, args.test_common, args.min_count, args.dev_fraction,
        args.seed, args.force, args.progress_seconds, max_len=args.max_len), args))


def report(meta, args):
    """The summary a user reads at the end: rows per split, what was dropped or skipped, the
    sparse_feature_number and the command that trains on the output."""
    out = os.path.abspath(args.out)
    for split, s in meta["splits"].items():
        print(f"{split}: {s['rows']} rows, {s['clicks']} clicks, {s['buys']} buys "
              f"({meta['dropped_click0_buy1'][split]} rows with click=0 and buy=1 dropped)")
    for role, counts in meta["skipped_field_items"].items():
        if counts:
            print(f"skipped items of fields not kept ({role}): "
                  + ", ".join(f"{field}: {n}" for field, n in counts.items()))
    if meta["truncated_ids"]:
        print(f"ids beyond --max-len {args.max_len} not written: {sum(meta['truncated_ids'].values())} ("
              + ", ".join(f"{field}: {n}" for field, n in meta["truncated_ids"].items()) + ")")
    print(f"sparse_feature_number: {meta['sparse_feature_number']} (written to {os.path.join(out, 'meta.json')})")
    test_dir = os.path.join(out, "test_data" if "test" in meta["splits"] else "dev_data")
    print("train with: python -u tools/trainer.py -m models/multitask/escm2/config_bigdata.yaml -o "
          f"runner.train_data_dir={os.path.join(out, 'train_data')} runner.test_data_dir={test_dir} "
          f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}")


if __name__ == "__main__":
    main()
