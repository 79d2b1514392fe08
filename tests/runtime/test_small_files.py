"""Many small data files are parsed in the reading thread: no pool of workers started per file
(its forks cost more than the parse); a large file still goes to the workers."""
import concurrent.futures

import numpy as np
import pytest

from conftest import write_lines
from test_cache import dataset, lines, read_all


class Counted(concurrent.futures.ProcessPoolExecutor):
    started = 0

    def __init__(self, *args, **kwargs):
        Counted.started += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def pools(monkeypatch):
    Counted.started = 0
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Counted)
    return Counted


def test_small_files_start_no_workers_and_give_the_lines_of_one_file(tmp_path, pools):
    files = [write_lines(str(tmp_path / "many" / f"part-{k:03d}.txt"), lines(20, start=20 * k)) for k in range(30)]
    one = write_lines(str(tmp_path / "one" / "part.txt"), lines(600))
    data = dataset(files, "none")
    data.processes = 2
    many = read_all(data)
    assert pools.started == 0
    whole = read_all(dataset([one], "none"))
    assert all(np.array_equal(many[k], whole[k]) for k in whole)


def test_a_large_file_is_parsed_by_workers(tmp_path, pools):
    big = write_lines(str(tmp_path / "big" / "part.txt"), lines(8000))  # ~400 KB
    data = dataset([big], "none")
    data.processes = 2
    assert len(read_all(data)["click"]) == 8000
    assert pools.started == 1
