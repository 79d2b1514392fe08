"""Batch prediction with an exported model through paddle.inference: streams a data folder and
writes one CSV line per impression (sample_id, then the model's outputs). Memory stays at one
batch; the output file appears whole, under its name, only when every line is written."""
import json
import logging
import os

import numpy as np

from . import checkpoint, runner
from .data import batches
from .errors import ConfigError
from .model_loader import model_module

log = logging.getLogger("rectools")


def create_predictor(model_dir, serving, config):
    import paddle.inference as inference
    key = "runner.inference_model_dir"
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{key}: exported model folder not found: {model_dir}")
    for name in (serving.MODEL, serving.PARAMS, serving.SIGNATURE):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise ConfigError(f"{key}: {model_dir} is not an exported model (no {name}); "
                              f"export one with tools/export.py or runner.use_inference=True")
    with open(os.path.join(model_dir, serving.SIGNATURE)) as f:
        exported = json.load(f)
    expected = serving.signature(config)
    for field in expected:
        if exported.get(field) != expected[field]:
            raise ConfigError(f"{key}: {model_dir} was exported for {field}={exported.get(field)}, "
                              f"but the config gives {field}={expected[field]}")
    settings = inference.Config(os.path.join(model_dir, serving.MODEL), os.path.join(model_dir, serving.PARAMS))
    settings.disable_glog_info()  # one line per optimisation pass otherwise
    if config["runner.use_gpu"]:
        settings.enable_use_gpu(256, 0)
    else:
        settings.disable_gpu()
        settings.set_cpu_math_library_num_threads(config["runner.predict_threads"])
    return inference.create_predictor(settings)


def run_batch(predictor, feeds, outputs):
    """One batch through the predictor: {input name: array} -> [output arrays], flattened."""
    for name, value in feeds.items():
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(value))
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu().reshape(-1) for name in outputs]


def predict(config, package):
    serving = model_module(package, "serving", "runner.model_dir")
    model_dir = config["runner.inference_model_dir"] or os.path.join(
        runner.last_epoch_folder(config, "runner.inference_model_dir"), runner.INFERENCE_DIR)
    predictor = create_predictor(model_dir, serving, config)
    data_key = "runner.predict_data_dir" if config["runner.predict_data_dir"] else "runner.test_data_dir"
    config.require(data_key, by="predict")
    dataset = runner.reader(config, package, data_key, "runner.infer_reader_path")
    output = config["runner.predict_output"] or os.path.join(config["runner.model_save_path"], "predictions.csv")
    if os.path.isdir(output):
        raise ConfigError(f"runner.predict_output: {output} is a folder; name the file to write")
    rows = 0
    with checkpoint.atomic_file(output) as f:
        f.write(",".join(("sample_id",) + serving.OUTPUTS) + "\n")
        for batch in batches(dataset.chunks(), config["runner.infer_batch_size"]):
            values = run_batch(predictor, serving.inputs(batch, config), serving.OUTPUTS)
            table = np.empty((len(values[0]), 1 + len(values)), dtype=object)  # int64 ids stay exact
            table[:, 0] = batch["sample_id"]
            table[:, 1:] = np.column_stack(values)
            np.savetxt(f, table, fmt=["%d"] + ["%.7g"] * len(values), delimiter=",")
            rows += len(table)
    log.info("wrote %d predictions of %s to %s", rows, model_dir, output)
    return output
