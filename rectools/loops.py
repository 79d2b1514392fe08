"""Training and evaluation loops, one for both graph modes: epochs, progress lines, metric records
and checkpoints. An engine (rectools.engines) runs the steps.

Two seams are explicit arguments: `shard` (rectools.data.Shard: which samples this process reads)
and `gather` (rectools.contract.Gather: which predictions go into an epoch's metrics; by default
this process's own). Each epoch's predictions are returned with their sample ids, so callers (the
command lines, a benchmark against a known truth, several processes) share this one loop.
`group` (rectools.distributed.Group) is the processes of a job: it supplies both seams, runs the
training steps in lockstep, totals the loss sums, and lets only rank 0 write.
"""
import logging
import math
import os
import time

from . import checkpoint, records
from .data import epoch_batches, reader, rows
from .distributed import LOCAL
from .engines import ENGINES
from .errors import ConfigError, UserError
from .metrics import Accumulator

log = logging.getLogger("rectools")


class Progress:
    """Loss averages and throughput over an epoch, logged every print_interval batches with the
    AUCs of the batches since the last line (exact over that window; the epoch's are at its end)."""

    def __init__(self, epoch, interval, metrics, summarize):
        self.epoch, self.interval = epoch, interval
        self.metrics, self.summarize = metrics, summarize
        self.start = self.mark = time.perf_counter()
        self.sums, self.samples, self.batches, self.since_mark = {}, 0, 0, 0

    def add(self, size, terms):
        self.batches += 1
        self.samples += size
        self.since_mark += size
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * size
        if self.batches % self.interval == 0:
            now = time.perf_counter()
            window = self.summarize(self.metrics.arrays(last_batches=self.interval))
            aucs = {k: v for k, v in window.items() if k.startswith("auc")}
            log.info("epoch: %d, batch_id: %d, %s, %s, ips: %.1f ins/s", self.epoch, self.batches,
                     records.format_metrics(self.means()), records.format_metrics(aucs),
                     self.since_mark / (now - self.mark))
            self.mark, self.since_mark = now, 0

    def means(self):
        return {name: total / self.samples for name, total in self.sums.items()}

    def summary(self):
        seconds = time.perf_counter() - self.start
        return {"epoch": self.epoch, **self.means(), "seconds": round(seconds, 3),
                "ips": round(self.samples / seconds, 1) if seconds > 0 else None}


def run_epoch(engine, step, dataset, batch_size, epoch, interval, shard=LOCAL.shard, gather=None, group=LOCAL,
              lockstep=False):
    """One pass of `step` (engine.train_step or engine.eval_step) over this shard of `dataset`.

    Returns (record, predictions): the epoch's record (epoch, mean loss terms per sample, seconds,
    ips, and the model's metrics over the gathered predictions) and the predictions themselves,
    {name: 1-D array} with `sample_id`, in batch order. With `lockstep` (training on several
    processes) the steps run in group.lockstep's rounds; loss sums and sample counts are totalled
    over `group`. Raises UserError when no sample was read (by any process).
    """
    metrics = Accumulator()
    progress = Progress(epoch, interval, metrics, engine.summarize_metrics)
    batches = epoch_batches(dataset, batch_size, shard)
    for batch, weight in group.lockstep(batches) if lockstep else ((b, None) for b in batches):
        if weight == 0.0:  # a stand-in step of the last round (rectools.distributed): not counted
            step(batch, Accumulator(), weight)
            continue
        terms = step(batch, metrics) if weight is None else step(batch, metrics, weight)
        metrics.add(sample_id=batch["sample_id"])
        progress.add(rows(batch), terms)
    summary = progress.summary()
    if group.size > 1:
        totals = group.sum({**progress.sums, "": progress.samples})
        samples = totals.pop("")
        summary.update({k: v / samples for k, v in totals.items()} if samples else {},
                       ips=round(samples / summary["seconds"], 1) if summary["seconds"] > 0 else None)
    else:
        samples = progress.samples
    if not samples:
        raise UserError(f"no samples in {', '.join(dataset.file_list)}")
    predictions = metrics.arrays()
    if gather is not None:
        predictions = gather(predictions)
    return {**summary, **engine.summarize_metrics(predictions)}, predictions


def log_record(prefix, record):
    log.info("%s: %d%s, %s", prefix, record["epoch"], " done" if prefix == "epoch" else "",
             records.format_metrics({k: v for k, v in record.items() if k != "epoch"}))


def output_folder(config, claim=False):
    """runner.model_save_path, created; refused early when it is a file. With `claim` (a trainer)
    this process becomes its only writer and what a killed run left there is recovered."""
    folder = config["runner.model_save_path"]
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"runner.model_save_path: {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    if claim:
        checkpoint.claim(folder)
    return folder


def train(config, package, mode="dygraph", shard=None, gather=None, group=LOCAL):
    """tools/trainer.py and tools/static_trainer.py: runner.epochs epochs from runner.model_init_path
    (or from scratch), a checkpoint and a train_metrics.jsonl record per epoch. Returns the records.

    shard and gather default to `group`'s; with several processes every rank trains and returns
    the same records, rank 0 alone writes them, and the ranks' parameters are checked to be
    identical after each epoch."""
    config.require("runner.train_data_dir", by="the trainer")
    dataset = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")
    engine = ENGINES[mode](config, package, train=True)
    batch_size = config["runner.train_batch_size"]
    shard = group.shard if shard is None else shard
    gather = group.gather(batch_size) if gather is None else gather
    group.check_data(dataset.file_list)
    if group.main:
        save_root = output_folder(config, claim=True)  # first: it recovers an epoch a killed run was replacing
    group.barrier()  # the others read model_init_path once rank 0 has recovered the folder
    first_epoch = 0
    if config["runner.model_init_path"]:
        first_epoch = checkpoint.load_checkpoint(engine, config["runner.model_init_path"],
                                                 "runner.model_init_path", True) + 1
    if group.main:
        metrics_file = os.path.join(save_root, records.TRAIN)
        records.keep_before(metrics_file, first_epoch)
    if first_epoch >= config["runner.epochs"]:
        log.info("checkpoint of epoch %d already reaches runner.epochs=%d: nothing to train",
                 first_epoch - 1, config["runner.epochs"])
    export = None
    if config["runner.use_inference"]:
        from .serving import export as export_model
        export = lambda params, folder: export_model(config, package, params,  # noqa: E731
                                                     os.path.join(folder, checkpoint.INFERENCE_DIR))
    done = []
    for epoch in range(first_epoch, config["runner.epochs"]):
        record, _ = run_epoch(engine, engine.train_step, dataset, batch_size, epoch, config["runner.print_interval"],
                              shard, gather, group, lockstep=True)
        log_record("epoch", record)
        if not math.isfinite(record["loss"]):
            raise UserError(f"epoch {epoch}: the training loss is {record['loss']}; no checkpoint saved "
                            f"(a lower hyper_parameters.optimizer.learning_rate may help)")
        if group.size > 1:
            log.info("parameters identical on all %d processes (sha256 %s)", group.size,
                     group.check_parameters(engine.parameters())[:16])
        if group.main:
            saved = checkpoint.save(save_root, epoch,
                                    lambda folder: checkpoint.write_checkpoint(engine, folder, export), mode=engine.mode)
            log.info("saved checkpoint %s", saved)
            records.append(metrics_file, record)
        done.append(record)
    return done


def infer(config, package, mode="dygraph", shard=None, gather=None, group=LOCAL):
    """tools/infer.py and tools/static_infer.py: evaluates the checkpoints of epochs infer_start_epoch
    .. infer_end_epoch - 1 on test_data_dir, an infer_metrics.jsonl record each.
    Returns [(record, predictions)] per epoch (see run_epoch). shard and gather default to
    `group`'s: every rank evaluates its shard and returns the metrics and predictions of all; rank
    0 alone writes the records."""
    config.require("runner.test_data_dir", by="infer")
    load_root = config["runner.infer_load_path"] or config["runner.model_save_path"]
    end = config["runner.infer_end_epoch"]
    end = config["runner.epochs"] if end is None else end
    epochs = range(config["runner.infer_start_epoch"], end)
    if not epochs:
        raise ConfigError(f"{config.path}: no epochs to evaluate: runner.infer_start_epoch="
                          f"{config['runner.infer_start_epoch']}, runner.infer_end_epoch={end}")
    folders = [checkpoint.epoch_folder(load_root, e, "runner.infer_load_path") for e in epochs]  # fail early
    dataset = reader(config, package, "runner.test_data_dir", "runner.infer_reader_path")
    engine = ENGINES[mode](config, package, train=False)
    batch_size = config["runner.infer_batch_size"]
    shard = group.shard if shard is None else shard
    gather = group.gather(batch_size) if gather is None else gather
    group.check_data(dataset.file_list)
    metrics_file = os.path.join(output_folder(config), records.INFER) if group.main else None
    results = []
    for epoch, folder in zip(epochs, folders):
        checkpoint.load_checkpoint(engine, folder, "runner.infer_load_path", False)
        record, predictions = run_epoch(engine, engine.eval_step, dataset, batch_size, epoch,
                                        config["runner.print_interval"], shard, gather, group)
        log_record("infer epoch", record)
        if group.main:
            records.append(metrics_file, record)
        results.append((record, predictions))
    return results
