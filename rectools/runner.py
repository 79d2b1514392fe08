"""Training and evaluation loops for a model folder that follows the dygraph contract."""
import json
import logging
import math
import os
import time

import numpy as np

from . import checkpoint
from .data import batches, data_files
from .errors import ConfigError
from .model_loader import model_module

log = logging.getLogger("rectools")

PARAMS, OPT_STATE = "rec.pdparams", "rec.pdopt"


def set_device(config):
    import paddle
    if config["runner.use_gpu"]:
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(f"{config.path}: runner.use_gpu is True but this Paddle build has no CUDA "
                              f"(use -o runner.use_gpu=False)")
        paddle.set_device("gpu")
    else:
        paddle.set_device("cpu")
    paddle.seed(config["runner.seed"])
    np.random.seed(config["runner.seed"])


def reader(config, package, data_key, reader_key):
    """The model's RecDataset over every file of the data folder named by `data_key`."""
    files = data_files(config[data_key], data_key)
    return model_module(package, config[reader_key], reader_key).RecDataset(files, config)


def append_jsonl(path, record):
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")


def format_metrics(values):
    return ", ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())


class Progress:
    """Loss averages and throughput over an epoch, logged every print_interval batches."""

    def __init__(self, epoch, interval):
        self.epoch, self.interval = epoch, interval
        self.start = self.mark = time.perf_counter()
        self.sums, self.samples, self.batches, self.since_mark = {}, 0, 0, 0

    def add(self, size, terms=None):
        self.batches += 1
        self.samples += size
        self.since_mark += size
        for name, value in (terms or {}).items():
            self.sums[name] = self.sums.get(name, 0.0) + value * size
        if self.batches % self.interval == 0:
            now = time.perf_counter()
            log.info("epoch: %d, batch_id: %d, %s, ips: %.1f ins/s", self.epoch, self.batches,
                     format_metrics(self.means()), self.since_mark / (now - self.mark))
            self.mark, self.since_mark = now, 0

    def means(self):
        return {name: total / self.samples for name, total in self.sums.items()}

    def summary(self):
        seconds = time.perf_counter() - self.start
        return {"epoch": self.epoch, **self.means(), "seconds": round(seconds, 3),
                "ips": round(self.samples / seconds, 1) if seconds > 0 else None}


def train(config, package):
    import paddle
    config.require("runner.train_data_dir", by="the trainer")
    set_device(config)
    contract = model_module(package, "dygraph_model", "runner.model_dir").DygraphModel()
    model = contract.create_model(config)
    optimizer = contract.create_optimizer(model, config)
    first_epoch = 0
    if config["runner.model_init_path"]:
        first_epoch = load_checkpoint(config["runner.model_init_path"], model, optimizer) + 1
    dataset = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")
    save_root = config["runner.model_save_path"]
    os.makedirs(save_root, exist_ok=True)
    if first_epoch >= config["runner.epochs"]:
        log.info("checkpoint of epoch %d already reaches runner.epochs=%d: nothing to train",
                 first_epoch - 1, config["runner.epochs"])
    for epoch in range(first_epoch, config["runner.epochs"]):
        model.train()
        metrics, progress = contract.create_metrics(), Progress(epoch, config["runner.print_interval"])
        for batch in batches(dataset.chunks(), config["runner.train_batch_size"]):
            terms = contract.train_forward(model, metrics, batch, config)
            terms["loss"].backward()
            optimizer.step()
            optimizer.clear_grad()
            progress.add(len(batch["click"]), {k: float(v) for k, v in terms.items()})
        record = {**progress.summary(), **contract.summarize_metrics(metrics)}
        log.info("epoch: %d done, %s", epoch, format_metrics({k: v for k, v in record.items() if k != "epoch"}))

        def write(folder):
            paddle.save(model.state_dict(), os.path.join(folder, PARAMS))
            paddle.save(optimizer.state_dict(), os.path.join(folder, OPT_STATE))

        saved = checkpoint.save(save_root, epoch, write, mode="dygraph")
        log.info("saved checkpoint %s", saved)
        append_jsonl(os.path.join(save_root, "train_metrics.jsonl"), record)


def load_checkpoint(folder, model, optimizer=None, key="runner.model_init_path"):
    """Load parameters (and optimizer state when asked and present); returns the checkpoint's epoch."""
    import paddle
    manifest = checkpoint.manifest(folder, key)
    state = paddle.load(os.path.join(folder, PARAMS))
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ConfigError(f"{key}: checkpoint {folder} does not fit this model (no {', '.join(missing[:3])}); "
                          f"was it trained with another counterfact_mode or backbone?")
    shapes = {k: (list(v.shape), list(state[k].shape)) for k, v in model.state_dict().items()}
    wrong = [f"{k} {want} vs {got}" for k, (want, got) in shapes.items() if want != got]
    if wrong:
        raise ConfigError(f"{key}: checkpoint {folder} does not fit this model: {wrong[0]}")
    model.set_state_dict(state)
    if optimizer is not None and os.path.isfile(os.path.join(folder, OPT_STATE)):
        optimizer.set_state_dict(paddle.load(os.path.join(folder, OPT_STATE)))
    return manifest["epoch"]


def infer(config, package):
    import paddle
    config.require("runner.test_data_dir", by="infer")
    set_device(config)
    contract = model_module(package, "dygraph_model", "runner.model_dir").DygraphModel()
    model = contract.create_model(config)
    load_root = config["runner.infer_load_path"] or config["runner.model_save_path"]
    end = config["runner.infer_end_epoch"]
    end = config["runner.epochs"] if end is None else end
    epochs = range(config["runner.infer_start_epoch"], end)
    if not epochs:
        raise ConfigError(f"{config.path}: no epochs to evaluate: runner.infer_start_epoch="
                          f"{config['runner.infer_start_epoch']}, runner.infer_end_epoch={end}")
    for epoch in epochs:  # fail before any work when a checkpoint is missing
        checkpoint.manifest(os.path.join(load_root, str(epoch)), "runner.infer_load_path")
    dataset = reader(config, package, "runner.test_data_dir", "runner.infer_reader_path")
    os.makedirs(config["runner.model_save_path"], exist_ok=True)
    for epoch in epochs:
        load_checkpoint(os.path.join(load_root, str(epoch)), model, key="runner.infer_load_path")
        model.eval()
        metrics, progress = contract.create_metrics(), Progress(epoch, config["runner.print_interval"])
        with paddle.no_grad():
            for batch in batches(dataset.chunks(), config["runner.infer_batch_size"]):
                terms = contract.infer_forward(model, metrics, batch, config)
                progress.add(len(batch["click"]), {k: float(v) for k, v in terms.items()})
        record = {**progress.summary(), **contract.summarize_metrics(metrics)}
        log.info("infer epoch: %d, %s", epoch, format_metrics({k: v for k, v in record.items() if k != "epoch"}))
        append_jsonl(os.path.join(config["runner.model_save_path"], "infer_metrics.jsonl"), record)
