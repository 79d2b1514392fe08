"""Training and evaluation loops, one for both graph modes. An engine (dygraph or static) runs
steps and moves parameters; the loops own epochs, progress, metrics files and checkpoints."""
import contextlib
import json
import logging
import math
import os
import time

import numpy as np
import paddle

from . import checkpoint
from .data import batches, data_files
from .errors import ConfigError, UserError
from .model_loader import model_module

log = logging.getLogger("rectools")

PARAMS, OPT_STATE = "rec.pdparams", "rec.pdopt"
INFERENCE_DIR = "inference"  # inside a checkpoint, with runner.use_inference


def place(config):
    if config["runner.use_gpu"]:
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(f"{config.path}: runner.use_gpu is True but this Paddle build has no CUDA "
                              f"(use -o runner.use_gpu=False)")
        paddle.set_device("gpu")
        return paddle.CUDAPlace(0)
    paddle.set_device("cpu")
    return paddle.CPUPlace()


def reader(config, package, data_key, reader_key):
    """The model's RecDataset over every file of the data folder named by `data_key`."""
    files = data_files(config[data_key], data_key)
    return model_module(package, config[reader_key], reader_key).RecDataset(files, config)


def check_fits(model_state, state, folder, key):
    """Refuse a checkpoint whose parameters are not this model's."""
    missing = sorted(set(model_state) - set(state))
    if missing:
        raise ConfigError(f"{key}: checkpoint {folder} does not fit this model (no {', '.join(missing[:3])}); "
                          f"was it trained with another counterfact_mode or backbone?")
    for name, shape in model_state.items():
        if list(shape) != list(np.shape(state[name])):
            raise ConfigError(f"{key}: checkpoint {folder} does not fit this model: {name} has shape "
                              f"{list(np.shape(state[name]))}, the model {list(shape)}")


class DygraphEngine:
    mode = "dygraph"

    def __init__(self, config, package, train):
        self.config = config
        place(config)
        paddle.seed(config["runner.seed"])
        self.contract = model_module(package, "dygraph_model", "runner.model_dir").DygraphModel()
        self.model = self.contract.create_model(config)
        self.optimizer = self.contract.create_optimizer(self.model, config) if train else None

    def train_step(self, batch, metrics):
        terms = self.contract.train_forward(self.model, metrics, batch, self.config)
        terms["loss"].backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        return {k: float(v) for k, v in terms.items()}

    def eval_step(self, batch, metrics):
        self.model.eval()
        with paddle.no_grad():
            terms = self.contract.infer_forward(self.model, metrics, batch, self.config)
        self.model.train()
        return {k: float(v) for k, v in terms.items()}

    def parameters(self):
        return {k: v.numpy() for k, v in self.model.state_dict().items()}

    def set_parameters(self, state, folder, key):
        check_fits({k: v.shape for k, v in self.model.state_dict().items()}, state, folder, key)
        self.model.set_state_dict({k: np.asarray(v) for k, v in state.items()})

    def optimizer_state(self):
        return self.optimizer.state_dict()

    def set_optimizer_state(self, state):
        self.optimizer.set_state_dict(state)


class StaticEngine:
    mode = "static"

    def __init__(self, config, package, train):
        paddle.enable_static()
        self.config = config
        self.contract = model_module(package, "static_model", "runner.model_dir").StaticModel(config)
        self.program, startup = paddle.static.Program(), paddle.static.Program()
        self.program.random_seed = startup.random_seed = config["runner.seed"]
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(self.program, startup):
            feeds = self.contract.create_feeds()
            self.fetches = self.contract.net(feeds) if train else self.contract.infer_net(feeds)
            if train:
                self.contract.create_optimizer(self.fetches)
        self.place = place(config)
        self.executor = paddle.static.Executor(self.place)
        self.executor.run(startup)
        self.scope = paddle.static.global_scope()
        self.names = self.contract.parameter_names()
        with dygraph_mode():  # start where dygraph starts with the same seed: one run, two graph modes
            initial = DygraphEngine(config, package, train=False).parameters()
        self.set_parameters(initial, "initial parameters", "runner.seed")

    def _run(self, batch):
        values = self.executor.run(self.program, feed=self.contract.feed(batch), fetch_list=list(self.fetches.values()))
        return dict(zip(self.fetches, values))

    def train_step(self, batch, metrics):
        return self.contract.collect(metrics, batch, self._run(batch))

    eval_step = train_step  # an inference program has no update ops

    def _get(self, name):
        return np.array(self.scope.find_var(name).get_tensor())

    def _set(self, name, value):
        self.scope.find_var(name).get_tensor().set(np.asarray(value), self.place)

    def parameters(self):
        return {key: self._get(name) for key, name in self.names.items()}

    def set_parameters(self, state, folder, key):
        check_fits({k: self._get(n).shape for k, n in self.names.items()}, state, folder, key)
        for key_, name in self.names.items():
            self._set(name, state[key_])

    def optimizer_state(self):
        """Every persistable value of the program that is not a parameter: moments, beta powers, rates."""
        params = set(self.names.values())
        return {name: self._get(name) for name in self.program.state_dict() if name not in params}

    def set_optimizer_state(self, state):
        for name, value in state.items():
            if self.scope.find_var(name) is not None:
                self._set(name, value)


ENGINES = {"dygraph": DygraphEngine, "static": StaticEngine}


def load_arrays(path, key):
    """A saved dict as numpy arrays, whichever graph mode wrote it or reads it."""
    try:
        return {k: np.array(v) for k, v in paddle.load(path).items()}
    except Exception as e:  # noqa: BLE001  paddle raises several kinds for a damaged file
        raise ConfigError(f"{key}: cannot read {path}: {e}") from None


def load_checkpoint(engine, folder, key, with_optimizer):
    """Parameters (and optimizer state of a checkpoint of the same mode); returns its epoch."""
    manifest = checkpoint.manifest(folder, key)
    engine.set_parameters(load_arrays(os.path.join(folder, PARAMS), key), folder, key)
    if with_optimizer and os.path.isfile(os.path.join(folder, OPT_STATE)):
        if manifest.get("mode") == engine.mode:
            engine.set_optimizer_state(load_arrays(os.path.join(folder, OPT_STATE), key))
        else:
            log.info("%s was saved in %s mode: its optimizer state does not apply in %s mode and starts afresh",
                     folder, manifest.get("mode"), engine.mode)
    return manifest["epoch"]


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


def keep_records_before(path, epoch):
    """A run that (re)trains from `epoch` replaces the records of that epoch on."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["epoch"] < epoch]
    with checkpoint.atomic_file(path) as f:
        f.writelines(kept)


def append_jsonl(path, record):
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")


def format_metrics(values):
    return ", ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())


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
            window = self.summarize(self.metrics, last_batches=self.interval)
            aucs = {k: v for k, v in window.items() if k.startswith("auc")}
            log.info("epoch: %d, batch_id: %d, %s, %s, ips: %.1f ins/s", self.epoch, self.batches,
                     format_metrics(self.means()), format_metrics(aucs), self.since_mark / (now - self.mark))
            self.mark, self.since_mark = now, 0

    def means(self):
        return {name: total / self.samples for name, total in self.sums.items()}

    def summary(self):
        seconds = time.perf_counter() - self.start
        return {"epoch": self.epoch, **self.means(), "seconds": round(seconds, 3),
                "ips": round(self.samples / seconds, 1) if seconds > 0 else None}


def run_epoch(engine, step, dataset, batch_size, epoch, interval):
    contract = engine.contract
    metrics = contract.create_metrics()
    progress = Progress(epoch, interval, metrics, contract.summarize_metrics)
    for batch in batches(dataset.chunks(), batch_size):
        progress.add(len(batch["click"]), step(batch, metrics))
    if not progress.samples:
        raise UserError(f"no samples in {', '.join(dataset.file_list)}")
    return {**progress.summary(), **contract.summarize_metrics(metrics)}


def log_record(prefix, record):
    log.info("%s: %d%s, %s", prefix, record["epoch"], " done" if prefix == "epoch" else "",
             format_metrics({k: v for k, v in record.items() if k != "epoch"}))


def train(config, package, mode="dygraph"):
    config.require("runner.train_data_dir", by="the trainer")
    dataset = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")
    engine = ENGINES[mode](config, package, train=True)
    first_epoch = 0
    if config["runner.model_init_path"]:
        first_epoch = load_checkpoint(engine, config["runner.model_init_path"], "runner.model_init_path", True) + 1
    save_root = output_folder(config, claim=True)
    keep_records_before(os.path.join(save_root, "train_metrics.jsonl"), first_epoch)
    if first_epoch >= config["runner.epochs"]:
        log.info("checkpoint of epoch %d already reaches runner.epochs=%d: nothing to train",
                 first_epoch - 1, config["runner.epochs"])
    for epoch in range(first_epoch, config["runner.epochs"]):
        record = run_epoch(engine, engine.train_step, dataset, config["runner.train_batch_size"], epoch,
                           config["runner.print_interval"])
        log_record("epoch", record)
        if not math.isfinite(record["loss"]):
            raise UserError(f"epoch {epoch}: the training loss is {record['loss']}; no checkpoint saved "
                            f"(a lower hyper_parameters.optimizer.learning_rate may help)")
        saved = checkpoint.save(save_root, epoch, lambda folder: write_checkpoint(engine, config, package, folder),
                                mode=engine.mode)
        log.info("saved checkpoint %s", saved)
        append_jsonl(os.path.join(save_root, "train_metrics.jsonl"), record)


def write_checkpoint(engine, config, package, folder):
    params = engine.parameters()
    paddle.save(params, os.path.join(folder, PARAMS))
    paddle.save(engine.optimizer_state(), os.path.join(folder, OPT_STATE))
    if config["runner.use_inference"]:
        export(config, package, params, os.path.join(folder, INFERENCE_DIR))


def infer(config, package, mode="dygraph"):
    config.require("runner.test_data_dir", by="infer")
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
    engine = ENGINES[mode](config, package, train=False)
    output_folder(config)
    for epoch in epochs:
        load_checkpoint(engine, os.path.join(load_root, str(epoch)), "runner.infer_load_path", False)
        record = run_epoch(engine, engine.eval_step, dataset, config["runner.infer_batch_size"], epoch,
                           config["runner.print_interval"])
        log_record("infer epoch", record)
        append_jsonl(os.path.join(config["runner.model_save_path"], "infer_metrics.jsonl"), record)


@contextlib.contextmanager
def dygraph_mode():
    """Dygraph for the duration, whatever mode the process is in."""
    static = not paddle.in_dynamic_mode()
    if static:
        paddle.disable_static()
    try:
        yield
    finally:
        if static:
            paddle.enable_static()


def export(config, package, params, out_dir):
    """The model folder's inference model (serving.py) of its net with `params`, into out_dir."""
    with dygraph_mode():
        contract = model_module(package, "dygraph_model", "runner.model_dir").DygraphModel()
        model = contract.create_model(config)
        check_fits({k: v.shape for k, v in model.state_dict().items()}, params, "parameters", "export")
        model.set_state_dict({k: np.asarray(v) for k, v in params.items()})
        model_module(package, "serving", "runner.model_dir").export(model, config, out_dir)


def last_epoch_folder(config, key):
    """<model_save_path>/<epochs - 1>, the default of keys that name a trained checkpoint."""
    folder = os.path.join(config["runner.model_save_path"], str(config["runner.epochs"] - 1))
    checkpoint.manifest(folder, key)
    return folder


def export_checkpoint(config, package):
    """tools/export.py: a checkpoint's inference model, written whole or not at all."""
    source = config["runner.export_checkpoint"] or last_epoch_folder(config, "runner.export_checkpoint")
    checkpoint.manifest(source, "runner.export_checkpoint")
    target = config["runner.export_dir"] or os.path.join(source, INFERENCE_DIR)
    serving = model_module(package, "serving", "runner.model_dir")
    if os.path.exists(target) and not set(os.listdir(target)) <= {serving.MODEL, serving.PARAMS, serving.SIGNATURE}:
        raise ConfigError(f"runner.export_dir: {target} exists and is not an exported model: not replacing it")
    params = load_arrays(os.path.join(source, PARAMS), "runner.export_checkpoint")
    with checkpoint.atomic_folder(target) as tmp:
        export(config, package, params, tmp)
    log.info("exported %s to %s", source, target)
    return target
