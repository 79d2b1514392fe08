"""Throughput of the graph modes and of the exported predictor, measured in one run.

    python benchmarks/modes_and_serving.py [--rows 200000] [--out /tmp/escm2-bench]

1. Training, end to end (reading text included), one epoch of the same synthetic file with the
   dygraph trainer and the static trainer, batch 1024, Ali-CCP's table size (737946 x 12),
   max_len 3, DR mode: samples/s as each trainer reports it in train_metrics.jsonl.
2. The exported predictor (paddle.inference) at batch 1024 on 1 and 2 threads, for the MLP towers
   and for the MMoE backbone (PaddleRec's net): samples/s over preloaded batches, in this process
   with the tools' MKL setting (rectools.cli.mkl_avx2_on_amd, applied before Paddle loads).
Figures are for comparing rows of one run; absolute numbers drift on shared machines.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "models", "multitask", "escm2", "config.yaml")
ALI_CCP = ["hyper_parameters.sparse_feature_number=737946", "hyper_parameters.max_len=3",
           "runner.train_batch_size=1024", "runner.epochs=1", "runner.print_interval=100000",
           "runner.counterfact_mode=DR"]


def train_ips(tool, data, out, extra):
    result = subprocess.run([sys.executable, "-u", os.path.join(REPO, "tools", tool), "-m", CONFIG, "-o",
                             f"runner.train_data_dir={data}/train", f"runner.model_save_path={out}", *ALI_CCP, *extra],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    with open(os.path.join(out, "train_metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])["ips"]


def predictor_ips(backbone, threads, out, batches=30):
    import paddle
    from rectools import engines, model_loader
    from rectools import serving as rec_serving
    config, package = model_loader.load(CONFIG, ALI_CCP + [f"hyper_parameters.backbone={backbone}",
                                                           f"runner.predict_threads={threads}"])
    serving = model_loader.model_module(package, "serving", "bench")
    folder = os.path.join(out, f"served-{backbone}")
    if not os.path.isdir(folder):
        paddle.seed(0)
        rec_serving.export(config, package, engines.DygraphEngine(config, package, train=False).parameters(), folder)
    predictor = rec_serving.create_predictor(folder, serving, config)
    rng = np.random.default_rng(0)
    feeds = [serving.inputs({"ids": rng.integers(0, 737946, (1024, 23, 3))}, config) for _ in range(batches)]
    for feed in feeds[:3]:  # warm-up
        rec_serving.run_batch(predictor, feed, serving.OUTPUTS)
    start = time.perf_counter()
    for feed in feeds:
        rec_serving.run_batch(predictor, feed, serving.OUTPUTS)
    return 1024 * batches / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--out", default="/tmp/escm2-bench")
    args = parser.parse_args()
    from rectools.cli import mkl_avx2_on_amd
    mkl_avx2_on_amd()  # as the tools do: this process measures the predictor
    data = os.path.join(args.out, f"data-{args.rows}")
    if not os.path.isdir(data):
        subprocess.run([sys.executable, os.path.join(REPO, "datasets", "synthetic", "generate.py"), "--out", data,
                        "--train", str(args.rows), "--test", "1000", "--seed", "1"], check=True)
    print(f"training, one epoch of {args.rows} lines, batch 1024, table 737946 x 12, DR, end to end:")
    for tool in ("trainer.py", "static_trainer.py"):
        for backbone in ("mlp", "mmoe"):
            ips = train_ips(tool, data, os.path.join(args.out, f"{tool}-{backbone}-{time.time_ns()}"),
                            [f"hyper_parameters.backbone={backbone}"])
            print(f"  {tool:18s} {backbone:5s} {ips:10.0f} samples/s")
    print("exported predictor, paddle.inference, batch 1024, 23 fields x 3 ids:")
    for backbone in ("mlp", "mmoe"):
        for threads in (1, 2):
            print(f"  {backbone:5s} {threads} thread(s) {predictor_ips(backbone, threads, args.out):10.0f} samples/s")


if __name__ == "__main__":
    main()
