"""The cache bounded and visible: ids stored as narrow as their vocabulary allows, a size limit
with least-recently-used eviction, and tools/cache.py listing and clearing it."""
import logging
import os
import shutil

import numpy as np
import pytest

from conftest import CONFIG, write_lines, run_tool
from rectools import cache, leftovers
from rectools.atomic import _HOST_TAG
from test_cache import dataset, lines, messages, no_text, read_all


@pytest.mark.parametrize("vocab, stored", [(100, "i1"), (30000, "i2"), (2 ** 20, "i4")])
def test_ids_are_stored_as_narrow_as_the_vocabulary_allows_and_read_back_as_int64(tmp_path, vocab, stored):
    path = write_lines(str(tmp_path / "data" / "part-0.txt"), lines(50))
    truth = read_all(dataset([path], "none", f"hyper_parameters.sparse_feature_number={vocab}"))
    read_all(dataset([path], tmp_path / "cache", f"hyper_parameters.sparse_feature_number={vocab}"))
    (entry,) = cache.entries(tmp_path / "cache")
    arrays = cache.json.load(open(os.path.join(entry["path"], cache.MANIFEST)))["arrays"]
    assert {name: spec["stored"][1:] for name, spec in arrays.items()} == {
        "ids": stored, "click": "i1", "buy": "i1", "sample_id": "i8"}
    assert os.path.getsize(os.path.join(entry["path"], "ids.bin")) == 50 * 23 * 3 * int(stored[1])
    again = dataset([path], tmp_path / "cache", f"hyper_parameters.sparse_feature_number={vocab}")
    again.parse_file = no_text
    cached = read_all(again)
    for key in truth:
        assert cached[key].dtype == truth[key].dtype == np.int64 and np.array_equal(cached[key], truth[key])


def test_the_narrowest_type_holds_the_largest_value():
    assert [cache.narrowest(n).str[1:] for n in (0, 127, 128, 32767, 32768, 2 ** 31 - 1, 2 ** 31)] == [
        "i1", "i1", "i2", "i2", "i4", "i4", "i8"]


def test_a_value_that_does_not_fit_its_stored_dtype_is_a_bug_not_a_silent_wrap(tmp_path):
    store = cache.ArrayCache(str(tmp_path / "cache"), {"s": 1}, narrow={"ids": np.int8})

    def build(source):
        yield {"ids": np.array([[1], [200]])}
        return {}
    source = write_lines(str(tmp_path / "src"), ["x"])
    with pytest.raises(ValueError, match="ids: values 1..200 do not fit the stored dtype int8"):
        list(store.chunks(source, build, 10))
    assert cache.entries(tmp_path / "cache") == []


def test_the_least_recently_used_entries_go_once_the_folder_exceeds_its_limit(tmp_path, caplog):
    files = [write_lines(str(tmp_path / "data" / f"{name}.txt"), lines(40)) for name in "abc"]
    read_all(dataset(files[:1], tmp_path / "probe"))
    size = cache.entries(tmp_path / "probe")[0]["bytes"]
    limit = f"runner.cache_max_gb={float(f'{2.5 * size / 1e9:.3g}'):g}"  # room for two entries
    read_all(dataset(files[:2], tmp_path / "cache", limit))  # a then b
    (a, b) = sorted(cache.entries(tmp_path / "cache"), key=lambda e: e["source"])
    os.utime(os.path.join(b["path"], cache.MANIFEST), (1, 1))  # b long unused; reading a marks a as used now
    os.utime(os.path.join(a["path"], cache.MANIFEST), (1, 1))
    reader = dataset(files[:1], tmp_path / "cache", limit)
    reader.parse_file = no_text
    read_all(reader)
    caplog.set_level(logging.INFO)
    read_all(dataset(files[2:], tmp_path / "cache", limit))  # c: one of the three must go
    assert sorted(os.path.basename(e["source"]) for e in cache.entries(tmp_path / "cache")) == ["a.txt", "c.txt"]
    (line,) = messages(caplog, "the least recently used")
    assert line.startswith(f"cache {tmp_path / 'cache'}: removed the entry of {files[1]} (0.0 MB, last used 1970-01-01")
    assert line.endswith(f"to stay within {limit}")


def test_an_entry_larger_than_the_limit_is_not_written_and_the_pass_goes_on(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = write_lines(str(tmp_path / "data" / "big.txt"), lines(400))
    data = read_all(dataset([path], tmp_path / "cache", "runner.cache_max_gb=0.000001"))  # 1000 bytes
    assert list(data["sample_id"]) == list(range(1, 401))
    assert cache.entries(tmp_path / "cache") == [] and cache.temporaries(tmp_path / "cache") == []
    assert len(messages(caplog, "not cached: its entry would take more than runner.cache_max_gb=1e-06")) == 1


def test_tools_cache_lists_and_clears_the_folder_a_config_names(tmp_path):
    files = [write_lines(str(tmp_path / "data" / f"{name}.txt"), lines(30)) for name in "ab"]
    read_all(dataset(files, tmp_path / "cache"))
    os.unlink(files[1])
    live = tmp_path / "cache" / f".c.txt.0123456789abcdef.{_HOST_TAG}-{os.getpid()}-0a0b0c0d.new"
    live.mkdir()  # an entry being written (by this process)
    with leftovers.hold(live):
        listed = run_tool("cache.py", "list", "-m", CONFIG, "-o", f"runner.cache_dir={tmp_path / 'cache'}",
                          cwd=str(tmp_path))
        assert listed.returncode == 0, listed.stderr
        out = listed.stdout.splitlines()
        assert out[0].startswith(f"cache {tmp_path / 'cache'}: 2 entries, ") and out[0].endswith(
            " MB of runner.cache_max_gb=32 GB")
        assert out[1].endswith(f" MB  {files[0]}") and out[2].endswith(f" MB  {files[1]} (source gone)")
        assert out[3].endswith(f"{live} (being written by a running process)") and len(out) == 4
        cleared = run_tool("cache.py", "clear", "--dir", str(tmp_path / "cache"), cwd=str(tmp_path))
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout.startswith(f"cache {tmp_path / 'cache'}: removed 2 item(s), ")
        assert cleared.stdout.endswith("; 1 entry being written by running processes kept\n")
        assert os.path.isdir(live)
    shutil.rmtree(live)
    listed = run_tool("cache.py", "list", "--dir", str(tmp_path / "cache"), cwd=str(tmp_path))
    assert listed.stdout == f"cache {tmp_path / 'cache'}: 0 entries, 0.0 MB\n"


def test_what_is_not_a_cache_entry_is_neither_listed_nor_cleared_nor_evicted(tmp_path):
    folder = tmp_path / "shared"
    write_lines(str(folder / "src" / "a.py"), ["print(1)"])
    write_lines(str(folder / "notes.txt"), ["keep"])
    write_lines(str(folder / "big" / "blob.bin"), ["x" * 100_000])
    write_lines(str(folder / "part-0.txt.0123456789abcdef" / "ids.bin"), ["no manifest: not an entry"])
    assert cache.entries(folder) == []
    files = [write_lines(str(tmp_path / "data" / f"{name}.txt"), lines(40)) for name in "ab"]
    read_all(dataset(files, folder, "runner.cache_max_gb=1e-9"))  # a limit below any entry: evicts what it may
    cleared = run_tool("cache.py", "clear", "--dir", str(folder), cwd=str(tmp_path))
    assert cleared.returncode == 0, cleared.stderr
    assert sorted(os.listdir(folder)) == ["big", "notes.txt", "part-0.txt.0123456789abcdef", "src"]
    assert (folder / "src" / "a.py").read_text() == "print(1)\n"


def test_tools_cache_with_caching_off_or_a_bad_config_is_one_line(tmp_path):
    off = run_tool("cache.py", "list", "-m", CONFIG, "-o", "runner.cache_dir=none", cwd=str(tmp_path))
    assert (off.returncode, off.stdout) == (0, "caching is off (runner.cache_dir is none): nothing to list or clear\n")
    bad = run_tool("cache.py", "clear", "-m", str(tmp_path / "missing.yaml"), cwd=str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "missing.yaml" in bad.stderr
