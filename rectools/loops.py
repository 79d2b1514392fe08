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

from . import checkpoint, early_stopping, propensity, records
from .data import epoch_batches, no_samples, reader, rows
from .distributed import LOCAL
from .engines import ENGINES
from .errors import ConfigError, UserError
from .metrics import Accumulator
from .progress import Progress, expected_samples, format_metrics, headline, remember_pass

INIT_SAMPLES = 100_000  # the most training impressions the initialisation reads: a base rate needs few

log = logging.getLogger("rectools")


def aucs(values):
    return {k: v for k, v in values.items() if k.startswith("auc")}


def run_epoch(engine, step, dataset, batch_size, epoch, interval, shard=LOCAL.shard, gather=None, group=LOCAL,
              lockstep=False, curves=None, label=None):
    """One pass of `step` (engine.train_step or engine.eval_step) over this shard of `dataset`.

    Returns (record, predictions): the epoch's record (epoch, mean loss terms per sample, seconds,
    ips, and the model's metrics over the gathered predictions) and the predictions themselves, a
    rectools.metrics.Columns (name -> 1-D array, read from a temporary folder; `sample_id`
    included), in batch order. Progress lines show the epoch's mean loss
    terms so far and the AUCs of the batches since the last line; `curves` (rectools.records.Curves)
    gets the loss terms and AUCs of those batches at each line and the epoch's at its end.
    With `lockstep` (training on several processes) the steps run in group.lockstep's rounds; loss
    sums and sample counts are totalled over `group`. `label` starts the progress lines (default
    `epoch: <epoch>`). Raises UserError when no sample was read (by any process).
    """
    metrics = Accumulator()
    progress = Progress(label or f"epoch: {epoch}", interval, expected_samples(dataset, shard))
    sums, at_mark = {}, {}
    batches = epoch_batches(dataset, batch_size, shard)
    for batch, weight in group.lockstep(batches) if lockstep else ((b, None) for b in batches):
        if weight == 0.0:  # a stand-in step of the last round (rectools.distributed): not counted
            step(batch, Accumulator(), weight)
            continue
        terms = step(batch, metrics) if weight is None else step(batch, metrics, weight)
        metrics.add(sample_id=batch["sample_id"])
        size = rows(batch)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value * size
        if progress.due(size):
            batches, samples = progress.span
            window = aucs(engine.summarize_metrics(metrics.arrays(last_rows=samples)))
            if curves is not None:
                curves.add("batch", {**{k: (v - at_mark.get(k, 0.0)) / samples for k, v in sums.items()}, **window},
                           curves.batches + progress.batches)
            progress.line(headline({**{k: v / progress.samples for k, v in sums.items()}, **window}))
            at_mark = dict(sums)
    remember_pass(dataset, shard, progress.samples)
    seconds = progress.seconds()
    samples = progress.samples
    if group.size > 1:
        sums = group.sum({**sums, "": samples})
        samples = sums.pop("")
    if not samples:
        raise no_samples(dataset)
    means = {name: total / samples for name, total in sums.items()}
    predictions = metrics.arrays()
    if gather is not None:
        predictions = gather(predictions)
    record = {"epoch": epoch, **means, "seconds": round(seconds, 3),
              "ips": round(samples / seconds, 1) if seconds > 0 else None,
              **engine.summarize_metrics(predictions)}
    if curves is not None:
        curves.batches += progress.batches
        curves.add("epoch", {**means, **aucs(record)}, epoch)
    return record, predictions


def log_record(prefix, record):
    """Log the epoch's line (record_line)."""
    log.info(record_line(prefix, record))


def record_line(prefix, record):
    """The epoch's line: its loss, AUCs and throughput; every other figure is in the records file."""
    figures = headline(record)
    line = ", ".join([f"{prefix}: {record['epoch']}" + (" done" if prefix == "epoch" else "")]
                     + ([format_metrics(figures)] if figures else []))
    if record.get("ips") is not None:
        line += f", ips: {record['ips']:.1f} ins/s"
    undefined = [k for k, v in figures.items() if k.startswith("auc") and isinstance(v, float) and math.isnan(v)]
    if undefined:
        line += f"; {', '.join(undefined)} undefined: {'its' if len(undefined) == 1 else 'their'} labels hold one class only"
    return line


def curves_for(config, kind, run):
    """runner.use_visual's Curves in <model_save_path>/visualDL_log/<kind>-<run>, or None."""
    if not config["runner.use_visual"]:
        return None
    return records.Curves(os.path.join(config["runner.model_save_path"], records.VISUAL_DIR, f"{kind}-{run}"))


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


def _prepare(config, package, mode, group, shard, gather, train, dataset=None):
    """(dataset, engine, batch size, shard, gather) of a training or evaluation run: the data of
    train_data_dir or test_data_dir (unless `dataset` is given), the engine of `mode`, and the
    seams defaulting to `group`'s."""
    data_key, reader_key, size_key = (("runner.train_data_dir", "runner.train_reader_path", "runner.train_batch_size")
                                      if train else
                                      ("runner.test_data_dir", "runner.infer_reader_path", "runner.infer_batch_size"))
    if dataset is None:
        dataset = reader(config, package, data_key, reader_key)
    batch_size = config[size_key]
    engine = ENGINES[mode](config, package, train=train)
    group.check_data(dataset.file_list)
    return (dataset, engine, batch_size, group.shard if shard is None else shard,
            group.gather(batch_size) if gather is None else gather)


def train(config, package, mode="dygraph", shard=None, gather=None, group=LOCAL, dataset=None):
    """tools/trainer.py and tools/static_trainer.py: runner.epochs epochs from runner.model_init_path
    (or from scratch), a checkpoint and a train_metrics.jsonl record per epoch (rectools.records: an
    epoch's line is replaced only once its new checkpoint is in place). Returns the records.
    `dataset`: the training data (a contract.Reader); by default the config's reader of train_data_dir.

    With a validation split (runner.dev_data_dir or runner.dev_fraction, rectools.early_stopping)
    each epoch's model is evaluated on it before its checkpoint is saved: the record gains the
    split's figures (dev_loss, dev_auc_ctr, ...) and `best_epoch`, <model_save_path>/best.json
    names the best epoch, and with runner.early_stop_patience training stops once that many epochs
    in a row brought no improvement (a resumed run counts on from the records). A run without a
    split removes a best.json when it saves its first epoch.

    shard and gather default to `group`'s; with several processes every rank trains and returns
    the same records, rank 0 alone writes them, and the ranks' parameters are checked to be
    identical after each epoch. The validation pass always uses `group`'s seams."""
    config.require("runner.train_data_dir", by="the trainer")
    dataset, engine, batch_size, shard, gather = _prepare(config, package, mode, group, shard, gather, train=True,
                                                          dataset=dataset)
    dataset, dev = early_stopping.splits(config, package, dataset)
    dataset = propensity.attach(config, dataset)  # the training side only: a validation split is judged as infer is
    if dev is not None and dev.file_list != dataset.file_list:  # a held-out split reads the files checked already
        group.check_data(dev.file_list)
    save_root = output_folder(config, claim=group.main)  # first: it recovers an epoch a killed run was replacing
    group.barrier()  # the others read model_init_path once rank 0 has recovered the folder
    first_epoch = 0
    if config["runner.model_init_path"]:
        first_epoch = checkpoint.load_checkpoint(engine, config["runner.model_init_path"],
                                                 "runner.model_init_path", True, dataset.layout()) + 1
        log.info("resuming from %s (epoch %d)", config["runner.model_init_path"], first_epoch - 1)
    else:
        initialize(config, engine, dataset, batch_size, shard, gather, group)
    metrics_file = os.path.join(save_root, records.TRAIN)
    run = records.new_run()
    curves, earlier = None, []
    if group.main:
        records.recover(metrics_file, save_root)  # a line a stopped run did not write
        curves = curves_for(config, "train", run)
        # A run from epoch k leaves what is there until it replaces it: an epoch's checkpoint and its line
        # are replaced together, when this run saves that epoch; later epochs of an earlier run stay.
        earlier = sorted(e for e in records.saved_manifests(save_root) if e >= first_epoch)
    if earlier:
        log.info("%s holds checkpoints of epochs %s from an earlier run: each, with its line in %s, is "
                 "replaced when this run saves that epoch", save_root, _epochs(earlier), records.TRAIN)
    tracker = _tracker(config, dev, metrics_file, first_epoch, group)
    end = config["runner.epochs"]
    if first_epoch >= end:
        log.info("checkpoint of epoch %d already reaches runner.epochs=%d: nothing to train", first_epoch - 1, end)
    elif tracker is not None and tracker.stopped:
        end = first_epoch
        log.info("early stop after epoch %d (%s): %s; nothing to train (raise runner.early_stop_patience, or set "
                 "it to null, to train on)", tracker.last_epoch, records.TRAIN, tracker.best_text())
    export = None
    if config["runner.use_inference"]:
        from .serving import export as export_model
        export = lambda params, folder: export_model(config, package, params,  # noqa: E731
                                                     os.path.join(folder, checkpoint.INFERENCE_DIR), dataset.layout())
    done = []
    for epoch in range(first_epoch, end):
        record, _ = run_epoch(engine, engine.train_step, dataset, batch_size, epoch, config["runner.print_interval"],
                              shard, gather, group, lockstep=True, curves=curves)
        record = {"epoch": epoch, "run": run, **record}
        log_record("epoch", record)
        if not math.isfinite(record["loss"]):
            raise UserError(f"epoch {epoch}: the training loss is {record['loss']}; no checkpoint saved "
                            f"(a lower hyper_parameters.optimizer.learning_rate may help)")
        recalibrate(config, engine, dataset, batch_size, shard, gather, group)  # training data: the split stays unseen
        if group.size > 1:
            log.info("parameters identical on all %d processes (sha256 %s)", group.size,
                     group.check_parameters(engine.parameters())[:16])
        if tracker is not None:
            record = _validate(engine, dev, record, config, group, tracker, curves)
        if group.main:
            saved = checkpoint.save(save_root, epoch,
                                    lambda folder: checkpoint.write_checkpoint(engine, folder, export),
                                    mode=engine.mode, run=run, record=records.clean(record), layout=dataset.layout())
            records.put(metrics_file, record)
            log.info("saved checkpoint %s", saved)  # once its line is in the records too
            _note_best(save_root, tracker, first_save=epoch == first_epoch)
        done.append(record)
        if tracker is not None and _agreed_stop(tracker, group):
            log.info("early stop after epoch %d: %s, no improvement in the %d epoch(s) since", epoch,
                     tracker.best_text(), tracker.stale)
            end = epoch + 1
            break
    _closing_lines(config, earlier, end, tracker if done else None, save_root, run)
    if curves is not None:
        curves.close()
    return done


def training_sample(dataset, batch_size, shard, samples, group):
    """The batches of this shard of the training data that the model's recalibration reads: every
    k-th batch, k so that about `samples` (whole batches, up to one more per process) are read by
    all processes together, from the size of the previous pass (or the reader's size()); while
    neither is known, its first batches up to that number. k is the same on every process of
    `group` (the largest of theirs: their shares of the data differ by up to a batch), so that
    their samples fit the shard rule when gathered."""
    limit = max(1, samples // shard.count)  # this process's share
    expected = expected_samples(dataset, shard)
    every = 1 if expected is None else max(1, math.ceil(expected / limit))
    if group.size > 1:
        every = max(group.all_gather(every))
    read = 0
    for number, batch in enumerate(epoch_batches(dataset, batch_size, shard)):
        if read >= limit:
            break
        if number % every == 0:
            yield batch
            read += rows(batch)


def spread_sample(dataset, batch_size, shard, samples, group):
    """The one-dimensional numeric columns (labels, sample ids) of every k-th batch of this shard
    over a whole pass of the training data, k the smallest power of 2 that keeps at most
    ceil(samples / (processes x batch_size)) batches a process: the stride doubles whenever the
    batches kept exceed that (every 2k-th batch is among every k-th), so the sample depends on the
    data alone, not on its order or on what is cached. k is the largest of the processes' (their
    shares differ by up to a batch), so that their samples fit the shard rule when gathered.
    Returns an Accumulator of the kept rows."""
    limit = max(1, math.ceil(samples / (shard.count * batch_size)))
    stride, kept = 1, []
    for number, batch in enumerate(epoch_batches(dataset, batch_size, shard)):
        if number % stride:
            continue
        kept.append((number, {k: v for k, v in batch.items()
                              if getattr(v, "ndim", None) == 1 and v.dtype.kind in "biuf"}))
        if len(kept) > limit:
            stride *= 2
            kept = [(n, b) for n, b in kept if n % stride == 0]
    if group.size > 1:
        stride = max(group.all_gather(stride))
    sample = Accumulator()
    for number, columns in kept:
        if number % stride == 0:
            sample.add(**columns)
    return sample


def initialize(config, engine, dataset, batch_size, shard, gather, group):
    """The model's data-dependent initialisation (contract initialize), when it has one, before the
    first step of a run from scratch: given the spread_sample of about INIT_SAMPLES (or
    runner.recalibration_samples, if fewer) impressions, gathered from every process so that each
    sets the same parameters. It reads a whole pass of the training data (the first writes the
    parse cache, which epoch 0 then reads). Training data without samples is left to the epoch,
    which says so."""
    if engine.contract.initialize is None:
        return
    log.info("reading the training data once for the model's initialisation")
    samples = min(INIT_SAMPLES, config["runner.recalibration_samples"])
    sample = spread_sample(dataset, batch_size, shard, samples, group)
    _replace_parameters(engine, engine.contract.initialize, sample.arrays(), gather, "the initialisation")


def recalibrate(config, engine, dataset, batch_size, shard, gather, group):
    """The model's recalibration (contract recalibrate), when it has one: the trained model's
    predictions on a training sample of about runner.recalibration_samples impressions
    (training_sample), gathered from every process so that each replaces the same parameters."""
    if engine.contract.recalibrate is None:
        return
    metrics = Accumulator()
    for batch in training_sample(dataset, batch_size, shard, config["runner.recalibration_samples"], group):
        engine.eval_step(batch, metrics)
        metrics.add(sample_id=batch["sample_id"])
    _replace_parameters(engine, engine.contract.recalibrate, metrics.arrays(), gather, "the recalibration")


def _replace_parameters(engine, hook, arrays, gather, what):
    """The parameters the contract's `hook` (initialize or recalibrate) replaces, given this
    process's sample `arrays` gathered from every process, set in the engine. Nothing without
    samples (the epoch that follows says the data has none)."""
    columns = arrays if gather is None else gather(arrays)
    if not columns.rows:
        return
    parameters = engine.parameters()
    changed = hook(columns, parameters)
    if changed:
        engine.set_parameters({**parameters, **changed}, what, "runner.model_dir")


def _closing_lines(config, earlier, end, tracker, save_root, run):
    """The lines that end a training run that trained up to `end` (exclusive): where the best epoch
    of `tracker` is recorded, unless training stopped early (its line said it), and the checkpoints
    of an earlier run that remain in `save_root` from `end` on (`earlier`: their epochs)."""
    stopped_early = end < config["runner.epochs"]
    if tracker is not None and not stopped_early:
        log.info("%s: %s", tracker.best_text(), os.path.join(save_root, early_stopping.BEST))
    left = [e for e in earlier if e >= end]
    if left:
        why = (f"after epoch {end - 1}, where training stopped early" if stopped_early
               else f"past runner.epochs={config['runner.epochs']}")
        log.info("checkpoints of epochs %s (%s) remain in %s from an earlier run, with their lines in %s, whose "
                 "run is not %s", _epochs(left), why, save_root, records.TRAIN, run)


def _tracker(config, dev, metrics_file, first_epoch, group):
    """The early_stopping.Tracker of a run with a validation split `dev` (None without one), counted
    on from the records of the epochs before `first_epoch` (read by rank 0, the same on every rank).
    Logs the split, and where the count stands when it resumes one."""
    if dev is None:
        return None
    tracker = early_stopping.Tracker(config["runner.early_stop_metric"], config["runner.early_stop_patience"])
    found = group.all_gather(records.read(metrics_file) if group.main else None)[0]
    tracker.resume(found, first_epoch, metrics_file)
    split = early_stopping.describe_split(config)
    patience = config["runner.early_stop_patience"]
    line = (f"validation split: {split}; early stop after {patience} epoch(s) without improvement of "
            f"{tracker.figure}" if patience else f"validation split: {split}; no early stop, best by {tracker.figure}")
    if tracker.last_epoch is not None:
        line += f"; from the records: {tracker.best_text()}, {tracker.stale} epoch(s) without improvement since"
    log.info(line)
    return tracker


def _validate(engine, dev, record, config, group, tracker, curves):
    """The training `record` of an epoch with the figures of its model on the validation split
    `dev` (prefixed dev_, through the evaluation step and metrics of infer) and `best_epoch`, after
    `tracker` counted it; logs the split's line. ConfigError when the record lacks
    runner.early_stop_metric."""
    batch_size, epoch = config["runner.infer_batch_size"], record["epoch"]
    evaluated, _ = run_epoch(engine, engine.eval_step, dev, batch_size, epoch, config["runner.print_interval"],
                             group.shard, group.gather(batch_size), group, label=f"dev epoch: {epoch}")
    record = {**record, **early_stopping.dev_figures(evaluated)}
    tracker.check(record, config.path)
    tracker.add(epoch, record)
    record["best_epoch"] = tracker.best_epoch
    log.info("%s; %s", record_line("dev epoch", evaluated), tracker.best_text())
    if curves is not None:
        curves.add("epoch", {early_stopping.DEV + k: v for k, v in evaluated.items() if k == "loss" or
                             k.startswith("auc")}, epoch)
    return record


def _note_best(save_root, tracker, first_save):
    """After an epoch's checkpoint and line: best.json rewritten from `tracker`, or, for a run
    without a validation split, removed at its first save (it describes older checkpoints)."""
    if tracker is not None:
        early_stopping.write_best(save_root, tracker)
    elif first_save:
        early_stopping.forget_best(save_root)


def _agreed_stop(tracker, group):
    """Whether training stops now: the tracker's decision, which every rank takes from the same
    gathered figures; RuntimeError if the ranks' decisions differ all the same."""
    decisions = group.all_gather(tracker.stopped)
    if len(set(decisions)) > 1:
        raise RuntimeError(f"the processes disagree on stopping early: {decisions}")
    return decisions[0]


def _epochs(epochs):
    return ", ".join(map(str, epochs))


def _checkpoints_to_evaluate(root, epochs):
    """<root>/<epoch> of each of `epochs`, each a complete checkpoint; a ConfigError
    (runner.infer_load_path) when one is missing, naming the epochs `root` holds and the overrides
    that evaluate them (a run trained for fewer epochs than the config's runner.epochs)."""
    missing = [e for e in epochs if not os.path.isdir(os.path.join(root, str(e)))]
    if missing:
        held = sorted(records.saved_manifests(root)) if os.path.isdir(root) else []
        if held:
            start = f"runner.infer_start_epoch={held[0]} " if held[0] < epochs[0] else ""
            hint = (f"{root} holds epoch(s) {_epochs(held)}: evaluate them with -o {start}runner.infer_end_epoch="
                    f"{held[-1] + 1}, or train up to epoch {missing[-1]} (runner.epochs={missing[-1] + 1})")
        else:
            hint = f"{root} holds no checkpoint: train first (tools/trainer.py with this config)"
        raise ConfigError(f"runner.infer_load_path: checkpoint folder not found: "
                          f"{os.path.join(root, str(missing[0]))}; {hint}")
    return [checkpoint.epoch_folder(root, e, "runner.infer_load_path") for e in epochs]


def infer(config, package, mode="dygraph", shard=None, gather=None, group=LOCAL, keep_predictions=False):
    """tools/infer.py and tools/static_infer.py: evaluates the checkpoints of epochs infer_start_epoch
    .. infer_end_epoch - 1 on test_data_dir, an infer_metrics.jsonl record each (replacing the line of
    an epoch evaluated before; `run` names the training run of the checkpoint evaluated). With a
    best.json in the checkpoints' folder (rectools.early_stopping) a last line names the best epoch,
    and an unset infer_end_epoch stops at the last epoch trained when training stopped early.
    Returns [(record, predictions)] per epoch (see run_epoch; predictions None unless
    `keep_predictions`, since each epoch's stay in the temporary folder while kept). shard and gather default to
    `group`'s: every rank evaluates its shard and returns the metrics and predictions of all; rank
    0 alone writes the records."""
    config.require("runner.test_data_dir", by="infer")
    load_root = config["runner.infer_load_path"] or config["runner.model_save_path"]
    best = early_stopping.read_best(load_root)
    end = config["runner.infer_end_epoch"]
    end = _default_end(config, best) if end is None else end
    epochs = range(config["runner.infer_start_epoch"], end)
    if not epochs:
        raise ConfigError(f"{config.path}: no epochs to evaluate: runner.infer_start_epoch="
                          f"{config['runner.infer_start_epoch']}, runner.infer_end_epoch={end}")
    folders = _checkpoints_to_evaluate(load_root, epochs)  # fail early
    dataset, engine, batch_size, shard, gather = _prepare(config, package, mode, group, shard, gather, train=False)
    metrics_file = os.path.join(output_folder(config), records.INFER) if group.main else None
    curves = curves_for(config, "infer", records.new_run()) if group.main else None
    results = []
    for epoch, folder in zip(epochs, folders):
        checkpoint.load_checkpoint(engine, folder, "runner.infer_load_path", False, dataset.layout())
        record, predictions = run_epoch(engine, engine.eval_step, dataset, batch_size, epoch,
                                        config["runner.print_interval"], shard, gather, group, curves=curves)
        record = {"epoch": epoch, "run": records.checkpoint_run(folder), **record}  # which training run's
        log_record("infer epoch", record)
        for line in engine.contract.diagnose(record):
            log.warning("infer epoch %d: %s", epoch, line)
        if group.main:
            records.put(metrics_file, record)  # an epoch evaluated again replaces its line
        results.append((record, predictions if keep_predictions else None))
        del predictions  # its temporary folder goes now, not when the last epoch is done
    if best is not None:
        log.info("the %s by the validation split%s", early_stopping.best_text(best),
                 "" if best["epoch"] in epochs else ": not among the epochs evaluated")
    if curves is not None:
        curves.close()
    return results


def _default_end(config, best):
    """infer's end epoch when runner.infer_end_epoch is unset: runner.epochs, or the epoch after the
    last one trained when `best` (early_stopping.read_best's) says training stopped early before."""
    end = config["runner.epochs"]
    last = best and best.get("last_epoch")
    if best and best.get("stopped") and type(last) is int and last + 1 < end:
        log.info("runner.infer_end_epoch unset: evaluating up to epoch %d, where training stopped early (%s)",
                 last, best["path"])
        end = last + 1
    return end
