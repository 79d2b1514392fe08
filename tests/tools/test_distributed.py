"""Several processes (runner.use_fleet): real `python -m paddle.distributed.launch --nproc_per_node 2`
runs of the command lines, 2 CPU processes over gloo, on the generated data (6000 training and 3000
test impressions), compared with one process on the same data and checkpoints."""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import CONFIG, REPO, data_overrides, ok, read_jsonl, write_lines
from rectools import checkpoint, cli, distributed, model_loader
from rectools.data import epoch_batches, reader
from rectools.errors import ConfigError, UserError

TRAIN_BATCH = 700  # 6000 samples: 9 batches, so rank 0 alone holds one in the last round and rank 1 stands in
INFER_BATCH = 700  # 3000 samples: 5 batches, 3 on rank 0 and 2 on rank 1
# the model's initialisation and recalibration take about 1,000 samples a rank: every 4th batch of each rank's
# share (3,200 and 2,800 samples), which alone rank 1 would take every 2nd (initialisation) or 3rd (recalibration)
SAMPLED = 2000


def launch(script, *args, cwd, nproc=2):
    """`script` (tools/<name> or a path) started by paddle.distributed.launch, its logs in cwd/log-<name>."""
    path = script if os.path.isabs(script) else os.path.join(REPO, "tools", script)
    log_dir = os.path.join(cwd, "log-" + os.path.splitext(os.path.basename(path))[0])
    shutil.rmtree(log_dir, ignore_errors=True)
    return subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                           "--log_dir", log_dir, path, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def one(tool, *args, cwd):
    return subprocess.run([sys.executable, "-u", os.path.join(REPO, "tools", tool), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def worker_log(cwd, script, rank):
    with open(os.path.join(cwd, f"log-{script}", f"workerlog.{rank}")) as f:
        return f.read()


def sample_ids(folder):
    """The sample ids of a data folder's files, in the order one process reads them."""
    ids = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            ids += [int(line.split(",", 1)[0]) for line in f if line.strip()]
    return ids


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """Two epochs trained by 2 processes, with an inference model per epoch: (folder, common -o args)."""
    root = tmp_path_factory.mktemp("fleet")
    common = ["-m", CONFIG, "-o", *data_overrides(synthetic), f"runner.cache_dir={root / 'cache'}",
              f"runner.model_save_path={root / 'out'}", "runner.epochs=2", f"runner.train_batch_size={TRAIN_BATCH}",
              f"runner.infer_batch_size={INFER_BATCH}", "runner.print_interval=2", f"runner.recalibration_samples={SAMPLED}"]
    result = ok(launch("trainer.py", *common, "runner.use_fleet=True", "runner.use_inference=True", cwd=str(root)))
    return root, common, result


def test_two_processes_write_one_global_record_per_epoch_from_rank_0(trained, synthetic):
    root, _, result = trained
    records = read_jsonl(root / "out" / "train_metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    with open(synthetic[0] / "train" / "part-00000.txt") as f:
        clicks = sum(line.split(",")[1] == "1" for line in f)
    for r in records:  # the metrics of every rank's samples, not of one shard
        assert r["samples"] == 6000 and r["clicks"] == clicks and 0 < r["auc_ctr"] < 1 and r["loss"] > 0
    assert records[1]["loss"] < records[0]["loss"]
    for epoch in ("0", "1"):
        assert sorted(os.listdir(root / "out" / epoch)) == ["checkpoint.json", "inference", "rec.pdopt", "rec.pdparams"]
    assert result.stdout.count("parameters identical on all 2 processes") == 2
    # the samples of both ranks, gathered: 1,100 and 700 (the last batch holds 400)
    assert "the CTR tower starts at the click rate of 1800 training impressions" in result.stdout
    assert result.stdout.count("pCTR recalibrated on 1800 training impressions") == 2
    rank0, rank1 = worker_log(str(root), "trainer", 0), worker_log(str(root), "trainer", 1)
    assert "epoch: 1 done" in rank0 and "saved checkpoint" in rank0
    assert " - INFO - " not in rank1 and " - WARNING - " not in rank1  # the other ranks are quiet


def test_global_evaluation_equals_one_process_on_the_same_checkpoints(trained):
    root, common, _ = trained
    ok(launch("infer.py", *common, "runner.use_fleet=True", cwd=str(root)))
    ok(one("infer.py", *common, f"runner.infer_load_path={root / 'out'}", f"runner.model_save_path={root / 'alone'}",
           cwd=str(root)))
    two, alone = read_jsonl(root / "out" / "infer_metrics.jsonl"), read_jsonl(root / "alone" / "infer_metrics.jsonl")
    assert [r["epoch"] for r in two] == [r["epoch"] for r in alone] == [0, 1]
    for a, b in zip(two, alone):
        exact = {k for k in a if k.startswith(("auc", "logloss", "calibration"))} | {"mean_pcvr", "samples", "clicks"}
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact} and a["samples"] == 3000
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)  # sums of per-rank sums: another order


def test_prediction_file_is_written_once_in_input_order(trained, synthetic):
    root, common, _ = trained
    ok(launch("predict.py", *common, "runner.use_fleet=True", f"runner.predict_output={root / 'two.csv'}",
              cwd=str(root)))
    ok(one("predict.py", *common, f"runner.predict_output={root / 'one.csv'}", cwd=str(root)))
    with open(root / "two.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sample_id", "pctr", "pcvr", "pctcvr"]
    assert [int(r[0]) for r in rows[1:]] == sample_ids(synthetic[0] / "test")  # each once, in input order
    assert (root / "two.csv").read_bytes() == (root / "one.csv").read_bytes()
    assert not [name for name in os.listdir(root) if name.startswith(".two.csv")]  # no temporaries left


def test_one_process_resumes_from_a_two_process_checkpoint(trained):
    root, common, _ = trained
    shutil.copytree(root / "out", root / "resumed", ignore=shutil.ignore_patterns(".lock"))
    resumed = ok(one("trainer.py", *common, f"runner.model_save_path={root / 'resumed'}", "runner.epochs=3",
                     f"runner.model_init_path={root / 'resumed' / '1'}", cwd=str(root)))
    assert "epoch: 0," not in resumed.stdout and "epoch: 2 done" in resumed.stdout
    assert [r["epoch"] for r in read_jsonl(root / "resumed" / "train_metrics.jsonl")] == [0, 1, 2]


DRIVER = """
import json, sys
import numpy as np
from rectools import distributed, engines, loops, model_loader
from rectools.data import epoch_batches, reader
from rectools.metrics import Accumulator

config_path, out, *overrides = sys.argv[1:]


def train(*more, group=None):
    # one epoch through the loop the trainer runs, on the engine it builds
    fleet = group is None or group.size > 1
    config, package = model_loader.load(config_path, overrides + list(more) + [f"runner.use_fleet={{fleet}}"])
    group = distributed.group(config) if group is None else group
    engine = engines.DygraphEngine(config, package, train=True)
    dataset = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")
    size = config["runner.train_batch_size"]
    record, predictions = loops.run_epoch(engine, engine.train_step, dataset, size, 0, 1000, group.shard,
                                          group.gather(size), group, lockstep=True)
    return config, group, engine, dataset, record, predictions


config, group, engine, dataset, record, predictions = train()
np.savez(f"{{out}}/rank{{group.rank}}.npz", **engine.parameters())
# the embedding's gradient as DataParallel leaves it after one more backward
size = config["runner.train_batch_size"]
batch = next(iter(epoch_batches(dataset, size, group.shard)))
engine.contract.train_forward(engine.trained, Accumulator(), batch, config)["loss"].backward()
sparse = [dict(name=p.name, rows=len(p.grad.rows()), shape=list(p.shape)) for p in engine.model.parameters()
          if p.grad is not None and p.grad.is_selected_rows()]
# one batch for two processes: rank 1 only stands in; the update must be one process's
_, _, alone, *_ = train("runner.train_batch_size=100000", group=group)
_, _, reference, *_ = train("runner.train_batch_size=100000", group=distributed.LOCAL)
same = all(np.array_equal(v, reference.parameters()[k]) for k, v in alone.parameters().items())
with open(f"{{out}}/rank{{group.rank}}.json", "w") as f:
    json.dump(dict(samples=record["samples"], sample_id=predictions["sample_id"].tolist(),
                   distinct_ids=len(np.unique(batch["ids"])),
                   sparse=sparse, stand_in_equals_one_process=same), f)
"""


def test_ranks_end_with_identical_parameters_and_the_embedding_gradient_travels_sparse(synthetic, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format())
    ok(launch(str(driver), CONFIG, str(tmp_path), *data_overrides(synthetic), f"runner.cache_dir={tmp_path / 'cache'}",
              f"runner.train_batch_size={TRAIN_BATCH}", cwd=str(tmp_path)))
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert sorted(ranks[0].files) == sorted(ranks[1].files) and "embedding.weight" in ranks[0].files
    for name in ranks[0].files:
        assert np.array_equal(ranks[0][name], ranks[1][name]), name
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for info in infos:
        # every sample trained on once, and the gathered predictions in the single-process order
        assert info["samples"] == 6000 and info["sample_id"] == sample_ids(synthetic[0] / "train")
        # one SelectedRows gradient, with every rank's looked-up rows (its batch's distinct ids), gathered
        (grad,) = info["sparse"]
        assert grad["rows"] == sum(i["distinct_ids"] for i in infos)
        assert grad["shape"][0] == synthetic[1]["sparse_feature_number"]
        assert info["stand_in_equals_one_process"]


def test_bad_data_on_rank_1_ends_the_job_with_its_line(tmp_path):
    good = [f"{i},{i % 2},0,101:{i % 50 + 1}" for i in range(1, 9000)]  # past the reader's first block
    data = write_lines(str(tmp_path / "data" / "part-0.txt"), good + ["9000,0,1,101:3"])  # batch 35: rank 1's
    result = launch("trainer.py", "-m", CONFIG, "-o", "runner.use_fleet=True", f"runner.train_data_dir={tmp_path / 'data'}",
                    f"runner.model_save_path={tmp_path / 'out'}", "runner.train_batch_size=256", "runner.cache_dir=none",
                    cwd=str(tmp_path))
    assert result.returncode != 0
    # every rank parses the whole stream, so both meet the line; the launcher shows the log of the first to stop
    assert f"\nerror: {data}:9000: buy=1 on an impression with click=0\n" in result.stdout
    assert [n for n in os.listdir(tmp_path / "out") if n != ".lock"] == []  # no checkpoint, no record


def test_a_failure_of_rank_0_alone_stops_the_job(synthetic, tmp_path):
    (tmp_path / "out").mkdir()
    checkpoint.claim(str(tmp_path / "out"))  # another trainer holds the folder: rank 0 fails, rank 1 waits for it
    try:
        result = launch("trainer.py", "-m", CONFIG, "-o", "runner.use_fleet=True", *data_overrides(synthetic),
                        f"runner.model_save_path={tmp_path / 'out'}", f"runner.cache_dir={tmp_path / 'cache'}",
                        cwd=str(tmp_path))
    finally:
        checkpoint.release(str(tmp_path / "out"))
    assert result.returncode != 0
    assert "is in use by another trainer" in worker_log(str(tmp_path), "trainer", 0).strip().splitlines()[-1]
    assert "is in use by another trainer" in result.stdout


def test_static_training_on_several_processes_is_refused_in_one_line(synthetic, tmp_path):
    result = launch("static_trainer.py", "-m", CONFIG, "-o", "runner.use_fleet=True", *data_overrides(synthetic),
                    f"runner.model_save_path={tmp_path / 'out'}", cwd=str(tmp_path))
    assert result.returncode != 0
    assert [line for line in result.stdout.splitlines() if line.startswith("error: ")][0].endswith(
        "runner.use_fleet: static training on several processes is not supported (Paddle 3.3.1's fleet cannot "
        "build a data-parallel program on the new IR); train with tools/trainer.py")


def test_a_launched_job_needs_use_fleet_and_use_fleet_alone_is_one_process(monkeypatch):
    config, _ = model_loader.load(CONFIG)
    monkeypatch.setenv(cli.LAUNCHED, "2")
    with pytest.raises(ConfigError, match="runner.use_fleet is False"):
        distributed.group(config)
    monkeypatch.delenv(cli.LAUNCHED)
    fleet, _ = model_loader.load(CONFIG, ["runner.use_fleet=True"])
    assert distributed.group(fleet) is distributed.LOCAL


def test_gathered_shards_come_back_in_the_single_process_order(synthetic):
    config, package = model_loader.load(CONFIG, data_overrides(synthetic))
    dataset = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")
    whole = np.concatenate([b["sample_id"] for b in epoch_batches(dataset, TRAIN_BATCH)])
    for ranks in (2, 3, 20):  # 20 ranks: more than the 9 batches, so some hold none
        shards = [[b["sample_id"] for b in epoch_batches(dataset, TRAIN_BATCH, distributed.Group(r, ranks).shard)]
                  for r in range(ranks)]
        parts = [np.concatenate(s) if s else None for s in shards]
        assert [0 if p is None else len(p) for p in parts] == distributed.shard_sizes(6000, TRAIN_BATCH, ranks)
        assert np.array_equal(distributed.interleave([parts], ["sample_id"], TRAIN_BATCH)["sample_id"], whole)
    with pytest.raises(UserError, match="do not fit the shard rule"):  # ranks that read different data
        distributed.interleave([[whole[:3000], whole[:2000]]], ["sample_id"], TRAIN_BATCH)


class ThreadedRanks(distributed.Group):
    """Ranks of one job as threads of this process: all_gather exchanges values through shared slots."""

    def __init__(self, rank, size, slots, barrier):
        super().__init__(rank, size)
        self.slots, self.barrier = slots, barrier

    def all_gather(self, value):
        self.slots[self.rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()  # nobody writes the next round's value before everyone has read this one
        return values


@pytest.mark.parametrize("ranks", [2, 3])
def test_an_epoch_gathered_in_rounds_is_whole_and_in_order(monkeypatch, ranks):
    """Rounds of whole batches (many here: small chunks), from spilled predictions, into one order."""
    from rectools import metrics
    monkeypatch.setattr(metrics, "CHUNK_ROWS", 150)
    monkeypatch.setattr(metrics, "SPILL_BYTES", 2000)
    batch, n = 64, 5000  # 79 batches, the last one short
    rng = np.random.default_rng(ranks)
    scores = rng.random(n).astype(np.float32)
    mine = [metrics.Accumulator() for _ in range(ranks)]
    for b, lo in enumerate(range(0, n, batch)):
        mine[b % ranks].add(sample_id=np.arange(lo, min(lo + batch, n)), p=scores[lo:lo + batch])
    slots, barrier = [None] * ranks, threading.Barrier(ranks, timeout=60)  # a rank that fails frees the others
    gathered = [None] * ranks

    def run(rank):
        try:
            gathered[rank] = ThreadedRanks(rank, ranks, slots, barrier).gather(batch)(mine[rank].arrays())
        except BaseException as e:
            gathered[rank] = e
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for columns in gathered:
        if isinstance(columns, BaseException):
            raise columns
        assert isinstance(columns, metrics.Columns) and columns.rows == n
        np.testing.assert_array_equal(columns["sample_id"], np.arange(n))
        np.testing.assert_array_equal(columns["p"], scores)


def test_the_flags_banner_of_paddle_is_kept_out_of_the_worker_logs():
    from rectools.distributed import without_flags_banner
    banner = ("======================= Modified FLAGS detected =======================\n"
              "FLAGS(name='FLAGS_enable_pir_in_executor', current_value=True, default_value=False)\n"
              "=======================================================================\n")
    assert without_flags_banner(banner) == "" and without_flags_banner("gloo: a real warning\n" + banner) == \
        "gloo: a real warning\n"

