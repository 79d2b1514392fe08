"""The on-disk cache of parsed arrays: used when current, rebuilt when stale, never read half-written,
optional where it cannot be written; and the reader's reports survive it."""
import json
import logging
import os

import numpy as np
import pytest

from conftest import MODEL_DIR, model_config, write_lines
from rectools import cache, model_loader
from rectools.errors import DataError

reader_module = model_loader.model_module(model_loader.import_model_package(MODEL_DIR), "escm_reader", "test")


def lines(n, start=0):
    return [f"{i + 1},{i % 2},0,101:{i % 40 + 1},210:{i % 5 + 1},210:{i % 3 + 6},210:9,210:10" for i in range(start, start + n)]


def dataset(paths, cache_dir, *overrides):
    config = model_config(["hyper_parameters.sparse_feature_number=100", "hyper_parameters.max_len=3",
                           f"runner.cache_dir={cache_dir}", *overrides])
    return reader_module.RecDataset(paths, config, chunk_lines=7, processes=0)


def read_all(data):
    chunks = list(data.chunks())
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def messages(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def no_text(path):
    raise AssertionError(f"parsed the text of {path} although its cache is current")


@pytest.fixture
def data_file(tmp_path):
    return write_lines(str(tmp_path / "data" / "part-0.txt"), lines(50))


def test_the_first_pass_writes_the_cache_and_later_passes_read_it(data_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first = dataset([data_file], tmp_path / "cache")
    built = read_all(first)
    again = dataset([data_file], tmp_path / "cache")  # another run
    again.parse_file = no_text
    for _ in range(2):  # two epochs
        cached = read_all(again)
        for key in built:
            assert np.array_equal(built[key], cached[key]) and built[key].dtype == cached[key].dtype
    assert len(messages(caplog, "parsed, cache written")) == 1 and len(messages(caplog, "read from cache")) == 1
    # the drop counts are said once per file and run, from the cache as from the text
    assert len(messages(caplog, "50 id(s) beyond max_len=3 dropped (210: 50)")) == 2
    sizes = {len(chunk["click"]) for chunk in again.chunks()}
    assert sizes == {7, 1}  # chunks of chunk_lines rows: memory bounded by a chunk, not by the file


def test_a_touched_file_is_parsed_again(data_file, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    read_all(dataset([data_file], tmp_path / "cache"))
    write_lines(data_file, lines(30, start=100))
    stat = os.stat(data_file)
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    data = read_all(dataset([data_file], tmp_path / "cache"))
    assert list(data["sample_id"]) == list(range(101, 131))
    assert len(messages(caplog, "parsed, cache written")) == 2
    assert len(os.listdir(tmp_path / "cache")) == 1  # the stale entry was replaced


@pytest.mark.parametrize("override", ["hyper_parameters.max_len=2", "hyper_parameters.sparse_feature_number=101",
                                      "hyper_parameters.fields=[101,210]"])
def test_a_changed_schema_is_parsed_again(data_file, tmp_path, override):
    read_all(dataset([data_file], tmp_path / "cache"))
    changed = dataset([data_file], tmp_path / "cache", override)
    data = read_all(changed)  # parses: the entry of the old schema does not fit
    assert data["ids"].shape[1:] == (len(changed.fields), changed.max_len)
    again = dataset([data_file], tmp_path / "cache", override)
    again.parse_file = no_text
    assert np.array_equal(read_all(again)["ids"], data["ids"])


@pytest.mark.parametrize("damage", ["no manifest", "short array file", "manifest of another file", "unreadable manifest"])
def test_a_half_written_or_damaged_entry_is_never_read(data_file, tmp_path, damage, caplog):
    caplog.set_level(logging.INFO)
    expected = read_all(dataset([data_file], tmp_path / "cache"))
    (entry,) = os.listdir(tmp_path / "cache")
    entry = tmp_path / "cache" / entry
    if damage == "no manifest":
        os.unlink(entry / cache.MANIFEST)
    elif damage == "short array file":
        with open(entry / "ids.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "manifest of another file":
        manifest = json.loads((entry / cache.MANIFEST).read_text())
        manifest["size"] += 1
        (entry / cache.MANIFEST).write_text(json.dumps(manifest))
    else:
        (entry / cache.MANIFEST).write_text("{not json")
    data = read_all(dataset([data_file], tmp_path / "cache"))
    for key in expected:
        assert np.array_equal(expected[key], data[key])
    assert len(messages(caplog, "parsed, cache written")) == 2


def test_an_interrupted_or_failed_build_leaves_no_entry(tmp_path):
    path = write_lines(str(tmp_path / "data" / "a.txt"), lines(40))
    for _ in dataset([path], tmp_path / "cache").chunks():
        break  # the consumer stops after one chunk
    assert os.listdir(tmp_path / "cache") == []
    bad = write_lines(str(tmp_path / "data" / "b.txt"), lines(30) + ["31,0,1,101:1"])
    with pytest.raises(DataError, match=":31: buy=1 on an impression with click=0"):
        list(dataset([bad], tmp_path / "cache").chunks())
    assert os.listdir(tmp_path / "cache") == []  # nor the hidden temporary folder


def test_a_read_only_data_folder_is_read_and_left_untouched(data_file, tmp_path):
    folder = os.path.dirname(data_file)
    os.chmod(folder, 0o555)
    try:
        data = read_all(dataset([data_file], tmp_path / "cache"))
        assert os.listdir(folder) == ["part-0.txt"]
    finally:
        os.chmod(folder, 0o755)
    assert len(data["click"]) == 50 and len(os.listdir(tmp_path / "cache")) == 1


def test_an_unwritable_cache_folder_leaves_the_reader_parsing(data_file, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    data = read_all(dataset([data_file], blocker / "cache"))
    assert len(data["click"]) == 50
    assert len(messages(caplog, "cannot be written")) == 1
    assert blocker.read_text() == "a file where the cache folder should be"


def test_caching_off_writes_nothing(data_file, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for off in ("none", "''", ""):
        data = read_all(dataset([data_file], off))
        assert len(data["click"]) == 50
    assert not (tmp_path / "xdg").exists()


def test_where_the_cache_folder_is(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = model_config([])
    assert cache.cache_dir(config) == str(tmp_path / "xdg" / "escm2-paddle")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir(config) == os.path.expanduser("~/.cache/escm2-paddle")
    relative = model_config(["runner.cache_dir=parsed"])
    assert cache.cache_dir(relative) == os.path.join(os.getcwd(), "parsed")  # given with -o: like every -o path
    written = tmp_path / "config.yaml"  # the model's config elsewhere, naming the cache folder itself
    with open(os.path.join(MODEL_DIR, "config.yaml")) as f:
        written.write_text(f.read().replace("runner:", "runner:\n  cache_dir: parsed", 1))
    in_file = model_loader.load(str(written), [f"runner.model_dir={MODEL_DIR}"])[0]
    assert cache.cache_dir(in_file) == str(tmp_path / "parsed")  # written in the file: relative to the file
    assert cache.cache_dir(model_config(["runner.cache_dir=none"])) is None


def test_entries_of_files_that_are_gone_are_pruned(tmp_path):
    gone = write_lines(str(tmp_path / "data" / "gone.txt"), lines(10))
    hidden = write_lines(str(tmp_path / "data" / ".hidden-gone.txt"), lines(10))  # a dot-named source too
    kept = write_lines(str(tmp_path / "data" / "kept.txt"), lines(10))
    read_all(dataset([gone, hidden, kept], tmp_path / "cache"))
    assert len(os.listdir(tmp_path / "cache")) == 3
    os.unlink(gone)
    os.unlink(hidden)
    read_all(dataset([write_lines(str(tmp_path / "data" / "new.txt"), lines(5))], tmp_path / "cache"))
    names = sorted(name.split(".")[0] for name in os.listdir(tmp_path / "cache"))
    assert names == ["kept", "new"]


def test_the_reader_knows_its_size_once_every_file_is_cached(tmp_path):
    first, second = write_lines(str(tmp_path / "a.txt"), lines(30)), write_lines(str(tmp_path / "b.txt"), lines(12, 30))
    assert dataset([first, second], tmp_path / "cache").size() is None  # nothing parsed yet
    read_all(dataset([first], tmp_path / "cache"))
    assert dataset([first], tmp_path / "cache").size() == 30
    assert dataset([first, second], tmp_path / "cache").size() is None  # one file not cached yet
    read_all(dataset([first, second], tmp_path / "cache"))
    assert dataset([first, second], tmp_path / "cache").size() == 42
    assert dataset([first, second], "none").size() is None  # no cache: unknown
