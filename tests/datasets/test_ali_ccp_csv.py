"""Ali-CCP as a column CSV (AITM / torch-rechub layout): datasets/ali_ccp/csv_format.py, bound to the
model's fields by models/multitask/escm2/csv_reader.py."""
import gzip
import json
import logging
import os

import numpy as np
import pytest

from conftest import MODEL_DIR, model_config, run_tool, write_lines
from datasets.ali_ccp import csv_format
from rectools import model_loader
from rectools.errors import ConfigError, DataError

csv_reader = model_loader.model_module(model_loader.import_model_package(MODEL_DIR), "csv_reader", "test")
CONFIG = os.path.join(MODEL_DIR, "config_csv.yaml")
FIELDS = ["101", "205", "301"]
HEADER = "click,purchase,101,205,301,D508"


def config_for(tmp_path, *overrides):
    return model_config([f"runner.train_data_dir={tmp_path / 'train'}", "hyper_parameters.fields=[101,205,301]",
                         "hyper_parameters.max_len=2", "hyper_parameters.sparse_feature_number=100",
                         f"runner.cache_dir={tmp_path / 'cache'}", *overrides])


def parsed(path, fields=FIELDS):
    """parse_file's blocks of one file, concatenated."""
    blocks = list(csv_format.parse_file(path, fields))
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def read(paths, config, chunk_lines=2):
    chunks = list(csv_reader.RecDataset(paths, config, chunk_lines=chunk_lines).chunks())
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.fixture
def files(tmp_path):
    # training ids: 101 in 0..3 (size 4), 205 in 0..6 (size 7), 301 in 0..1 (size 2)
    # -> offsets 1, 5, 12 and 1 + 4 + 7 + 2 = 14 table rows
    train = write_lines(str(tmp_path / "train" / "part-0.csv"),
                        [HEADER, "0,0,3,0,1,0.5", "1,1,0,6,0,0.25", "", "1,0,2,5,1,0.0"])
    test = write_lines(str(tmp_path / "test" / "part-0.csv"),  # other column order; ids beyond training
                       ["purchase,301,D508,205,click,101", "0,1,0.1,7,0,4", "1,0,0.2,6,1,1"])
    return train, test


def test_each_field_has_its_own_id_range(files, tmp_path):
    train, test = files
    config = config_for(tmp_path)
    data = read([train, test], config)
    assert data["ids"].shape == (5, 3, 2) and data["ids"].dtype == np.int64
    assert (data["ids"][:, :, 1] == 0).all()  # single-valued fields: the rest of max_len pads
    assert data["ids"][:, :, 0].tolist() == [[1 + 3, 5 + 0, 12 + 1], [1 + 0, 5 + 6, 12 + 0], [1 + 2, 5 + 5, 12 + 1],
                                             [1 + 0, 5 + 0, 12 + 1],  # 101:4 and 205:7 were never trained: id 0
                                             [1 + 1, 5 + 6, 12 + 0]]
    assert data["click"].tolist() == [0, 1, 1, 0, 1] and data["buy"].tolist() == [0, 1, 0, 0, 1]
    assert data["sample_id"].tolist() == [1, 2, 3, 4, 5]  # row numbers across the files
    assert csv_reader.RecDataset([train], config).sizes.tolist() == [4, 7, 2]


def test_notes_are_logged_once_per_file(files, tmp_path, caplog):
    train, test = files
    caplog.set_level(logging.INFO)
    dataset = csv_reader.RecDataset([train, test], config_for(tmp_path))
    for _ in range(2):
        list(dataset.chunks())
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "beyond the training files' range" in m] == [
        f"{test}: 2 id(s) beyond the training files' range mapped to their field's id 0 (101: 1, 205: 1)"]
    assert [m for m in messages if "ignored" in m] == [
        f"{train}: 1 column(s) the net does not use are ignored (D508)",
        f"{test}: 1 column(s) the net does not use are ignored (D508)"]
    assert any("14 table rows used of 100" in m for m in messages)


def test_each_file_is_parsed_once_then_read_from_the_cache(files, tmp_path, monkeypatch, caplog):
    train, test = files
    calls = []
    parse = csv_format.parse_file

    def counted(path, fields):
        calls.append(path)
        return parse(path, fields)
    monkeypatch.setattr(csv_format, "parse_file", counted)
    caplog.set_level(logging.INFO)
    first = read([train, test], config_for(tmp_path))  # field sizes, then the epoch: the training file once
    assert calls == [train, test]
    again = read([train, test], config_for(tmp_path))  # a new run
    assert calls == [train, test]
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    assert any(f"{train}: read from cache" in r.getMessage() for r in caplog.records)
    write_lines(test, ["purchase,301,D508,205,click,101", "0,1,0.1,3,0,2"])  # changed: parsed again
    assert read([test], config_for(tmp_path))["ids"][:, :, 0].tolist() == [[1 + 2, 5 + 3, 12 + 1]]
    assert calls == [train, test, test]


def test_a_table_too_small_names_the_number_to_set(files, tmp_path):
    with pytest.raises(ConfigError, match="sparse_feature_number is 13, but the ids of 1 training file.* need 14 rows.*"
                                          "-o hyper_parameters.sparse_feature_number=14"):
        csv_reader.RecDataset([files[1]], config_for(tmp_path, "hyper_parameters.sparse_feature_number=13"))
    csv_reader.RecDataset([files[1]], config_for(tmp_path, "hyper_parameters.sparse_feature_number=14"))


def test_evaluation_needs_the_training_files(files, tmp_path):
    config = config_for(tmp_path)
    config["runner.train_data_dir"] = None
    with pytest.raises(ConfigError, match="runner.train_data_dir is required"):
        csv_reader.RecDataset([files[1]], config)


@pytest.mark.parametrize("lines, expected", [
    (["click,purchase,101,301", "0,0,1,1"], ":1: header lacks column(s) 205"),
    (["click,101,205,301", "0,1,1,1"], ":1: header lacks column(s) purchase"),
    (["click,purchase,101,205,301,101", "0,0,1,1,1,1"], ":1: header repeats column(s) 101"),
    ([HEADER, "0,0,1,1,1,0.5", "0,0,1,1,0.5"], ":3: 5 columns, but the header has 6"),
    ([HEADER, "0,0,1,1,1,0.5", "", "0,0,1,1,1,0.5,9"], ":4: 7 columns, but the header has 6"),
    ([HEADER, "0,0,1,1,1,0.5", "0,0,1,2.0,1,0.5"], ":3: 205 is not an integer: '2.0'"),
    ([HEADER, "0,0,1,1,1,0.5", "\r", "0,0,x,1,1,0.5"], ":4: 101 is not an integer: 'x'"),
    ([HEADER, "0,0,1,,1,0.5"], ":2: 205 is not an integer: ''"),
    ([HEADER, "0,0,1,1,1,0.5", "0,0,1,1,1,0.5", "0,0,7_0,1,1,0.5"], ":4: 101 is not an integer: '7_0'"),  # int() takes it
    ([HEADER, "0,0,1,1,1,0.5", "0,0,1,1,1,0.5", "0,0,7,\r2,1,0.5"], ":4: 205 is not an integer: '\\r2'"),
    ([HEADER, "0,0,1,1,1,0.5", "2,0,1,1,1,0.5"], ":3: click must be 0 or 1, got 2"),
    ([HEADER, "0,1,1,1,1,0.5"], ":2: purchase=1 on an impression with click=0"),
    ([HEADER, "0,0,1,1,1,0.5", "", "1,0,1,-3,1,0.5"], ":4: ids must be integers in [0, 2147483647], got -3"),
    ([], ":1: empty file"),
])
def test_bad_data_names_file_and_line(tmp_path, lines, expected):
    path = write_lines(str(tmp_path / "bad.csv"), lines)
    with pytest.raises(DataError) as caught:
        parsed(path)
    assert str(caught.value).startswith(path + ":") and expected in str(caught.value)


def test_blocks_change_nothing_and_line_numbers_survive_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = [[int(c), int(c and b)] + rng.integers(0, 50, 3).tolist() for c, b in rng.integers(0, 2, (300, 2))]
    lines = [HEADER] + [",".join(map(str, row)) + ",0.5" for row in rows]
    path = write_lines(str(tmp_path / "many.csv"), lines)
    with gzip.open(str(tmp_path / "many.csv.gz"), "wt") as f:
        f.write("\r\n".join(lines) + "\r\n")
    monkeypatch.setattr(csv_format, "BLOCK_BYTES", 64)  # many blocks, lines cut at block ends
    for source in (path, str(tmp_path / "many.csv.gz")):
        arrays = parsed(source)
        assert arrays["ids"].tolist() == [row[2:] for row in rows]
        assert arrays["click"].tolist() == [row[0] for row in rows]
        assert arrays["buy"].tolist() == [row[1] for row in rows]
        assert arrays["ids"].dtype == np.int32 and arrays["click"].dtype == np.int8
    lines[250] = "0,0,1,1,oops,0.5"
    write_lines(path, lines)
    with pytest.raises(DataError, match=r"many.csv:251: 301 is not an integer: 'oops'"):
        parsed(path)
    lines[250] = "0,0,1,1,1"
    write_lines(path, lines)
    with pytest.raises(DataError, match=r"many.csv:251: 5 columns"):
        parsed(path)


def test_a_line_longer_than_a_block(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_format, "BLOCK_BYTES", 8)
    path = write_lines(str(tmp_path / "long.csv"), [HEADER, "1,1,123456789,987654321,1234,0.123456789"])
    assert parsed(path)["ids"].tolist() == [[123456789, 987654321, 1234]]


def ali_ccp_csv(path, n, seed, high=30):
    """A torch-rechub-like file: the 23 sparse fields and dense D* columns, clicks that depend on 205."""
    rng = np.random.default_rng(seed)
    fields = model_config()["hyper_parameters.fields"]
    ids = rng.integers(0, high, (n, len(fields)))
    click = (rng.random(n) < 0.1 + 0.5 * (ids[:, fields.index("205")] < 8)).astype(int)
    buy = click * (rng.random(n) < 0.3)
    dense = rng.random((n, 2)).round(4)
    lines = ["click,purchase," + ",".join(fields) + ",D109_14,D508"]
    lines += [",".join(map(str, [c, b, *row])) + f",{d0},{d1}" for c, b, row, (d0, d1) in zip(click, buy, ids, dense)]
    return write_lines(path, lines)


def test_config_csv_trains_and_evaluates_with_the_tools(tmp_path):
    ali_ccp_csv(str(tmp_path / "data" / "train" / "ali_ccp_train.csv"), 3000, seed=1)
    ali_ccp_csv(str(tmp_path / "data" / "test" / "ali_ccp_test.csv"), 1000, seed=2, high=32)
    overrides = ["-o", f"runner.train_data_dir={tmp_path / 'data' / 'train'}",
                 f"runner.test_data_dir={tmp_path / 'data' / 'test'}", "runner.model_save_path=out",
                 "runner.epochs=2", "runner.train_batch_size=128", "runner.print_interval=10",
                 "hyper_parameters.sparse_feature_number=800"]  # 1 + 23 fields x 30 ids = 691 needed
    train = run_tool("trainer.py", "-m", CONFIG, *overrides, cwd=str(tmp_path))
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert "691 table rows used of 800" in train.stdout
    infer = run_tool("infer.py", "-m", CONFIG, *overrides, cwd=str(tmp_path))
    assert infer.returncode == 0, infer.stdout[-2000:] + infer.stderr[-2000:]
    assert "id(s) beyond the training files' range mapped to their field's id 0" in infer.stdout
    with open(tmp_path / "out" / "infer_metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [0, 1] and all(r["samples"] == 1000 for r in records)
    assert records[1]["auc_ctr"] > 0.6  # clicks depend on field 205: learnt through its own id range
    exported = run_tool("export.py", "-m", CONFIG, *overrides, cwd=str(tmp_path))
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    # training files that grew a larger id since: the checkpoints' ids would reach other rows
    with open(tmp_path / "data" / "train" / "ali_ccp_train.csv", "a") as f:
        f.write(",".join(["0", "0", "40"] + ["1"] * 22 + ["0.5", "0.5"]) + "\n")
    infer = run_tool("infer.py", "-m", CONFIG, *overrides, cwd=str(tmp_path))
    assert infer.returncode == 2 and "Traceback" not in infer.stderr
    assert infer.stderr.startswith("error: runner.infer_load_path: ") and (
        "was trained with the reader's id layout size of field 101=30, but the data now gives size of field "
        "101=41 (did the training files change?)") in infer.stderr, infer.stderr
    predict = run_tool("predict.py", "-m", CONFIG, *overrides, cwd=str(tmp_path))  # the export recorded it too
    assert predict.returncode == 2 and predict.stderr.startswith("error: runner.inference_model_dir: ")
    assert "size of field 101=30, but the data now gives size of field 101=41" in predict.stderr
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_bad_data_stops_the_trainer_with_one_line(tmp_path):
    path = ali_ccp_csv(str(tmp_path / "train" / "a.csv"), 50, seed=3)
    with open(path, "a") as f:
        f.write("0,0," + ",".join(["1"] * 22) + "\n")
    result = run_tool("trainer.py", "-m", CONFIG, "-o", f"runner.train_data_dir={tmp_path / 'train'}",
                      "runner.model_save_path=out", cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"error: {path}:52: 24 columns, but the header has 27\n"
