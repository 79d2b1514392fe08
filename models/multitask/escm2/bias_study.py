"""The bias study: ESCM2's CVR debiasing measured against the truth, on synthetic data whose true
CTR and CVR are known for every impression, clicked or not (tools/bias_study.py).

For each selection-bias level the generator writes one data set; every variant (counterfact
mode x backbone) is trained on it with several seeds and evaluated on the held-out split
against the truth: the usual metrics, CVR AUC over *all* impressions against the potential
conversion, and the inherent estimation bias IEB = mean pCVR - mean true CVR over all
impressions. Results: results.jsonl (one line per run), results.md (mean +- std over seeds),
cvr_by_ctr_decile.png.
"""
import csv
import gzip
import itertools
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np

from rectools import checkpoint, loops, model_loader
from rectools.config import REQUIRED, Key, load_config
from rectools.errors import ConfigError
from rectools.metrics import auc, ctr_cvr_report, logloss

from .config_schema import BACKBONES, COUNTERFACT_MODES

log = logging.getLogger("rectools")
# the generator of the synthetic data with its truth, run as a command in a process of its own
GENERATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "datasets", "synthetic",
                         "generate.py")

SUITE_KEYS = [
    Key("suite.model_config", "path", REQUIRED, "model config every run starts from"),
    Key("suite.overrides", "str_list", [], "key=value overrides of the model config for every run"),
    Key("suite.output_dir", "path", "bias_study_output", "where data, runs, results and the figure go"),
    Key("suite.modes", "str_list", list(COUNTERFACT_MODES), "counterfact modes compared", choices=COUNTERFACT_MODES),
    *[Key(f"suite.mode_overrides.{mode}", "str_list", [], f"further key=value overrides of the {mode} runs")
      for mode in COUNTERFACT_MODES],
    Key("suite.backbones", "str_list", ["mlp"], "backbones compared", choices=BACKBONES),
    Key("suite.seeds", "int_list", [1, 2, 3], "training seeds of each variant"),
    Key("suite.selection_bias", "float_list", [0.0, 0.5, 0.9],
        "generator's correlation of the CVR and CTR logits: one data set per value"),
    Key("suite.workers", "int", 2, "runs trained at once (one process each)", minimum=1),
    Key("suite.graph_mode", "str", "dygraph", "graph mode of every run, as tools/trainer.py or tools/static_trainer.py",
        choices=("dygraph", "static")),
    Key("data.train", "int", 100000, "training impressions per data set", minimum=1),
    Key("data.test", "int", 50000, "held-out impressions per data set", minimum=1),
    Key("data.seed", "int", 0, "generator seed (the same for every bias level)"),
    Key("data.ctr", "float", 0.04, "mean true CTR"),
    Key("data.cvr", "float", 0.05, "conversion rate among clicks"),
    Key("data.extra_args", "str_list", [], "further generate.py arguments, e.g. [--users, '500']"),
]

METRICS = ["auc_ctr", "auc_cvr", "auc_cvr_all", "auc_ctcvr", "ieb", "ieb_rel", "logloss_true_cvr"]
HEADERS = {"auc_ctr": "CTR AUC", "auc_cvr": "CVR AUC (clicked)", "auc_cvr_all": "CVR AUC (all, true)",
           "auc_ctcvr": "CTCVR AUC", "ieb": "IEB", "ieb_rel": "IEB rel.", "logloss_true_cvr": "pCVR log-loss vs true"}


def load_suite(path, overrides=()):
    suite = load_config(path, overrides, SUITE_KEYS)
    try:
        import matplotlib  # noqa: F401  the figure is drawn after all the training: fail now, not then
    except ImportError:
        raise ConfigError("the bias study draws its figure with matplotlib: pip install -e '.[bench]'") from None
    return suite


def make_data(suite, bias):
    folder = os.path.join(suite["suite.output_dir"], "data", f"bias-{bias:g}")
    args = ["--train", str(suite["data.train"]), "--test", str(suite["data.test"]), "--seed", str(suite["data.seed"]),
            "--selection-bias", str(bias), "--ctr", str(suite["data.ctr"]), "--cvr", str(suite["data.cvr"]),
            *suite["data.extra_args"]]
    stamp = os.path.join(folder, "arguments.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == args:
                return folder
    subprocess.run([sys.executable, GENERATOR, "--out", os.path.join(folder, "synthetic"), "--force", *args],
                   check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        json.dump(args, f)
    return folder


def read_truth(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    columns = rows[0]
    table = np.array(rows[1:], dtype=np.float64)
    return {name: table[:, i] for i, name in enumerate(columns)}


def truth_metrics(pctr, pcvr, click, buy, truth):
    """The benchmark's figures for one run's test predictions: the usual protocol, plus the
    entire space against the truth."""
    usual = ctr_cvr_report(pctr, pcvr, click, buy)
    true_cvr = truth["true_cvr"]
    ieb = float(pcvr.mean() - true_cvr.mean())
    return {
        **{k: usual[k] for k in ("auc_ctr", "auc_cvr", "auc_ctcvr")},
        "auc_cvr_all": auc(truth["potential_conversion"], pcvr),
        "ieb": ieb, "ieb_rel": ieb / float(true_cvr.mean()),
        "logloss_true_cvr": logloss(true_cvr, pcvr),  # soft labels: cross-entropy against the true CVR
        "mean_pcvr": float(pcvr.mean()), "mean_true_cvr": float(true_cvr.mean()),
    }


def decile_curve(true_ctr, values):
    """Mean of `values` within each decile of the true CTR."""
    edges = np.quantile(true_ctr, np.linspace(0, 1, 11)[1:-1])
    bins = np.searchsorted(edges, true_ctr, side="right")
    return [float(values[bins == b].mean()) for b in range(10)]


def run_one(job):
    """Train one variant with one seed and evaluate it against the truth, through the same loops as
    tools/trainer.py and tools/infer.py (runs in a worker process)."""
    logging.getLogger().setLevel(logging.WARNING)
    data = os.path.join(job["data"], "synthetic")
    with open(os.path.join(data, "meta.json")) as f:
        meta = json.load(f)
    overrides = [*job["overrides"], f"runner.train_data_dir={data}/train", f"runner.test_data_dir={data}/test",
                 f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}",
                 f"runner.counterfact_mode={job['mode']}", f"hyper_parameters.backbone={job['backbone']}",
                 f"runner.seed={job['seed']}", f"runner.model_save_path={job['run_dir']}",
                 "runner.use_inference=False"]
    config, package = model_loader.load(job["model_config"], overrides)
    config["runner.infer_start_epoch"] = config["runner.epochs"] - 1  # the trained model only
    config["runner.infer_end_epoch"] = config["runner.epochs"]
    start = time.perf_counter()
    loops.train(config, package, job["mode_graph"])
    ((_, predictions),) = loops.infer(config, package, job["mode_graph"])
    truth = read_truth(os.path.join(data, "truth", next(n for n in os.listdir(os.path.join(data, "truth"))
                                                        if n.startswith("test"))))
    if not np.array_equal(predictions["sample_id"], truth["sample_id"].astype(np.int64)):
        raise RuntimeError(f"test predictions and {data}/truth are not aligned")
    result = {k: job[k] for k in ("bias", "mode", "backbone", "seed")}
    result.update(truth_metrics(predictions["pctr"], predictions["pcvr"], predictions["click"], predictions["buy"],
                                truth))
    result["pcvr_by_ctr_decile"] = decile_curve(truth["true_ctr"], predictions["pcvr"])
    result["true_cvr_by_ctr_decile"] = decile_curve(truth["true_ctr"], truth["true_cvr"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def run(suite):
    out = suite["suite.output_dir"]
    os.makedirs(out, exist_ok=True)
    jobs = []
    for bias in suite["suite.selection_bias"]:
        folder = make_data(suite, bias)
        for backbone, mode, seed in itertools.product(suite["suite.backbones"], suite["suite.modes"],
                                                      suite["suite.seeds"]):
            overrides = suite["suite.overrides"] + suite.get(f"suite.mode_overrides.{mode}", [])
            run_dir = os.path.join(out, "runs", f"bias-{bias:g}", f"{backbone}-{mode}-seed{seed}")
            jobs.append({"bias": bias, "mode": mode, "backbone": backbone, "seed": seed, "data": folder,
                         "model_config": suite["suite.model_config"], "overrides": overrides,
                         "run_dir": run_dir, "mode_graph": suite["suite.graph_mode"]})
    log.info("%d runs on %d worker(s)", len(jobs), suite["suite.workers"])
    results = []
    with checkpoint.atomic_file(os.path.join(out, "results.jsonl")) as f:  # a failed suite keeps the old results
        for result in _map(run_one, jobs, suite["suite.workers"]):
            results.append(result)
            f.write(json.dumps(result) + "\n")
            f.flush()
            log.info("bias %g %s %s seed %d: IEB %+.4f, CVR AUC all %.4f (%d/%d, %.0fs)", result["bias"],
                     result["backbone"], result["mode"], result["seed"], result["ieb"], result["auc_cvr_all"],
                     len(results), len(jobs), result["seconds"])
    table = markdown(results, suite)
    with checkpoint.atomic_file(os.path.join(out, "results.md")) as f:
        f.write(table)
    figure(results, os.path.join(out, "cvr_by_ctr_decile.png"))
    print(table)
    return results


def _map(function, jobs, workers):
    if workers == 1:
        yield from map(function, jobs)
        return
    # a worker imports the model folder by its path: this module's package name means nothing there
    calls = [(os.path.dirname(os.path.abspath(__file__)), __name__.rsplit(".", 1)[1], function.__name__, job)
             for job in jobs]
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        yield from pool.imap(model_loader.call_model_function, calls)
        pool.close()  # let workers exit on their own: terminate() would kill them mid-shutdown
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def summarize(results):
    """(bias, backbone, mode) -> {metric: (mean, std)} over seeds, in the order runs were listed."""
    groups = {}
    for r in results:
        groups.setdefault((r["bias"], r["backbone"], r["mode"]), []).append(r)
    return {key: {m: (float(np.mean([r[m] for r in runs])), float(np.std([r[m] for r in runs])))
                  for m in METRICS + ["mean_pcvr", "mean_true_cvr"]} | {"seeds": len(runs)}
            for key, runs in groups.items()}


def markdown(results, suite):
    rows = ["| selection bias | backbone | mode | " + " | ".join(HEADERS[m] for m in METRICS) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for (bias, backbone, mode), stats in summarize(results).items():
        cells = []
        for m in METRICS:
            mean, std = stats[m]
            cells.append(f"{mean:+.1%} ± {std:.1%}" if m == "ieb_rel" else
                         f"{mean:+.4f} ± {std:.4f}" if m == "ieb" else f"{mean:.4f} ± {std:.4f}")
        rows.append(f"| {bias:g} | {backbone} | {mode} | " + " | ".join(cells) + " |")
    seeds = len(suite["suite.seeds"])
    note = (f"\nMean ± std over {seeds} seed(s); {suite['data.train']} training and {suite['data.test']} test "
            f"impressions per bias level, CTR {suite['data.ctr']:g}, CVR among clicks {suite['data.cvr']:g}. "
            "IEB = mean pCVR - mean true CVR over all test impressions (relative: / mean true CVR).\n")
    return "\n".join(rows) + "\n" + note


def figure(results, path):
    """Mean predicted vs true CVR by decile of the true CTR, one panel per bias level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    biases = sorted({r["bias"] for r in results})
    fig, axes = plt.subplots(1, len(biases), figsize=(5 * len(biases), 4), squeeze=False, sharey=True)
    for ax, bias in zip(axes[0], biases):
        runs = [r for r in results if r["bias"] == bias]
        ax.plot(range(1, 11), np.mean([r["true_cvr_by_ctr_decile"] for r in runs], axis=0), "k-", lw=2.5,
                label="true CVR")
        for backbone, mode in dict.fromkeys((r["backbone"], r["mode"]) for r in runs):
            curves = [r["pcvr_by_ctr_decile"] for r in runs if (r["backbone"], r["mode"]) == (backbone, mode)]
            ax.plot(range(1, 11), np.mean(curves, axis=0), marker="o", ms=3,
                    ls="-" if backbone == "mlp" else "--", label=f"{mode} ({backbone})")
        ax.set_title(f"selection bias {bias:g}")
        ax.set_xlabel("decile of true CTR")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean CVR over all impressions")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
