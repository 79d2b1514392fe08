import itertools

import numpy as np
import pytest

import fcntl
import gc
import logging
import os
import tempfile
import time

from rectools import metrics
from rectools.errors import UserError
from rectools.metrics import Accumulator, Columns, auc, logloss
from rectools.model_loader import import_model_package, model_module

from conftest import MODEL_DIR, pairwise_auc

# an epoch of ESCM2's columns read back whole gives the same report (the model's metrics.py)
ctr_cvr_report = model_module(import_model_package(MODEL_DIR), "metrics", "test").ctr_cvr_report


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.uniform(size=200) + 0.3 * labels, 1)  # coarse: many ties
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_is_exact_for_tiny_probabilities():
    scores = np.array([1e-6, 2e-6, 3e-6, 4e-6])  # a 4095-bucket AUC would see four equal scores
    assert auc([0, 0, 1, 1], scores) == 1.0
    assert auc([1, 1, 0, 0], scores) == 0.0


def test_auc_with_one_class_is_nan():
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


@pytest.mark.parametrize("seed", range(3))
def test_auc_without_ties_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    labels, scores = rng.integers(0, 2, 150), rng.permutation(150).astype(np.float32)
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def rank_auc(labels, scores):
    """AUC by average ranks (ties share theirs), in float64: an independent definition for large n."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64) + 0.0
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    first = np.searchsorted(ordered, ordered, side="left")
    last = np.searchsorted(ordered, ordered, side="right")
    ranks = np.empty(len(scores))
    ranks[order] = (first + last + 1) / 2.0
    n_pos = labels.sum()
    return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(labels) - n_pos))


@pytest.fixture
def small_memory(monkeypatch):
    """Budgets small enough that a few thousand items take the distribution sort, several levels deep."""
    monkeypatch.setattr(metrics, "SORT_ROWS", 40)
    monkeypatch.setattr(metrics, "CHUNK_ROWS", 37)
    monkeypatch.setattr(metrics, "SPILL_BYTES", 1000)


@pytest.mark.parametrize("kind", ["float32", "coarse", "one value", "tiny float64", "signed zeros", "integers"])
def test_auc_beyond_the_memory_budget_is_the_same_exact_figure(small_memory, kind):
    rng = np.random.default_rng(len(kind))
    n = 3000
    labels = rng.integers(0, 2, n)
    scores = {"float32": (rng.random(n) + 0.2 * labels).astype(np.float32),
              "coarse": np.round(rng.random(n) + 0.3 * labels, 2),  # many ties within and across buckets
              "one value": np.full(n, 0.25, dtype=np.float32),  # one bucket at every level: all ties
              "tiny float64": rng.random(n) * rng.random(n) * 1e-6 * (1 + labels),
              "signed zeros": rng.choice([-0.0, 0.0, -1.5, 2.0, 1e-30, -1e-30], n),
              "integers": rng.integers(-5, 5, n) + labels}[kind]
    assert auc(labels, scores) == pytest.approx(rank_auc(labels, scores), abs=1e-12)
    assert auc(labels[:50], scores[:50]) == pytest.approx(pairwise_auc(labels[:50], scores[:50]), abs=1e-12)


def test_every_nan_score_ranks_above_every_number_tied_with_the_others():
    negative_nan = np.copysign(np.nan, -1.0)  # the NaN arithmetic gives on x86 (inf - inf), unlike np.nan
    scores = np.array([np.nan, 0.1, 0.8, 0.2, negative_nan, np.inf])
    labels = np.array([1, 0, 1, 0, 0, 1])
    expected = pairwise_auc(labels, [9.0, 0.1, 0.8, 0.2, 9.0, 5.0])  # the NaNs: one value above all
    assert auc(labels, scores) == pytest.approx(expected)
    assert auc(labels, scores.astype(np.float32)) == pytest.approx(expected)


def test_logloss_takes_soft_labels():
    p = np.array([0.2, 0.7])
    y = np.array([0.1, 0.6])
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss(y, p) == pytest.approx(expected, rel=1e-12)


def epoch_of(accumulator, rng, batches=60, size=53):
    collected = {"pctr": [], "pcvr": [], "click": [], "buy": [], "sample_id": []}
    for b in range(batches):
        click = (rng.random(size) < 0.3).astype(np.int8)
        arrays = {"pctr": rng.random(size).astype(np.float32), "pcvr": rng.random(size).astype(np.float32),
                  "click": click, "buy": (click * (rng.random(size) < 0.4)).astype(np.int8),
                  "sample_id": np.arange(b * size, (b + 1) * size)}
        accumulator.add(**{k: v for k, v in arrays.items() if k != "sample_id"})
        accumulator.add(sample_id=arrays["sample_id"])
        for k, v in arrays.items():
            collected[k].append(v)
    return {k: np.concatenate(v) for k, v in collected.items()}


def test_an_epoch_spilled_to_disk_reads_back_whole_and_its_files_go_with_it(small_memory):
    accumulator = Accumulator()
    expected = epoch_of(accumulator, np.random.default_rng(5))
    folder = accumulator._folder
    assert folder and sorted(os.listdir(folder)) == sorted([*expected, ".lock"])  # it did spill, a file a column
    columns = accumulator.arrays()
    assert columns.rows == len(expected["sample_id"]) and sorted(columns) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(columns[name], values)
        assert columns[name].dtype == values.dtype
    window = accumulator.arrays(last_rows=100)  # a progress line's last batches, across the file's end
    np.testing.assert_array_equal(window["sample_id"], expected["sample_id"][-100:])
    chunked = [c for c, in columns.chunks("pcvr", rows=41)]
    assert {len(c) for c in chunked[:-1]} == {41}
    np.testing.assert_array_equal(np.concatenate(chunked), expected["pcvr"])
    report = ctr_cvr_report(columns)
    assert report == pytest.approx(ctr_cvr_report(Columns.of(expected)), rel=1e-12, nan_ok=True)
    assert report["auc_cvr"] == pytest.approx(rank_auc(expected["buy"][expected["click"] == 1],
                                                       expected["pcvr"][expected["click"] == 1]), abs=1e-12)
    del accumulator
    gc.collect()
    assert os.path.isdir(folder)  # the Columns handed out still read it
    del columns, window
    gc.collect()
    assert not os.path.exists(folder)


def test_a_column_changing_dtype_is_refused_and_nothing_of_the_batch_added():
    accumulator = Accumulator()
    accumulator.add(a=np.zeros(3, dtype=np.int8), p=np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="'p'"):
        accumulator.add(a=np.zeros(3, dtype=np.int8), p=np.zeros(3, dtype=np.float64))
    columns = accumulator.arrays()
    assert len(columns["a"]) == len(columns["p"]) == 3


def test_a_temporary_folder_that_cannot_be_written_is_one_clear_error(small_memory, tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))  # where TMPDIR would point
    with pytest.raises(UserError, match=r"cannot write the epoch's predictions to .*a-file.*point TMPDIR"):
        epoch_of(Accumulator(), np.random.default_rng(0))
    with pytest.raises(UserError, match=r"cannot write the AUC's buckets to .*a-file"):
        auc(np.arange(3000) % 2, np.arange(3000.0))


def test_the_first_temporary_folder_of_a_run_clears_what_stopped_runs_left(small_memory, tmp_path, monkeypatch,
                                                                           caplog):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(metrics, "_swept", False)
    hour_ago = time.time() - 3600
    held = []

    def left(name, locked=False, age=hour_ago, lock=True):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pctr").write_bytes(b"\0" * 8)
        if lock:
            f = open(tmp_path / name / ".lock", "w")
            if locked:  # by a process that still runs (here, an open file of this one)
                fcntl.flock(f, fcntl.LOCK_EX)
                held.append(f)
            else:
                f.close()
            os.utime(tmp_path / name / ".lock", (age, age))
        return tmp_path / name

    dead = left("rectools-predictions-host-123-k3x9a2b")  # its process was killed: its lock is free
    running = left("rectools-auc-host-456-a8d0q1zz", locked=True)
    starting = left("rectools-predictions-host-789-0a1b2c3d", age=time.time())  # its process is about to lock it
    unlocked = left("rectools-notes", lock=False)
    caplog.set_level(logging.INFO)
    accumulator = Accumulator()
    epoch_of(accumulator, np.random.default_rng(1))
    assert not dead.exists() and running.exists() and starting.exists() and unlocked.exists()
    assert os.path.basename(accumulator._folder).startswith(f"rectools-predictions-{metrics._HOST}-{os.getpid()}-")
    assert [r.getMessage() for r in caplog.records if "removed" in r.getMessage()] == [
        f"removed 1 temporary folder(s) of stopped runs from {tmp_path}"]
    for f in held:
        f.close()
