"""Early stopping on a validation split (rectools.early_stopping): the split, the best epoch, the
stop, resuming, and what infer, export and predict make of best.json. Real training runs of the
bundled sample (50,000 training impressions) through the command lines."""
import json
import math
import os

import numpy as np
import pytest

from conftest import CONFIG, MODEL_DIR, data_overrides, model_config, ok, read_jsonl, run_tool
from rectools import checkpoint, early_stopping, records
from rectools.contract import Reader
from rectools.errors import ConfigError

SAMPLE_TRAIN = 50000  # impressions of the bundled sample's training split
TEST_DIR = os.path.join(MODEL_DIR, "data", "test")
# a high learning rate: the sample's dev loss is lowest after epoch 0 and rises after it
FAST = "hyper_parameters.optimizer.learning_rate=0.01"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"runner.cache_dir={tmp_path_factory.mktemp('cache')}"


def train(tool, folder, *overrides, cache):
    """tools/<tool> on the bundled sample into `folder`/out, from `folder`."""
    return run_tool(tool, "-m", CONFIG, "-o", "runner.model_save_path=out", "runner.print_interval=1000", cache,
                    *overrides, cwd=str(folder))


def dev_losses(folder):
    return {r["epoch"]: r["dev_loss"] for r in read_jsonl(folder / "out" / records.TRAIN)}


def best_json(folder):
    with open(folder / "out" / early_stopping.BEST) as f:
        return json.load(f)


def checkpoints(folder):
    return sorted(int(n) for n in os.listdir(folder / "out") if n.isdigit())


# -- the split --------------------------------------------------------------------------------------

class Numbered(Reader):
    """Samples 0 .. n-1 in chunks of 1000."""

    def __init__(self, n):
        self.file_list, self.n = ["numbered"], n

    def chunks(self):
        for start in range(0, self.n, 1000):
            ids = np.arange(start, min(start + 1000, self.n), dtype=np.int64)
            yield {"sample_id": ids, "x": ids * 2}


def ids_of(dataset):
    return np.concatenate([c["sample_id"] for c in dataset.chunks()])


def test_held_out_samples_are_a_fixed_fraction_and_the_sides_never_meet():
    data = Numbered(20000)
    train_side, dev_side = (early_stopping.HeldOut(data, 0.2, v) for v in (False, True))
    kept, held = ids_of(train_side), ids_of(dev_side)
    assert not set(kept) & set(held) and len(kept) + len(held) == 20000
    assert abs(len(held) / 20000 - 0.2) < 0.015
    assert np.array_equal(ids_of(dev_side), held)  # every pass the same
    assert all(np.array_equal(c["x"], c["sample_id"] * 2) for c in dev_side.chunks())  # rows stay whole
    # a function of the id alone: any order, any chunking, another fraction's split contains this one's
    shuffled = np.random.default_rng(0).permutation(20000)
    assert set(shuffled[early_stopping.held_out(shuffled, 0.2)]) == set(held)
    assert set(held) <= set(ids_of(early_stopping.HeldOut(data, 0.3, True)))
    assert not early_stopping.held_out(np.arange(100), 0.0).any()


# -- the tracker ------------------------------------------------------------------------------------

def validated(epoch, **figures):
    return {"epoch": epoch, "run": f"run-{epoch}", **{early_stopping.DEV + k: v for k, v in figures.items()}}


def test_the_tracker_finds_the_best_and_counts_the_patience():
    tracker = early_stopping.Tracker("loss", 2)
    for epoch, loss in enumerate([0.5, 0.4, 0.45, 0.4]):  # a tie is no improvement
        tracker.add(epoch, validated(epoch, loss=loss))
    assert (tracker.best_epoch, tracker.best_run, tracker.stale, tracker.stopped) == (1, "run-1", 2, True)
    assert tracker.best_text() == "best epoch 1 (dev_loss 0.4)"
    higher = early_stopping.Tracker("auc_ctr", None)
    for epoch, auc in enumerate([None, float("nan"), 0.6, 0.7, 0.65, 0.5, 0.4]):  # undefined never improves
        higher.add(epoch, validated(epoch, auc_ctr=auc))
    assert (higher.best_epoch, higher.best_value, higher.stale, higher.stopped) == (3, 0.7, 3, False)


def test_the_tracker_resumes_from_the_records_before_the_first_epoch():
    found = [validated(e, loss=v) for e, v in enumerate([0.5, 0.3, 0.4, 0.2])]
    found.insert(0, {"epoch": -1, "loss": 9.0})  # trained without a split: passed over
    tracker = early_stopping.Tracker("loss", 3)
    tracker.resume(found, 3, "train_metrics.jsonl")  # epoch 3 is the run's to redo
    assert (tracker.best_epoch, tracker.stale, tracker.last_epoch) == (1, 1, 2)
    with pytest.raises(ConfigError, match=r"^records: runner.early_stop_metric: the validation record has no "
                                          r"auc_ctr \(it has loss\)$"):
        early_stopping.Tracker("auc_ctr", 3).resume(found, 3, "records")


# -- the config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["runner.dev_data_dir=somewhere", "runner.dev_fraction=0.1"],
     "runner.dev_data_dir and runner.dev_fraction are both set"),
    (["runner.early_stop_patience=2"], "runner.early_stop_patience needs a validation split"),
    (["runner.dev_fraction=0.1", "runner.early_stop_metric=ips"], "runner.early_stop_metric must be loss"),
    (["runner.dev_fraction=0.5"], "runner.dev_fraction must be below 0.5"),
    (["runner.dev_fraction=-0.1"], "runner.dev_fraction must be at least 0"),
    (["runner.dev_fraction=0.1", "runner.early_stop_patience=0"], "runner.early_stop_patience must be at least 1"),
])
def test_bad_validation_settings_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        model_config(overrides)


def test_bad_validation_settings_are_one_line_and_exit_2(tmp_path, cache):
    for overrides, message in [
            (["runner.dev_data_dir=x", "runner.dev_fraction=0.1"], "runner.dev_data_dir and runner.dev_fraction are "
                                                                  "both set: the validation split is either a folder "
                                                                  "or a fraction of the training impressions, set one"),
            (["runner.early_stop_patience=2"], "runner.early_stop_patience needs a validation split: set "
                                               "runner.dev_data_dir or runner.dev_fraction")]:
        result = train("trainer.py", tmp_path, *overrides, cache=cache)
        assert result.returncode == 2 and result.stderr == f"error: {CONFIG}: {message}\n"
    # a metric of the standard form the model does not give: refused at the first validation, before any save
    result = train("trainer.py", tmp_path, "runner.dev_fraction=0.1", "runner.early_stop_metric=auc_foo", cache=cache)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {CONFIG}: runner.early_stop_metric: the validation record has no "
                                    f"auc_foo (it has auc_ctcvr, auc_ctr, auc_cvr, ctcvr_loss, ")
    assert [n for n in os.listdir(tmp_path / "out") if n != ".lock"] == []


# -- training with a split --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped(tmp_path_factory, cache):
    """A run with a held-out tenth and patience 1 that stops early: (folder, its output)."""
    folder = tmp_path_factory.mktemp("stopped")
    result = ok(train("trainer.py", folder, "runner.epochs=5", "runner.dev_fraction=0.1",
                      "runner.early_stop_patience=1", FAST, cache=cache))
    return folder, result


def test_patience_stops_training_at_the_best_epoch_plus_patience(stopped):
    folder, result = stopped
    losses = dev_losses(folder)
    best = min(losses, key=losses.get)
    assert best_json(folder)["epoch"] == best and best_json(folder)["value"] == losses[best]
    assert best_json(folder)["metric"] == "dev_loss" and best_json(folder)["stopped"] is True
    assert checkpoints(folder) == sorted(losses) == list(range(best + 2))  # fewer than runner.epochs=5
    assert f"early stop after epoch {best + 1}: best epoch {best} (dev_loss {losses[best]:.6g})" in result.stdout
    found = read_jsonl(folder / "out" / records.TRAIN)
    for r in found:  # each record: the best epoch so far, argmin of the dev losses up to it
        assert r["best_epoch"] == min((e for e in losses if e <= r["epoch"]), key=losses.get)
        saved = checkpoint.manifest(str(folder / "out" / str(r["epoch"])), "key")["record"]
        assert saved["dev_loss"] == r["dev_loss"] and saved["best_epoch"] == r["best_epoch"]
    assert f"dev epoch: 0, loss: {found[0]['dev_loss']:.4f}" in result.stdout


def test_held_out_impressions_are_never_trained_on_and_the_same_every_epoch(stopped):
    folder, _ = stopped
    found = read_jsonl(folder / "out" / records.TRAIN)
    assert len({(r["samples"], r["dev_samples"], r["dev_clicks"]) for r in found}) == 1
    assert found[0]["samples"] + found[0]["dev_samples"] == SAMPLE_TRAIN
    assert 0.08 < found[0]["dev_samples"] / SAMPLE_TRAIN < 0.12


def test_a_stopped_run_resumed_from_its_last_epoch_trains_nothing(stopped, tmp_path, cache):
    folder, _ = stopped
    last = checkpoints(folder)[-1]
    before = read_jsonl(folder / "out" / records.TRAIN)
    result = ok(train("trainer.py", folder, "runner.epochs=5", "runner.dev_fraction=0.1",
                      "runner.early_stop_patience=1", FAST, f"runner.model_init_path=out/{last}", cache=cache))
    assert f"early stop after epoch {last} ({records.TRAIN}): best epoch" in result.stdout
    assert "nothing to train" in result.stdout and f"epoch: {last + 1}," not in result.stdout
    assert read_jsonl(folder / "out" / records.TRAIN) == before


def test_export_predict_and_infer_default_to_the_best_epoch(stopped, cache):
    folder, _ = stopped
    best, last = best_json(folder)["epoch"], checkpoints(folder)[-1]
    common = ("runner.epochs=5", "runner.dev_fraction=0.1", "runner.early_stop_patience=1")
    where = f"best epoch {best} (dev_loss {best_json(folder)['value']:.6g}, {folder / 'out' / early_stopping.BEST})"
    exported = ok(train("export.py", folder, *common, cache=cache))
    assert f"runner.export_checkpoint unset: the {where}" in exported.stdout
    assert f"exported {folder / 'out' / str(best)} to {folder / 'out' / str(best) / 'inference'}" in exported.stdout
    predicted = ok(train("predict.py", folder, *common, cache=cache))
    assert f"runner.inference_model_dir unset: the {where}" in predicted.stdout
    assert f"of {folder / 'out' / str(best) / 'inference'} to" in predicted.stdout
    # runner.epochs=5 but training stopped after `last`: infer evaluates the epochs there are
    inferred = ok(train("infer.py", folder, *common, cache=cache))
    assert (f"runner.infer_end_epoch unset: evaluating up to epoch {last}, where training stopped early "
            f"({folder / 'out' / early_stopping.BEST})") in inferred.stdout
    assert [r["epoch"] for r in read_jsonl(folder / "out" / records.INFER)] == list(range(last + 1))
    assert inferred.stdout.rstrip().splitlines()[-1].endswith(f"the {where} by the validation split")
    named = ok(train("export.py", folder, *common, "runner.export_checkpoint=out/0", cache=cache))
    assert "unset" not in named.stdout  # a checkpoint named is the one exported


def test_a_resumed_run_counts_on_from_the_records(tmp_path, cache):
    ok(train("trainer.py", tmp_path, "runner.epochs=2", "runner.dev_fraction=0.1", FAST, cache=cache))
    first = read_jsonl(tmp_path / "out" / records.TRAIN)
    losses = dev_losses(tmp_path)
    best = min(losses, key=losses.get)
    assert best_json(tmp_path)["stopped"] is False and best_json(tmp_path)["epoch"] == best
    result = ok(train("trainer.py", tmp_path, "runner.epochs=6", "runner.dev_fraction=0.1",
                      "runner.early_stop_patience=2", FAST, "runner.model_init_path=out/1", cache=cache))
    stale = 1 - best
    assert (f"from the records: best epoch {best} (dev_loss {losses[best]:.6g}), {stale} epoch(s) without "
            f"improvement since") in result.stdout
    assert "epoch: 0," not in result.stdout and "epoch: 2 done" in result.stdout
    found = read_jsonl(tmp_path / "out" / records.TRAIN)
    assert found[:2] == first
    losses = dev_losses(tmp_path)
    best = min(losses, key=losses.get)
    summary = best_json(tmp_path)
    assert summary["epoch"] == best and summary["run"] == found[best]["run"]
    assert summary["last_epoch"] == max(losses) == checkpoints(tmp_path)[-1]
    if summary["stopped"]:  # two epochs without improvement counted across the two runs
        assert max(losses) - best == 2
    else:
        assert max(losses) == 5


def test_an_early_stop_names_the_checkpoints_an_earlier_run_left_beyond_it(tmp_path, cache):
    ok(train("trainer.py", tmp_path, "runner.epochs=4", cache=cache))
    earlier = read_jsonl(tmp_path / "out" / records.TRAIN)
    result = ok(train("trainer.py", tmp_path, "runner.epochs=4", "runner.dev_fraction=0.1",
                      "runner.early_stop_patience=1", FAST, cache=cache))
    last = best_json(tmp_path)["last_epoch"]
    assert last < 3  # the fast rate's dev loss rises from epoch 1 on
    assert (f"checkpoints of epochs {', '.join(map(str, range(last + 1, 4)))} (after epoch {last}, where training "
            f"stopped early) remain in {tmp_path / 'out'} from an earlier run") in result.stdout
    assert read_jsonl(tmp_path / "out" / records.TRAIN)[last + 1:] == earlier[last + 1:]


def test_validation_figures_are_infers_on_the_same_data_and_leave_training_alone(tmp_path, cache):
    """dev_data_dir = the test split: each epoch's dev_* figures are what infer gives for its
    checkpoint, in both graph modes; and the training records are those of a run without a split."""
    for tool, infer_tool in (("trainer.py", "infer.py"), ("static_trainer.py", "static_infer.py")):
        folder = tmp_path / tool.split(".")[0]
        folder.mkdir()
        plain = folder / "plain"
        plain.mkdir()
        ok(train(tool, plain, "runner.epochs=2", cache=cache))
        ok(train(tool, folder, "runner.epochs=2", f"runner.dev_data_dir={TEST_DIR}", cache=cache))
        ok(train(infer_tool, folder, "runner.epochs=2", cache=cache))
        found, evaluated = read_jsonl(folder / "out" / records.TRAIN), read_jsonl(folder / "out" / records.INFER)
        for r, e, p in zip(found, evaluated, read_jsonl(plain / "out" / records.TRAIN)):
            exact = [k for k in e if k.startswith(("auc", "logloss", "calibration")) or k in ("samples", "loss")]
            assert {k: r["dev_" + k] for k in exact} == {k: e[k] for k in exact} and e["samples"] == 10000
            assert r["loss"] == p["loss"] and r["auc_ctr"] == p["auc_ctr"]
        assert [r["epoch"] for r in found] == [0, 1] and not math.isnan(found[-1]["dev_auc_cvr"])


def test_a_best_json_that_no_longer_describes_the_folder_is_passed_over(tmp_path, cache):
    ok(train("trainer.py", tmp_path, "runner.epochs=1", "runner.dev_fraction=0.1", cache=cache))
    assert early_stopping.read_best(str(tmp_path / "out"))["epoch"] == 0
    best = best_json(tmp_path)
    (tmp_path / "out" / early_stopping.BEST).write_text(json.dumps({**best, "run": "another"}))
    assert early_stopping.read_best(str(tmp_path / "out")) is None  # epoch 0 is not that run's checkpoint
    (tmp_path / "out" / early_stopping.BEST).write_text(json.dumps(best))
    # a run without a split makes the folder's checkpoints newer than best.json: it goes at the first save
    result = ok(train("trainer.py", tmp_path, "runner.epochs=1", cache=cache))
    assert f"removed {tmp_path / 'out' / early_stopping.BEST}: this run has no validation split" in result.stdout
    assert not (tmp_path / "out" / early_stopping.BEST).exists()


# -- several processes ------------------------------------------------------------------------------

def test_two_processes_validate_the_held_out_split_as_one_process_does(synthetic, tmp_path):
    """2 processes under paddle.distributed.launch: every rank evaluates its shard of the held-out
    split, the figures are gathered (those of one process on the same checkpoint), and the ranks stop
    together (a rank going on alone would wait in a collective and fail the job)."""
    from test_distributed import launch
    from rectools import engines, loops, model_loader
    from rectools.data import reader
    overrides = [*data_overrides(synthetic), f"runner.cache_dir={tmp_path / 'cache'}", "runner.model_save_path=out",
                 "runner.epochs=4", "runner.train_batch_size=700", "runner.infer_batch_size=300",
                 "runner.dev_fraction=0.2", "runner.early_stop_patience=1", FAST]
    ok(launch("trainer.py", "-m", CONFIG, "-o", *overrides, "runner.use_fleet=True", cwd=str(tmp_path)))
    found = read_jsonl(tmp_path / "out" / records.TRAIN)
    losses = {r["epoch"]: r["dev_loss"] for r in found}
    summary = best_json(tmp_path)
    assert summary["epoch"] == min(losses, key=losses.get) and summary["last_epoch"] == max(losses)
    assert summary["stopped"] == (max(losses) < 3) and checkpoints(tmp_path) == sorted(losses)
    config = model_config([*overrides[:-1], f"runner.model_save_path={tmp_path / 'out'}"])
    package = model_loader.import_model_package(MODEL_DIR)
    held = early_stopping.HeldOut(reader(config, package, "runner.train_data_dir", "runner.train_reader_path"),
                                  0.2, True)
    engine = engines.DygraphEngine(config, package, train=False)
    for r in found:
        checkpoint.load_checkpoint(engine, str(tmp_path / "out" / str(r["epoch"])), "key", False)
        alone, _ = loops.run_epoch(engine, engine.eval_step, held, 300, r["epoch"], 1000)
        exact = [k for k in alone if k.startswith(("auc", "logloss", "calibration")) or k in ("samples", "clicks")]
        assert {k: r["dev_" + k] for k in exact} == {k: alone[k] for k in exact}
        assert r["dev_loss"] == pytest.approx(alone["loss"], rel=1e-9) and r["samples"] + r["dev_samples"] == 6000


def test_ranks_that_disagree_on_stopping_fail_instead_of_parting():
    import threading
    from test_distributed import ThreadedRanks
    from rectools import loops
    slots, barrier, outcome = [None] * 2, threading.Barrier(2, timeout=30), [None] * 2

    def rank(r):
        tracker = early_stopping.Tracker("loss", 1)
        tracker.add(0, validated(0, loss=0.5))
        tracker.add(1, validated(1, loss=0.6 if r == 0 else 0.4))  # only rank 0 sees no improvement
        try:
            outcome[r] = loops._agreed_stop(tracker, ThreadedRanks(r, 2, slots, barrier))
        except RuntimeError as e:
            outcome[r] = str(e)

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcome == ["the processes disagree on stopping early: [True, False]"] * 2
