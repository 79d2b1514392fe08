"""The cache checked: damaged bytes in an entry, sources edited behind its back or removed while a
run reads them, and what killed writers leave."""
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import write_lines
from rectools import cache, leftovers
from rectools.atomic import _HOST_TAG, atomic_folder
from rectools.errors import UserError
from test_cache import dataset, lines, messages, no_text, read_all


def parsed(path, tmp_path):
    """The arrays of a text pass over `path` with no cache at all."""
    return read_all(dataset([path], "none"))


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def flip(path, offset):
    """Flip the bits of the byte at `offset` of the file (a negative offset counts from its end)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def only_entry(folder):
    (name,) = [n for n in os.listdir(folder) if not n.startswith(".")]
    return os.path.join(folder, name)


@pytest.mark.parametrize("check_rows", [8192, 16])  # one block; several, the damage in a late one
@pytest.mark.parametrize("array, offset", [("ids", -3), ("click", -1), ("ids", 0)])
def test_flipped_bytes_in_an_entry_are_found_the_entry_is_rebuilt_and_the_rows_are_the_text_s(
        tmp_path, caplog, monkeypatch, array, offset, check_rows):
    monkeypatch.setattr(cache, "CHECK_ROWS", check_rows)
    path = write_lines(str(tmp_path / "data" / "part-0.txt"), lines(50))
    truth = parsed(path, tmp_path)
    read_all(dataset([path], tmp_path / "cache"))  # writes the entry
    entry = only_entry(tmp_path / "cache")
    flip(os.path.join(entry, array + ".bin"), offset)
    caplog.set_level(logging.INFO)
    again = dataset([path], tmp_path / "cache")
    assert same(read_all(again), truth)
    warned = messages(caplog, "is damaged")
    assert warned == [f"{path}: cache entry {entry} is damaged ({array}.bin rows "
                      f"{(49 // check_rows) * check_rows if offset < 0 else 0}-"
                      f"{49 if offset < 0 or check_rows > 50 else check_rows - 1} differ from their checksum): "
                      f"removed; reading the text again"]
    assert [r.levelname for r in caplog.records if "is damaged" in r.getMessage()] == ["WARNING"]
    rebuilt = dataset([path], tmp_path / "cache")
    rebuilt.parse_file = no_text  # the entry was written again by the pass that found the damage
    assert same(read_all(rebuilt), truth)


def test_an_entry_whose_array_file_was_removed_while_read_is_rebuilt(tmp_path, caplog):
    path = write_lines(str(tmp_path / "data" / "part-0.txt"), lines(50))
    read_all(dataset([path], tmp_path / "cache"))
    data = dataset([path], tmp_path / "cache")
    chunks = data.chunks()
    first = next(chunks)  # the entry is open: the manifest was read
    shutil.rmtree(only_entry(tmp_path / "cache"))  # a `tools/cache.py clear` meanwhile
    rest = list(chunks)
    got = {k: np.concatenate([first[k]] + [c[k] for c in rest]) for k in first}
    assert same(got, parsed(path, tmp_path))


def test_an_edit_that_keeps_size_and_mtime_is_noticed(tmp_path):
    path = write_lines(str(tmp_path / "data" / "part-0.txt"), lines(50))
    shutil.copy2(path, tmp_path / "times")
    read_all(dataset([path], tmp_path / "cache"))
    with open(path, "r+b") as f:  # line 20's id of field 101: 20 -> 21, same size
        text = f.read()
        at = text.index(b"\n20,1,0,101:20,") + len(b"\n20,1,0,101:2")
        f.seek(at)
        f.write(b"1")
    subprocess.run(["touch", "-r", str(tmp_path / "times"), path], check=True)
    assert os.stat(path).st_mtime_ns == os.stat(tmp_path / "times").st_mtime_ns
    data = read_all(dataset([path], tmp_path / "cache"))
    assert data["ids"][19, 0, 0] == 21
    assert same(data, parsed(path, tmp_path))


def test_the_fingerprint_sees_an_edit_in_a_sampled_block_of_a_large_file_and_any_in_a_small_one(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 4096)  # 1 MB: sampled
    before = cache.fingerprint(big)
    flip(big, -1)  # the last block is always sampled
    assert cache.fingerprint(big) != before
    small = tmp_path / "small"
    small.write_bytes(b"x" * 60000)  # read whole
    before = cache.fingerprint(small)
    flip(small, 30000)
    assert cache.fingerprint(small) != before


@pytest.mark.parametrize("cached", [False, True])
def test_a_source_removed_between_passes_is_one_line_naming_it(tmp_path, cached):
    path = write_lines(str(tmp_path / "data" / "part-0.txt"), lines(50))
    data = dataset([path], tmp_path / "cache" if cached else "none")
    read_all(data)  # the first epoch
    os.unlink(path)
    with pytest.raises(UserError) as error:
        read_all(data)
    assert str(error.value) == (f"{path}: data file not found: it was removed or moved while this run was "
                                f"reading it")


def test_a_source_removed_during_its_text_pass_by_workers_is_one_line_naming_it(tmp_path):
    path = write_lines(str(tmp_path / "data" / "part-0.txt"), lines(20000))
    data = dataset([path], tmp_path / "cache")
    data.processes, data.block_bytes = 2, 16 << 10  # many blocks, read by worker processes
    chunks = data.chunks()
    next(chunks)
    os.unlink(path)
    with pytest.raises(UserError, match="data file not found: it was removed or moved while this run"):
        list(chunks)
    assert [n for n in os.listdir(tmp_path / "cache")] == []  # nothing half-written


def test_temporaries_of_killed_writers_are_removed_those_of_live_ones_kept(tmp_path, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    # a writer killed on this host: its name's pid runs no more, its lock is free
    dead = folder / f".part-0.txt.0123456789abcdef.{_HOST_TAG}-999999999-0a0b0c0d.new"
    dead.mkdir()
    (dead / "ids.bin").write_bytes(b"\0" * 1000)
    (dead / leftovers.LOCK).write_text("")
    # a live writer (this process): kept
    with atomic_folder(str(folder / "part-1.txt.0123456789abcdef")) as live:
        lock = leftovers.hold(live)
        caplog.set_level(logging.INFO)
        path = write_lines(str(tmp_path / "data" / "part-2.txt"), lines(5))
        read_all(dataset([path], folder))
        assert os.path.isdir(live)
        lock.close()
    names = os.listdir(folder)
    assert not dead.exists() and len(names) == 2 and not [n for n in names if n.endswith(".new")]
    assert messages(caplog, "temporary entr") == [f"cache {folder}: removed 1 temporary entry of stopped runs "
                                                  f"(0.0 MB)"]
