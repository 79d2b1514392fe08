"""rectools.data: batching, prefetching and parse workers, over the model's Ali-CCP reader."""
import os
import threading

import numpy as np
import pytest

from conftest import MODEL_DIR, model_config, write_lines
from rectools import model_loader
from rectools.data import background, batches, process_map
from rectools.errors import ConfigError, DataError

reader_module = model_loader.model_module(model_loader.import_model_package(MODEL_DIR), "escm_reader", "test")


def test_batches_recut_chunks_without_losing_samples(tmp_path):
    paths = [write_lines(str(tmp_path / f"{name}.txt"), [f"{i},0,0,101:{i + 1}" for i in range(start, start + 7)])
             for name, start in (("a", 0), ("b", 7))]
    config = model_config(["hyper_parameters.sparse_feature_number=100", "runner.cache_dir=none"])
    dataset = reader_module.RecDataset(paths, config, chunk_lines=3, processes=0)
    sizes, ids = [], []
    for batch in batches(dataset.chunks(), 5):
        sizes.append(len(batch["click"]))
        ids.extend(batch["sample_id"])
    assert sizes == [5, 5, 4] and ids == list(range(14))


# ----------------------------------------------------------------------------- prefetching

def test_prefetched_batches_are_the_same_batches_in_the_same_order(tmp_path):
    paths = [write_lines(str(tmp_path / f"{name}.txt"), [f"{i},{i % 2},0,101:{i + 1},210:{i % 9 + 1}"
                                                          for i in range(start, start + 1000)])
             for name, start in (("a", 0), ("b", 1000))]
    config = model_config(["hyper_parameters.sparse_feature_number=5000", "runner.cache_dir=none"])
    dataset = reader_module.RecDataset(paths, config, chunk_lines=300, processes=0)
    plain = list(batches(dataset.chunks(), 128, prefetch=0))
    ahead = list(batches(dataset.chunks(), 128, prefetch=3))
    assert len(plain) == len(ahead) == 16
    for x, y in zip(plain, ahead):
        for key in x:
            assert np.array_equal(x[key], y[key])
    assert list(np.concatenate([b["sample_id"] for b in ahead])) == list(range(2000))


def test_an_error_of_the_producer_reaches_the_consumer_after_the_items_before_it():
    error = DataError("f.txt", 7, "bad")

    def produce():
        yield 1
        yield 2
        raise error

    got = []
    with pytest.raises(DataError) as caught:
        for item in background(produce(), 1):
            got.append(item)
    assert got == [1, 2] and caught.value is error


def test_a_consumer_that_stops_early_closes_the_producer():
    closed, threads = threading.Event(), set()

    def produce():
        try:
            for i in range(1000):
                threads.add(threading.current_thread().name)
                yield i
        finally:
            closed.set()

    for item in background(produce(), 2):
        if item == 3:
            break
    assert closed.is_set() and threads == {"prefetch"}


def _square_or_fail(x):
    if x == 5:
        raise DataError("f.txt", x, "five")
    return x * x


def test_process_map_keeps_order_and_raises_the_workers_error():
    assert list(process_map(_square_or_fail, range(5), processes=2)) == [0, 1, 4, 9, 16]
    got = []
    with pytest.raises(DataError, match="^f.txt:5: five$"):
        for value in process_map(_square_or_fail, range(10), processes=2, ahead=3):
            got.append(value)
    assert got == [0, 1, 4, 9, 16]


def test_a_missing_data_folder_beside_a_run_sh_says_how_to_fetch_the_data(tmp_path):
    from rectools.data import data_files
    (tmp_path / "run.sh").write_text("exit 0\n")
    (tmp_path / "README.md").write_text("how to get it\n")
    with pytest.raises(ConfigError, match=f"runner.train_data_dir: folder not found: {tmp_path}/train_data "
                                          f"\\(to fetch the data: cd {tmp_path} && sh run.sh; {tmp_path}/README.md"):
        data_files(str(tmp_path / "train_data"), "runner.train_data_dir")


def test_config_bigdata_without_its_data_says_how_to_get_it():
    config = model_loader.load(os.path.join(MODEL_DIR, "config_bigdata.yaml"))[0]
    if os.path.isdir(config["runner.train_data_dir"]):
        pytest.skip("the real data is there")
    with pytest.raises(ConfigError, match=r"folder not found: .*datasets/ali-ccp/train_data \(to fetch the data: "
                                          r"cd .*datasets/ali-ccp && sh run.sh"):
        from rectools.data import data_files
        data_files(config["runner.train_data_dir"], "runner.train_data_dir")
