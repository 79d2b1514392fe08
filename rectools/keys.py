"""The runner keys every model folder shares. A model folder adds its own in config_schema.py,
among them runner.train_reader_path and runner.infer_reader_path (its reader modules: only the
model folder knows their names; rectools.contract checks that it declares them)."""
from .config import Key
from .errors import ConfigError

DEV_FRACTION_LIMIT = 0.5  # runner.dev_fraction must stay below it: the training split is the larger one

RUNNER_KEYS = [
    Key("runner.model_dir", "path", None,
        "folder of the model (see rectools/contract.py); default: the config file's folder"),
    Key("runner.train_data_dir", "path", None, "folder of training files (every file in it is read, sorted by name)"),
    Key("runner.test_data_dir", "path", None, "folder of evaluation files, read by infer"),
    Key("runner.cache_dir", "optional_path", None,
        "where parsed data files are cached (per file, checked against the file's size, times and sampled bytes, "
        "and by checksums as it is read); unset or null: "
        "$XDG_CACHE_HOME/escm2-paddle or ~/.cache/escm2-paddle; none or '': no cache"),
    Key("runner.cache_max_gb", "float", 32.0,
        "GB (10^9 bytes) the cache folder's entries may take; the least recently used go first (full Ali-CCP, "
        "train and test at max_len 3: ~25 GB); list or clear them with tools/cache.py", minimum=0.0),
    Key("runner.use_gpu", "bool", False, "run on the GPU (needs a CUDA build of Paddle)"),
    Key("runner.use_fleet", "bool", False,
        "run as the N processes python -m paddle.distributed.launch starts: each takes every N-th batch; "
        "gradients, metrics and predictions are global; rank 0 writes"),
    Key("runner.train_batch_size", "int", 1024, "samples per training step (of each process with use_fleet)",
        minimum=1),
    Key("runner.infer_batch_size", "int", 1024, "samples per evaluation step (of each process with use_fleet)",
        minimum=1),
    Key("runner.epochs", "int", 1, "training epochs", minimum=1),
    Key("runner.print_interval", "int", 100, "log a progress line every this many batches", minimum=1),
    Key("runner.recalibration_samples", "int", 1_000_000,
        "the most training impressions read for the model's recalibration at each epoch's end (every k-th "
        "batch, over all processes), where the model has one (contract recalibrate); its initialisation from "
        "the data (contract initialize) keeps about 100,000 (every k-th batch of a whole pass), or this many if "
        "fewer", minimum=1),
    Key("runner.seed", "int", 2022, "seed of parameter initialisation", minimum=0, maximum=2 ** 32 - 1),
    Key("runner.model_save_path", "path", "output_model",
        "checkpoints go to <model_save_path>/<epoch>/, metrics to <model_save_path>/*_metrics.jsonl"),
    Key("runner.dev_data_dir", "path", None,
        "folder of a validation split (read with infer_reader_path), evaluated after every training epoch: "
        "dev_* figures in train_metrics.jsonl, the best epoch in <model_save_path>/best.json; not with dev_fraction"),
    Key("runner.dev_fraction", "float", 0.0,
        "hold out this fraction (below 0.5) of the training impressions as the validation split, chosen by a hash "
        "of sample_id (the same in every epoch and process, never trained on); 0: none; not with dev_data_dir",
        minimum=0),
    Key("runner.early_stop_patience", "int", None,
        "stop training after this many epochs without improvement of early_stop_metric on the validation split "
        "(needs dev_data_dir or dev_fraction); null: train every epoch, still recording the best", minimum=1),
    Key("runner.early_stop_metric", "str", "loss",
        "figure of the validation split that decides the best epoch: loss, a loss term (*_loss) or logloss_* "
        "(lower is better), auc_* (higher is better)"),
    Key("runner.propensity_file", "path", None,
        "CSV (.gz too) of each training impression's propensity, which the model's counterfactual risks divide by "
        "instead of its own pCTR (then floored and shrunk alike): header with sample_id and propensity, or the pctr "
        "column tools/predict.py writes (propensity wins when both are there); one line per sample_id, every training "
        "sample_id covered, values in (0, 1]; e.g. a separately trained CTR model's predictions on the training "
        "folder (README); training only (a validation split and infer weigh their losses by pCTR); null: the model's "
        "own pCTR"),
    Key("runner.model_init_path", "path", None,
        "checkpoint folder to start from (e.g. output_model/1): parameters, and optimizer state when present"),
    Key("runner.infer_load_path", "path", None, "where infer finds the checkpoints; default: model_save_path"),
    Key("runner.infer_start_epoch", "int", 0, "first checkpoint epoch infer evaluates", minimum=0),
    Key("runner.infer_end_epoch", "int", None,
        "infer evaluates epochs up to this one, exclusive; default: epochs, or the epoch after the last one trained "
        "when <infer_load_path>/best.json says training stopped early"),
    Key("runner.use_inference", "bool", False, "also export an inference model at the end of each epoch"),
    Key("runner.export_checkpoint", "path", None,
        "checkpoint folder tools/export.py exports (e.g. output_model/1); default: the best epoch of "
        "<model_save_path>/best.json when there is one, else <model_save_path>/<epochs - 1>"),
    Key("runner.export_dir", "path", None, "where tools/export.py writes; default: <export_checkpoint>/inference"),
    Key("runner.inference_model_dir", "path", None,
        "exported model tools/predict.py runs; default: <checkpoint>/inference of the best epoch of "
        "<model_save_path>/best.json when there is one, else of <model_save_path>/<epochs - 1>"),
    Key("runner.predict_data_dir", "path", None, "data tools/predict.py scores; default: test_data_dir"),
    Key("runner.predict_output", "path", None,
        "file tools/predict.py writes (sample_id and the model's outputs, CSV); default: "
        "<model_save_path>/predictions.csv"),
    Key("runner.predict_threads", "int", 1, "CPU math threads of the predictor", minimum=1),
    Key("runner.use_visual", "bool", False,
        "also write loss and AUC curves for VisualDL into <model_save_path>/visualDL_log/<train|infer>-<run> "
        "(needs pip install visualdl; view with visualdl --logdir <model_save_path>/visualDL_log)"),
    Key("runner.save_inference_feed_varnames", "str_list", None,
        "PaddleRec's names of the exported inputs; the inputs here are always named after the fields",
        ignored=True),
    Key("runner.save_inference_fetch_varnames", "str_list", None,
        "PaddleRec's names of the exported outputs; the outputs here are named by the model folder's serving.py",
        ignored=True),
    Key("runner.use_auc", "bool", True, "PaddleRec's switch for its bucketed AUC; AUC here is always exact",
        ignored=True),
    Key("runner.auc_num", "int", None, "PaddleRec's number of AUC metrics; the metrics here are fixed",
        ignored=True),
    Key("runner.thread_num", "int", None,
        "PaddleRec's reader threads; parsing here uses one worker process per core", ignored=True),
    Key("runner.reader_type", "str", None,
        "PaddleRec's reader kind (QueueDataset, DataLoader, ...); the reader here is the model folder's RecDataset",
        ignored=True),
    Key("runner.use_xpu", "bool", False, "PaddleRec's Kunlun XPU switch; the device here is the CPU or, with "
        "runner.use_gpu, a CUDA GPU", ignored=True),
    Key("runner.use_npu", "bool", False, "PaddleRec's Ascend NPU switch; the device here is the CPU or, with "
        "runner.use_gpu, a CUDA GPU", ignored=True),
]


def lower_is_better(metric):
    """Whether a smaller value of `metric` (a figure of an evaluation record, e.g. loss, auc_ctr) is
    better: True for loss, a loss term (*_loss) and logloss_*, False for auc_*; None for any other
    figure, which has no direction."""
    if metric == "loss" or metric.endswith("_loss") or metric.startswith("logloss_"):
        return True
    if metric.startswith("auc_"):
        return False
    return None


def validation_split(config):
    """The key that gives the config's validation split (runner.dev_data_dir or runner.dev_fraction),
    or None when there is none."""
    if config["runner.dev_data_dir"] is not None:
        return "runner.dev_data_dir"
    return "runner.dev_fraction" if config["runner.dev_fraction"] else None


def validate(config):
    """The checks of the runner's keys that involve several keys or a value's form; raises ConfigError."""
    if config["runner.dev_data_dir"] is not None and config["runner.dev_fraction"]:
        raise ConfigError(f"{config.path}: runner.dev_data_dir and runner.dev_fraction are both set: the validation "
                          f"split is either a folder or a fraction of the training impressions, set one")
    if config["runner.dev_fraction"] >= DEV_FRACTION_LIMIT:
        raise ConfigError(f"{config.path}: runner.dev_fraction must be below {DEV_FRACTION_LIMIT}, "
                          f"got {config['runner.dev_fraction']}")
    if config["runner.early_stop_patience"] is not None and validation_split(config) is None:
        raise ConfigError(f"{config.path}: runner.early_stop_patience needs a validation split: set "
                          f"runner.dev_data_dir or runner.dev_fraction")
    metric = config["runner.early_stop_metric"]
    if lower_is_better(metric) is None:
        raise ConfigError(f"{config.path}: runner.early_stop_metric must be loss, a loss term (*_loss), logloss_* "
                          f"or auc_*, got {metric!r}")
