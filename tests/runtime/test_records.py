"""Metric records (whole lines, one per epoch, tied to checkpoints) and progress lines, in process."""
import json
import logging
import os
import re

import pytest

from conftest import MODEL_DIR, data_overrides, model_config
from rectools import checkpoint, engines, loops, model_loader, progress, records
from rectools.data import Shard, reader
from rectools.errors import ConfigError


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_a_torn_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path, caplog):
    path = str(tmp_path / records.TRAIN)
    with open(path, "w") as f:  # what an interrupted append of an older version leaves
        f.write('{"epoch": 0, "loss": 0.5}\n\n{"epoch": 1, "loss": 0.4}\n{"epoch": 2, "lo')
    with caplog.at_level(logging.WARNING, logger="rectools"):
        assert records.read(path) == [{"epoch": 0, "loss": 0.5}, {"epoch": 1, "loss": 0.4}]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{path}:4: not a whole record") and warning.endswith('{"epoch": 2, "lo')
    records.put(path, {"epoch": 2, "loss": 0.3})  # what the trainer does next: the file is whole again
    assert [json.loads(line) for line in lines(path)] == [{"epoch": 0, "loss": 0.5}, {"epoch": 1, "loss": 0.4},
                                                          {"epoch": 2, "loss": 0.3}]


@pytest.mark.parametrize("text", ['{"loss": 0.5}', '[0, 1]', '{"epoch": "1"}', '{"epoch": true}', "\udcff"])
def test_anything_but_an_object_with_an_integer_epoch_is_not_a_record(tmp_path, caplog, text):
    path = tmp_path / records.INFER
    path.write_bytes(text.encode("utf-8", "surrogateescape") + b"\n" + b'{"epoch": 3}\n')
    assert records.read(str(path)) == [{"epoch": 3}]
    assert f"{path}:1: not a whole record" in caplog.text


def test_put_replaces_an_epoch_in_place_and_a_failed_write_changes_nothing(tmp_path):
    path = str(tmp_path / records.INFER)
    for epoch, auc in [(1, 0.6), (0, 0.5), (1, 0.7), (2, float("nan"))]:
        records.put(path, {"epoch": epoch, "auc_ctr": auc})
    assert lines(path) == ['{"epoch": 0, "auc_ctr": 0.5}', '{"epoch": 1, "auc_ctr": 0.7}',
                           '{"epoch": 2, "auc_ctr": null}']
    before = open(path).read()
    with pytest.raises(TypeError):  # a write that fails halfway (as a full disk would)
        records.put(path, {"epoch": 3, "auc_ctr": object()})
    assert open(path).read() == before and os.listdir(tmp_path) == [records.INFER]


def test_recover_restores_the_line_of_a_checkpoint_whose_run_stopped_before_writing_it(tmp_path, caplog):
    root, path = str(tmp_path), str(tmp_path / records.TRAIN)
    old = {"epoch": 0, "run": "old", "loss": 0.5}
    for record in (old, {"epoch": 1, "run": "old", "loss": 0.4}):
        checkpoint.save(root, record["epoch"], lambda folder: None, run=record["run"], record=record)
        records.put(path, record)
    new = {"epoch": 1, "run": "new", "loss": 0.3}  # saved; stopped before its line was written
    checkpoint.save(root, 1, lambda folder: None, run="new", record=new)
    checkpoint.save(root, 2, lambda folder: None)  # a checkpoint saved without a record: nothing to restore
    with caplog.at_level(logging.INFO, logger="rectools"):
        assert records.recover(path, root) == [1]
    assert records.read(path) == [old, new]
    assert f"{path}: restored the record of epoch(s) 1 from their checkpoints" in caplog.text
    assert records.recover(path, root) == [] and records.checkpoint_run(os.path.join(root, "1")) == "new"


class SizedReader:
    """The model's reader, plus the optional size() of rectools.contract.Reader."""

    def __init__(self, inner, samples):
        self.inner, self.samples, self.file_list = inner, samples, inner.file_list

    def chunks(self):
        return self.inner.chunks()

    def size(self):
        return self.samples


def test_progress_comes_after_a_few_batches_with_an_eta_when_the_size_is_known(synthetic, caplog):
    config = model_config([*data_overrides(synthetic), "runner.print_interval=1000", "runner.cache_dir=none"])
    package = model_loader.import_model_package(MODEL_DIR)
    plain = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")  # uncached: no size()
    engine = engines.DygraphEngine(config, package, train=True)

    def progress_lines(dataset, epoch):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rectools"):
            loops.run_epoch(engine, engine.train_step, dataset, 256, epoch, 1000)
        return [r.getMessage() for r in caplog.records if "batch_id" in r.getMessage()]

    (first,) = progress_lines(plain, 0)  # 24 batches, print_interval 1000: one line, at batch FIRST_LINE
    assert first.startswith(f"epoch: 0, batch_id: {progress.FIRST_LINE}, loss: ") and first.endswith(" ins/s")
    (again,) = progress_lines(plain, 1)  # a second pass over the same reader knows its size
    assert again.startswith(f"epoch: 1, batch_id: {progress.FIRST_LINE}, ") and ", eta: 0:00:" in again
    (sized,) = progress_lines(SizedReader(plain, 6000), 0)
    assert ", eta: 0:00:" in sized
    assert progress.expected_samples(SizedReader(plain, 6000), Shard(1, 4)) == 1500
    assert progress.expected_samples(SizedReader(plain, None)) is None


def test_progress_and_epoch_lines_show_the_loss_and_aucs_at_four_decimals():
    figures = {"loss": 0.123456789, "loss_ctr": 0.1, "loss_cvr": 0.02, "auc_ctr": 0.7, "auc_cvr": float("nan"),
               "samples": 512}
    assert progress.format_metrics(progress.headline(figures)) == "loss: 0.1235, auc_ctr: 0.7000, auc_cvr: nan"


def test_resuming_from_a_checkpoint_says_so(synthetic, tmp_path, caplog):
    package = model_loader.import_model_package(MODEL_DIR)
    common = [*data_overrides(synthetic), f"runner.model_save_path={tmp_path}", "runner.print_interval=1000",
              "hyper_parameters.ctr_fc_sizes=[16]", "hyper_parameters.cvr_fc_sizes=[16]"]
    import paddle
    with paddle.utils.unique_name.guard():  # each run names its parameters as a fresh process does
        loops.train(model_config([*common, "runner.epochs=1"]), package)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rectools"), paddle.utils.unique_name.guard():
        loops.train(model_config([*common, "runner.epochs=2", f"runner.model_init_path={tmp_path / '0'}"]), package)
    assert f"resuming from {tmp_path / '0'} (epoch 0)" in [r.getMessage() for r in caplog.records]


def test_infer_after_fewer_epochs_than_the_config_names_the_epochs_there(tmp_path):
    os.makedirs(tmp_path / "0")
    with open(tmp_path / "0" / "checkpoint.json", "w") as f:
        json.dump({"epoch": 0, "files": []}, f)
    config = model_config([f"runner.model_save_path={tmp_path}", "runner.epochs=3"])
    with pytest.raises(ConfigError, match=re.escape(
            f"runner.infer_load_path: checkpoint folder not found: {tmp_path}/1; {tmp_path} holds epoch(s) 0: "
            f"evaluate them with -o runner.infer_end_epoch=1, or train up to epoch 2 (runner.epochs=3)")):
        loops.infer(config, model_loader.import_model_package(MODEL_DIR))
