"""Serving a model folder: its inference model exported from a checkpoint (the folder's serving.py
says how), and batch prediction with the exported model through paddle.inference, which streams a
data folder into one CSV line per impression (sample_id, then the model's outputs). Memory stays at
one batch; every output appears whole, under its name, only when complete."""
import contextlib
import json
import logging
import os

import numpy as np
import paddle

from . import checkpoint, disk, early_stopping
from .atomic import atomic_file, atomic_folder
from .data import epoch_batches, no_samples, reader
from .distributed import LOCAL
from .device import dygraph_mode, place
from .engines import dygraph_network
from .errors import ConfigError
from .progress import Progress, expected_samples
from .model_loader import model_module

log = logging.getLogger("rectools")


def serving_module(package):
    return model_module(package, "serving", "runner.model_dir")


LAYOUT = "layout.json"  # beside an export: the reader's id layout it was trained with, when the reader has one
CHECKSUMS = "checksums.json"  # written last into an export: the size and sha256 of each of its other files


def export(config, package, params, out_dir, layout=None):
    """The model folder's inference model of its dygraph net with `params` ({checkpoint name:
    array}), written into out_dir by its serving.export; with `layout` (the reader's id layout of
    the training data, rectools.contract.Reader.layout) also LAYOUT, which predict checks."""
    with dygraph_mode():
        net = dygraph_network(config, package, params)[1]
        serving_module(package).export(net, config, out_dir)
    if layout is not None:
        with open(os.path.join(out_dir, LAYOUT), "w") as f:
            json.dump(layout, f, indent=1)
    sums = checkpoint._checksums(out_dir)
    with open(os.path.join(out_dir, CHECKSUMS), "w") as f:
        json.dump({"checksums": sums}, f, indent=1)


def _rename_outputs(node, names):
    if isinstance(node, dict):
        return {k: _rename_outputs(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename_outputs(v, names) for v in node]
    return names.get(node, node) if isinstance(node, str) else node


def save_inference_model(layer, input_spec, output_names, out_dir, model_file="model.json"):
    """paddle.jit.save of `layer` traced with `input_spec` into out_dir as <model_file> (the program,
    new IR JSON) and model.pdiparams, its outputs renamed from jit's fetch_name_<i> to `output_names`
    (in the order the layer returns them), so that a predictor fetches them by their meaning."""
    static = paddle.jit.to_static(layer, input_spec=input_spec, full_graph=True)
    paddle.jit.save(static, os.path.join(out_dir, os.path.splitext(model_file)[0]))
    path = os.path.join(out_dir, model_file)
    with open(path) as f:
        program = json.load(f)
    program = _rename_outputs(program, {f"fetch_name_{i}": name for i, name in enumerate(output_names)})
    with open(path, "w") as f:
        json.dump(program, f, separators=(",", ":"))


def default_checkpoint(config, key):
    """The default of keys that name a trained checkpoint (`key`, for errors): the best epoch of
    <model_save_path>/best.json when there is one (rectools.early_stopping.read_best; said in a log
    line), else <model_save_path>/<epochs - 1>. ConfigError when that checkpoint is not whole."""
    best = early_stopping.read_best(config["runner.model_save_path"])
    if best is None:
        return checkpoint.epoch_folder(config["runner.model_save_path"], config["runner.epochs"] - 1, key)
    log.info("%s unset: the %s", key, early_stopping.best_text(best))
    return checkpoint.epoch_folder(config["runner.model_save_path"], best["epoch"], key)


def export_checkpoint(config, package):
    """tools/export.py: a checkpoint's inference model, written whole or not at all; by default of
    the best epoch, else of the last (default_checkpoint)."""
    source = config["runner.export_checkpoint"] or default_checkpoint(config, "runner.export_checkpoint")
    layout = checkpoint.manifest(source, "runner.export_checkpoint").get("layout")
    target = config["runner.export_dir"] or os.path.join(source, checkpoint.INFERENCE_DIR)
    serving = serving_module(package)
    if os.path.exists(target) and not set(os.listdir(target)) <= {serving.MODEL, serving.PARAMS, serving.SIGNATURE,
                                                                  LAYOUT, CHECKSUMS}:
        raise ConfigError(f"runner.export_dir: {target} exists and is not an exported model: not replacing it")
    params = checkpoint.load_arrays(os.path.join(source, checkpoint.PARAMS), "runner.export_checkpoint")
    with disk.room(os.path.dirname(os.path.abspath(target)), "the exported model"), atomic_folder(target) as tmp:
        export(config, package, params, tmp, layout)
    log.info("exported %s to %s", source, target)
    return target


def create_predictor(model_dir, serving, config):
    """A paddle.inference predictor of the model exported in `model_dir`, after checking that it was
    exported for what `config` reads (the folder's serving.signature)."""
    import paddle.inference as inference
    key = "runner.inference_model_dir"
    if not os.path.isdir(model_dir):
        raise ConfigError(f"{key}: exported model folder not found: {model_dir}; export one with tools/export.py "
                          f"(a retrained checkpoint holds no export unless runner.use_inference=True)")
    for name in (serving.MODEL, serving.PARAMS, serving.SIGNATURE):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise ConfigError(f"{key}: {model_dir} is not an exported model (no {name}); "
                              f"export one with tools/export.py or runner.use_inference=True")
    check_export(model_dir, key)
    signature_path = os.path.join(model_dir, serving.SIGNATURE)
    try:
        with open(signature_path) as f:
            exported = json.load(f)
    except ValueError as e:
        raise ConfigError(f"{key}: {signature_path} is not readable ({e})") from None
    if not isinstance(exported, dict):
        raise ConfigError(f"{key}: {signature_path} is not readable (not a JSON object)")
    expected = serving.signature(config)
    for field in expected:
        if field in exported and exported[field] != expected[field]:  # an older export may lack a field
            raise ConfigError(f"{key}: {model_dir} was exported for {field}={exported.get(field)}, "
                              f"but the config gives {field}={expected[field]}")
    settings = inference.Config(os.path.join(model_dir, serving.MODEL), os.path.join(model_dir, serving.PARAMS))
    settings.disable_glog_info()  # one line per optimisation pass otherwise
    if config["runner.use_gpu"]:
        gpu = int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])  # paddle.distributed.launch's for this rank
        settings.enable_use_gpu(256, gpu)
    else:
        settings.disable_gpu()
        settings.set_cpu_math_library_num_threads(config["runner.predict_threads"])
    try:
        return inference.create_predictor(settings)
    except RuntimeError as e:  # Paddle's error for a damaged or foreign program or parameter file
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:300]
        raise ConfigError(f"{key}: {model_dir} is not an exported model Paddle can load ({reason}); export it "
                          f"again with tools/export.py") from None


def check_export(model_dir, key):
    """Check the files of an exported model against its CHECKSUMS, whatever path names the folder;
    an export without one (older versions) inside a checkpoint is checked against the checkpoint's
    manifest. A ConfigError naming `key` for a damaged file or an unreadable CHECKSUMS."""
    path = os.path.join(model_dir, CHECKSUMS)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                sums = [(name, int(s["bytes"]), str(s["sha256"])) for name, s in json.load(f)["checksums"].items()]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{key}: {path} is not readable ({e})") from None
        checkpoint.verify(model_dir, sums, key, "exported model")
        return
    parent = os.path.dirname(os.path.abspath(model_dir))
    if os.path.basename(os.path.abspath(model_dir)) == checkpoint.INFERENCE_DIR and \
            os.path.isfile(os.path.join(parent, checkpoint.MANIFEST)):
        checkpoint.manifest(parent, key)


def run_batch(predictor, feeds, outputs):
    """One batch through the predictor: {input name: array} -> [output arrays], flattened."""
    for name, value in feeds.items():
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(value))
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu().reshape(-1) for name in outputs]


def predict(config, package, group=LOCAL):
    """tools/predict.py: runner.predict_data_dir (default test_data_dir) scored by the exported model
    into runner.predict_output (CSV: sample_id, then the folder's serving.OUTPUTS), in input order,
    with progress lines as training's (rectools.loops.Progress). With several processes (`group`,
    rectools.distributed) each scores its shard's batches and rank 0 alone writes the one file,
    receiving the others' rows round by round (Group.in_order)."""
    place(config)  # runner.use_gpu on a build without CUDA: the trainers' one-line error
    serving = serving_module(package)
    model_dir = config["runner.inference_model_dir"] or os.path.join(
        default_checkpoint(config, "runner.inference_model_dir"), checkpoint.INFERENCE_DIR)
    predictor = create_predictor(model_dir, serving, config)
    data_key = "runner.predict_data_dir" if config["runner.predict_data_dir"] else "runner.test_data_dir"
    config.require(data_key, by="predict")
    dataset = reader(config, package, data_key, "runner.infer_reader_path")
    if os.path.isfile(os.path.join(model_dir, LAYOUT)):
        with open(os.path.join(model_dir, LAYOUT)) as f:
            checkpoint.check_layout(json.load(f), dataset.layout(), model_dir, "runner.inference_model_dir")
    output = config["runner.predict_output"] or os.path.join(config["runner.model_save_path"], "predictions.csv")
    if os.path.isdir(output):
        raise ConfigError(f"runner.predict_output: {output} is a folder; name the file to write")
    group.check_data(dataset.file_list)

    def scored():  # this rank's batches: (sample_id int64 [B], [output float32 [B], ...])
        for batch in epoch_batches(dataset, config["runner.infer_batch_size"], group.shard):
            yield batch["sample_id"], run_batch(predictor, serving.inputs(batch, config), serving.OUTPUTS)

    progress = Progress("predict", config["runner.print_interval"], expected_samples(dataset))
    with disk.room(os.path.dirname(os.path.abspath(output)), "the predictions"), \
            atomic_file(output) if group.main else contextlib.nullcontext() as f:
        if group.main:
            f.write(",".join(("sample_id",) + tuple(serving.OUTPUTS)) + "\n")
        for sample_id, values in group.in_order(scored()):  # every rank's batches on rank 0, none on the others
            table = np.empty((len(sample_id), 1 + len(values)), dtype=object)  # int64 ids stay exact
            table[:, 0] = sample_id
            table[:, 1:] = np.column_stack(values)
            np.savetxt(f, table, fmt=["%d"] + ["%.7g"] * len(values), delimiter=",")
            if progress.due(len(table)):
                progress.line({"samples": progress.samples})
        if group.main and not progress.samples:  # as evaluation does; the file, never written, does not appear
            raise no_samples(dataset)
    log.info("wrote %d predictions of %s to %s", progress.samples, model_dir, output)
    return output
