"""Ali-CCP in PaddleRec's line format (datasets/ali_ccp): the reference parser, the fast parser
against it, and the reader over both as the model binds it (escm_reader.py)."""
import gzip
import logging
import os

import numpy as np
import pytest

from conftest import MODEL_DIR, model_config, write_lines
from datasets.ali_ccp import block_parser, line_parser, lines
from rectools import model_loader
from rectools.errors import DataError

reader_module = model_loader.model_module(model_loader.import_model_package(MODEL_DIR), "escm_reader", "test")


def read(paths, *overrides, processes=0, chunk_lines=4):
    """Every array of the files, read as training reads them, without a cache."""
    config = model_config(["hyper_parameters.sparse_feature_number=1000000", "hyper_parameters.max_len=3",
                           "runner.cache_dir=none", *overrides])
    chunks = list(reader_module.RecDataset(paths, config, chunk_lines=chunk_lines, processes=processes).chunks())
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, config


def test_real_lines_keep_every_token_from_the_fourth_column(shared_lines):
    data, config = read([shared_lines], "hyper_parameters.max_len=400")
    fields = config["hyper_parameters.fields"]
    with open(shared_lines) as f:
        lines = [line.rstrip("\n").split(",") for line in f]
    assert data["ids"].shape == (10, 23, 400)
    assert list(data["sample_id"]) == [int(cols[0]) for cols in lines]
    assert list(data["click"]) == [int(cols[1]) for cols in lines]
    assert list(data["buy"]) == [int(cols[2]) for cols in lines]
    for row, cols in enumerate(lines):
        expected = {}
        for token in cols[3:]:  # the first feature token is the 4th column: nothing is skipped
            field, feat = token.split(":")
            expected.setdefault(field, []).append(int(feat))
        for slot, field in enumerate(fields):
            ids = data["ids"][row, slot]
            assert list(ids[ids != 0]) == expected.get(field, []), (row, field)
    first_field, first_id = lines[0][3].split(":")
    assert data["ids"][0, fields.index(first_field), 0] == int(first_id)
    present = {f for f in fields if (data["ids"][:, fields.index(f)] != 0).any()}
    assert present == set(fields) - {"126"}  # 126 is absent from Ali-CCP, as documented


def test_max_len_truncation_is_counted_once_per_file(shared_lines, caplog):
    caplog.set_level(logging.INFO)
    config = model_config(["hyper_parameters.sparse_feature_number=1000000", "hyper_parameters.max_len=3",
                           "runner.cache_dir=none"])
    dataset = reader_module.RecDataset([shared_lines], config, processes=0)
    for _ in range(2):  # two epochs, one report
        list(dataset.chunks())
    reports = [r.getMessage() for r in caplog.records if "beyond max_len=3" in r.getMessage()]
    with open(shared_lines) as f:
        counts = {}
        for line in f:
            per_line = {}
            for token in line.rstrip("\n").split(",")[3:]:
                field = token.split(":")[0]
                per_line[field] = per_line.get(field, 0) + 1
            for field, n in per_line.items():
                counts[field] = counts.get(field, 0) + max(0, n - 3)
    assert len(reports) == 1
    assert f"{sum(counts.values())} id(s) beyond max_len=3 dropped" in reports[0]


def test_md5_column_is_recognised_by_its_shape(tmp_path):
    md5 = "0123456789abcdef0123456789ABCDEF"
    path = write_lines(str(tmp_path / "a.txt"), [f"7,1,0,{md5},101:5,205:9", "8,0,0,101:6"])
    data, config = read([path])
    fields = config["hyper_parameters.fields"]
    assert data["ids"][0, fields.index("101"), 0] == 5 and data["ids"][0, fields.index("205"), 0] == 9
    assert data["ids"][1, fields.index("101"), 0] == 6
    assert int((data["ids"] != 0).sum()) == 3


def test_padding_and_multi_valued_fields(tmp_path):
    path = write_lines(str(tmp_path / "a.txt"), ["1,0,0,210:4,210:5,301:2"])
    data, config = read([path])
    fields = config["hyper_parameters.fields"]
    assert list(data["ids"][0, fields.index("210")]) == [4, 5, 0]
    assert list(data["ids"][0, fields.index("301")]) == [2, 0, 0]


def test_unknown_fields_are_counted_and_reported_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = write_lines(str(tmp_path / "a.txt"), ["1,0,0,999:4,101:1", "2,0,0,999:4,998:3"])
    data, _ = read([path])
    assert int((data["ids"] != 0).sum()) == 1
    reports = [r.getMessage() for r in caplog.records if "not in hyper_parameters.fields" in r.getMessage()]
    assert len(reports) == 1 and "3 token(s)" in reports[0] and "998: 1, 999: 2" in reports[0]


def test_gzip_files_and_blank_lines(tmp_path, caplog):
    path = str(tmp_path / "a.txt.gz")
    with gzip.open(path, "wt") as f:
        f.write("1,1,1,101:3\n\n2,0,0,101:4\n")
    data, _ = read([path])
    assert list(data["sample_id"]) == [1, 2] and list(data["buy"]) == [1, 0]
    assert any("1 blank line(s) skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("line, message", [
    ("1,2,0,101:1", "click and buy must be 0 or 1"),
    ("1,0,1,101:1", "buy=1 on an impression with click=0"),
    ("x,0,0,101:1", "sample_id is not a non-negative integer: 'x'"),
    ("1,0,0,101:abc", "feature id of field 101 is not a non-negative integer: 'abc'"),
    ("1,0,0,101:-4", "feature id of field 101 is not a non-negative integer: '-4'"),
    ("1,0,0,101:1000000", "feature id 1000000 of field 101 is outside [0, hyper_parameters.sparse_feature_number"),
    ("1,0,0,101:1,205", "feature token '205' is not field:feat"),
    ("1,0,0,101:1,:205", "feature token ':205' has no field name"),
    ("1,0,0,notanmd5,101:1", "column 4 is neither a field:feat token nor a 32-hex-digit md5"),
    ("1,0", "expected sample_id,click,buy,field:feat,... but got 2 column(s)"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(str(tmp_path / "bad.txt"), ["1,0,0,101:1", "2,1,0,101:2", line])
    with pytest.raises(DataError) as error:
        read([path])
    assert str(error.value).startswith(f"{path}:3: ")
    assert message in str(error.value)


def test_non_utf8_bytes_are_a_data_error_on_their_line(tmp_path):
    path = tmp_path / "bin.txt"
    good = b"".join(b"%d,0,0,101:1\n" % i for i in range(1, 1500))  # more than one read buffer
    path.write_bytes(good + b"1500,0,0,101:\xff\xfe\n" + good)
    with pytest.raises(DataError, match=f"^{path}:1500: not UTF-8"):
        read([str(path)])


# ----------------------------------------------------------------------------- the two parsers agree

FIELDS_CONFIG = ["hyper_parameters.sparse_feature_number=10000000000000"]
MD5 = "0123456789abcdef0123456789ABCDEF"


def fixture_bytes(name, shared):
    """The text of each parity fixture (bytes of a whole file)."""
    plain = {
        "md5": f"7,1,0,{MD5},101:5,205:9\n8,0,0,{MD5},101:6\n9,1,1,{MD5}\n".encode(),
        "crlf": b"1,1,0,101:3,205:4\r\n2,0,0,101:4\r\n",
        "blank lines": b"\n1,1,1,101:3\n\n\n2,0,0,101:4\n\n",
        "truncation": b"1,0,0," + b",".join(b"109_14:%d" % i for i in range(1, 40)) + b",101:7,210:1,210:2,210:3,210:4\n",
        "unknown fields": b"1,0,0,999:4,101:1,999:x y,abc_def:7\n2,0,0,998:3\n",
        "fields split in a line": b"1,0,0,101:1,205:2,101:3,205:4,101:5,101:6,101:7\n",
        "long and padded numbers": b"123456789012345,1,0,101:1234567890123,205:007,210:000000000000001\n",
        "no features, last line unterminated": b"5,0,0\n6,1,0,101:2",
        "bom": b"\xef\xbb\xbf1,0,0,101:1\n2,0,0,101:2\n",
    }
    irregular = {  # outside the fast grammar: the reference parses these blocks
        "whitespace-only line": b"1,0,0,101:1\n \t \n2,0,0,101:2\n",
        "sample_id of 19 digits": b"9223372036854775807,0,0,101:1\n",
        "lone CR": b"1,0,0,101:1\r\r\n2,0,0,101:2\n",
        "non-ASCII field": "1,0,0,fé:1,101:2\n".encode(),
        "field name over 8 bytes": b"1,0,0,123456789:1,101:2\n",
        "NUL byte": b"1,0,0,101:1\n2,0,0,10\x001:2\n",
    }
    if name == "real lines":
        with open(shared, "rb") as f:
            return f.read(), True
    return (plain[name], True) if name in plain else (irregular[name], False)


@pytest.mark.parametrize("byte", [*range(0x10, 0x1a), ord("g"), ord("G"), ord("@"), ord("`"), ord(" ")])
def test_a_32_byte_column_4_with_a_byte_that_is_no_hex_digit_is_left_to_the_reference(byte):
    block = b"1,1,0," + MD5[:31].encode() + bytes([byte]) + b",101:5\n"
    config = model_config([*FIELDS_CONFIG, "runner.cache_dir=none"])
    fields, vocab = config["hyper_parameters.fields"], config["hyper_parameters.sparse_feature_number"]
    with pytest.raises(block_parser.Irregular):
        block_parser.BlockParser(fields, 3, vocab).parse(block)
    with pytest.raises(DataError, match="column 4 is neither a field:feat token nor a 32-hex-digit md5"):
        line_parser.LineParser(fields, 3, vocab).parse(block, "x.txt", 1)


PARITY_FIXTURES = ["real lines", "md5", "crlf", "blank lines", "truncation", "unknown fields",
                   "fields split in a line", "long and padded numbers", "no features, last line unterminated", "bom",
                   "whitespace-only line", "sample_id of 19 digits", "lone CR", "non-ASCII field",
                   "field name over 8 bytes", "NUL byte"]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("max_len", [3, 400])
@pytest.mark.parametrize("name", PARITY_FIXTURES)
def test_vectorised_parser_gives_the_reference_arrays_and_counts(tmp_path, request, name, max_len, compress):
    shared = request.getfixturevalue("shared_lines") if name == "real lines" else None
    text, fast_grammar = fixture_bytes(name, shared)
    path = str(tmp_path / ("data.txt.gz" if compress else "data.txt"))
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(text)
    config = model_config([*FIELDS_CONFIG, f"hyper_parameters.max_len={max_len}", "runner.cache_dir=none"])
    fields, vocab = config["hyper_parameters.fields"], config["hyper_parameters.sparse_feature_number"]
    fast = block_parser.BlockParser(fields, max_len, vocab)
    reference = line_parser.LineParser(fields, max_len, vocab)
    blocks = list(lines.read_blocks(path, 64, 2))  # several blocks of at most two lines
    assert sum(block.count(b"\n") for _, block in blocks) == text.count(b"\n") + (not text.endswith(b"\n"))
    used_fast = 0
    for first_line, block in blocks:
        expected, expected_counts = reference.parse(block, path, first_line)
        try:
            arrays, counts = fast.parse(block)
            used_fast += 1
        except block_parser.Irregular:
            continue
        assert counts == expected_counts, (first_line, block)
        for key in expected:
            assert arrays[key].dtype == expected[key].dtype and np.array_equal(arrays[key], expected[key]), key
    assert used_fast == len(blocks) if fast_grammar else used_fast < len(blocks)
    # the reader as training uses it gives the reference's arrays and counts: blocks of many lines,
    # and (plain files) byte ranges smaller than a line, so that lines straddle ranges
    expected = [reference.parse(block, path, first) for first, block in blocks]
    expected_counts = line_parser.new_counts(fields)
    for _, part in expected:
        line_parser.add_counts(expected_counts, part)
    for block_bytes in (lines.BLOCK_BYTES, 37):
        dataset = reader_module.RecDataset([path], config, processes=0)
        dataset.block_bytes = block_bytes
        parts = dataset.parse_file(path)
        got = []
        while True:
            try:
                got.append(next(parts))
            except StopIteration as stop:
                assert stop.value == expected_counts
                break
        for key in ("ids", "click", "buy", "sample_id"):
            assert np.array_equal(np.concatenate([c[key] for c in got]),
                                  np.concatenate([e[key] for e, _ in expected])), (key, block_bytes)


def test_a_sample_id_beyond_64_bits_is_a_data_error(tmp_path):
    path = write_lines(str(tmp_path / "a.txt"), ["1,0,0,101:1", f"{2 ** 63},0,0,101:1"])
    with pytest.raises(DataError, match=f"^{path}:2: sample_id {2 ** 63} does not fit a signed 64-bit integer"):
        read([path])
    path = write_lines(str(tmp_path / "b.txt"), [f"{2 ** 63 - 1},0,0,101:1"])
    assert read([path])[0]["sample_id"][0] == 2 ** 63 - 1


def test_a_byte_order_mark_at_the_start_is_skipped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf17,1,0,101:3\n18,0,0,101:4\n")
    data, _ = read([str(path)])
    assert list(data["sample_id"]) == [17, 18]


@pytest.mark.parametrize("compress", [False, True])
def test_a_bad_line_far_into_a_file_is_named_by_the_worker_processes(tmp_path, compress):
    lines = [f"{i},0,0,101:{i % 50 + 1},205:3" for i in range(1, 30001)]
    lines[23456] = "23457,0,0,101:5,205:x"
    path = write_lines(str(tmp_path / "big.txt"), lines)
    if compress:
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as out:
            out.write(f.read())
        path += ".gz"
    config = model_config(["hyper_parameters.sparse_feature_number=1000", "runner.cache_dir=none"])
    dataset = reader_module.RecDataset([path], config, chunk_lines=1000, processes=2)
    dataset.block_bytes = 4096  # a hundred blocks before the bad line
    with pytest.raises(DataError) as error:
        list(dataset.chunks())
    assert str(error.value) == f"{path}:23457: feature id of field 205 is not a non-negative integer: 'x'"


def damaged_gzip(tmp_path, kind):
    lines = "".join(f"{i},0,0,101:{i % 50 + 1},205:{i % 7 + 1}\n" for i in range(1, 200001)).encode()
    data = gzip.compress(lines, mtime=0)
    path = tmp_path / "part.txt.gz"
    if kind == "cut short":
        data = data[:len(data) // 2]
    elif kind == "plain text named .gz":
        data = lines
    elif kind == "flipped byte in its checksum":
        data = data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("cut short", r"not readable as gzip after line \d+ \(the last line read whole\): Compressed file ended"),
    ("plain text named .gz", "not readable as gzip at its start: Not a gzipped file"),
    ("flipped byte in its checksum", r"not readable as gzip after line \d+ \(the last line read whole\): CRC check"),
])
def test_a_damaged_gzip_file_is_one_data_error(tmp_path, kind, message):
    path = damaged_gzip(tmp_path, kind)
    with pytest.raises(DataError, match=f"^{path}:\\d+: {message}"):
        read([path], chunk_lines=8192)


def test_a_flipped_byte_inside_gzip_data_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "part.txt.gz"
    data = bytearray(gzip.compress("".join(f"{i},0,0,101:{i % 50 + 1}\n" for i in range(1, 50001)).encode(), mtime=0))
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"^{path}:\\d+: "):  # a gzip error, or the garbled line's own
        read([str(path)], chunk_lines=8192)


@pytest.mark.parametrize("vocab", [737946, 100000000, 100000001])
def test_ids_at_the_vocabulary_bound_take_the_same_path_in_both_parsers(tmp_path, vocab):
    config = model_config([f"hyper_parameters.sparse_feature_number={vocab}", "runner.cache_dir=none"])
    fields = config["hyper_parameters.fields"]
    fast, reference = block_parser.BlockParser(fields, 3, vocab), line_parser.LineParser(fields, 3, vocab)
    block = f"1,0,0,101:{vocab - 1},205:0,210:7,210:{vocab - 2},210:{vocab - 1},210:5\n2,1,0,101:1\n".encode()
    arrays, counts = fast.parse(block)
    expected, expected_counts = reference.parse(block, "a.txt", 1)
    assert counts == expected_counts and all(np.array_equal(arrays[k], expected[k]) for k in expected)
    with pytest.raises(block_parser.Irregular):
        fast.parse(f"1,0,0,101:1,210:{vocab}\n".encode())  # the reference names it: out of range
    with pytest.raises(DataError, match=f"feature id {vocab} of field 210 is outside"):
        reference.parse(f"1,0,0,101:1,210:{vocab}\n".encode(), "a.txt", 1)
