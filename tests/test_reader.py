import gzip
import logging
import os

import numpy as np
import pytest

from conftest import model_config, write_lines
from rectools import model_loader
from rectools.data import batches
from rectools.errors import DataError

from conftest import MODEL_DIR

reader_module = model_loader.model_module(model_loader.import_model_package(MODEL_DIR), "escm_reader", "test")


def read(paths, *overrides):
    config = model_config(["hyper_parameters.sparse_feature_number=1000000", "hyper_parameters.max_len=3", *overrides])
    chunks = list(reader_module.RecDataset(paths, config, chunk_lines=4).chunks())
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
    config = model_config(["hyper_parameters.sparse_feature_number=1000000", "hyper_parameters.max_len=3"])
    dataset = reader_module.RecDataset([shared_lines], config)
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


def test_batches_recut_chunks_without_losing_samples(tmp_path):
    paths = [write_lines(str(tmp_path / f"{name}.txt"), [f"{i},0,0,101:{i + 1}" for i in range(start, start + 7)])
             for name, start in (("a", 0), ("b", 7))]
    config = model_config(["hyper_parameters.sparse_feature_number=100"])
    dataset = reader_module.RecDataset(paths, config, chunk_lines=3)
    sizes, ids = [], []
    for batch in batches(dataset.chunks(), 5):
        sizes.append(len(batch["click"]))
        ids.extend(batch["sample_id"])
    assert sizes == [5, 5, 4] and ids == list(range(14))
