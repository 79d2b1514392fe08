"""Training throughput of 1 and 2 processes (runner.use_fleet, paddle.distributed.launch, gloo on CPU)
on the same real-shaped data, measured in one run.

    python benchmarks/distributed_scaling.py [--rows 40000] [--epochs 2] [--out /tmp/escm2-scaling]

Data: `datasets/synthetic/generate.py --shape real` (lines of Ali-CCP's shape, ~900 ids, Ali-CCP's
737946 x 12 table), batch 1024 per process, max_len 3, DR, MLP towers. Each run starts with an
empty parse cache (runner.cache_dir), so epoch 0 parses the text (every process parses all of it
and keeps its batches) and later epochs read the cache. Figures: samples/s as train_metrics.jsonl
records them (every process's samples over rank 0's epoch time, reading included), and the wall
time of the whole command (start-up and checkpoints included). Efficiency = samples/s of N
processes / (N x samples/s of one). Then where a step's time goes, per process, over cached batches:
forward, backward (with DataParallel's gradient exchange when N > 1), the optimizer update, and
the round's flag exchange (rectools.distributed.Group.lockstep; it also absorbs the processes'
skew). The load average is printed before and after: other work on the cores takes from N
processes more than from one. Absolute numbers drift on shared machines; compare rows of one run.
"""
import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "models", "multitask", "escm2", "config.yaml")
TRAINER = os.path.join(REPO, "tools", "trainer.py")
SETTINGS = ["hyper_parameters.sparse_feature_number=737946", "hyper_parameters.max_len=3",
            "runner.train_batch_size=1024", "runner.print_interval=100000", "runner.counterfact_mode=DR",
            "hyper_parameters.backbone=mlp"]


def train(processes, data, out, epochs):
    """(records of train_metrics.jsonl, wall seconds) of one training run on `processes` processes."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    args = ["-m", CONFIG, "-o", f"runner.train_data_dir={data}/train", f"runner.model_save_path={out}/model",
            f"runner.cache_dir={out}/cache", f"runner.epochs={epochs}", *SETTINGS]
    if processes == 1:
        command = [sys.executable, "-u", TRAINER, *args]
    else:
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
                   "--log_dir", f"{out}/log", TRAINER, *args, "runner.use_fleet=True"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    with open(os.path.join(out, "model", "train_metrics.jsonl")) as f:
        return [json.loads(line) for line in f], wall


def step_worker(data, cache, out, steps=12):
    """In each process: ms per step by phase over `steps` of its cached batches (after a warm-up),
    wall time and CPU time of the stepping thread (Paddle computes on it: OMP_NUM_THREADS=1; gloo's
    transfers run on threads of their own); rank 0 writes them to `out` as JSON."""
    from rectools import cli
    cli.mkl_avx2_on_amd()  # as the tools do, before Paddle loads: the steps measured are the trainer's
    from rectools import distributed, engines, model_loader
    from rectools.data import epoch_batches, reader
    from rectools.metrics import Accumulator
    fleet = distributed.launched_processes() > 1
    config, package = model_loader.load(CONFIG, [f"runner.train_data_dir={data}/train", f"runner.cache_dir={cache}",
                                                 f"runner.use_fleet={fleet}", *SETTINGS])
    group = distributed.group(config)
    engine = engines.DygraphEngine(config, package, train=True)
    dataset = reader(config, package, "runner.train_data_dir", "runner.train_reader_path")
    batches = list(itertools.islice(epoch_batches(dataset, 1024, group.shard), steps + 2))
    phases = ("forward", "backward", "optimizer", "flags")
    wall, cpu = dict.fromkeys(phases, 0.0), dict.fromkeys(phases, 0.0)
    for number, batch in enumerate(batches):
        marks = [(time.perf_counter(), time.thread_time())]
        group.holding(True) if group.size > 1 else None
        marks.append((time.perf_counter(), time.thread_time()))
        terms = engine.contract.train_forward(engine.trained, Accumulator(), batch, config)
        marks.append((time.perf_counter(), time.thread_time()))
        terms["loss"].backward()
        marks.append((time.perf_counter(), time.thread_time()))
        engine.optimizer.step()
        engine.optimizer.clear_grad()
        marks.append((time.perf_counter(), time.thread_time()))
        if number >= 2:  # warm-up steps are not counted
            for name, (start, end) in zip(phases, [(1, 2), (2, 3), (3, 4), (0, 1)]):
                wall[name] += marks[end][0] - marks[start][0]
                cpu[name] += marks[end][1] - marks[start][1]
    if group.main:
        steps = len(batches) - 2
        with open(out, "w") as f:
            json.dump({"wall": {k: 1000 * v / steps for k, v in wall.items()},
                       "cpu": {k: 1000 * v / steps for k, v in cpu.items()}}, f)


def step_times(processes, data, out):
    """{"wall" | "cpu": {phase: ms per step}} of rank 0 of `processes` processes (see step_worker)."""
    result_file = os.path.join(out, f"steps-{processes}.json")
    worker = [os.path.abspath(__file__), "--step-worker", data, os.path.join(out, f"run-{processes}", "cache"),
              result_file]
    command = ([sys.executable, *worker] if processes == 1 else
               [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
                "--log_dir", os.path.join(out, f"steps-{processes}-log"), *worker])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    with open(result_file) as f:
        return json.load(f)


def main():
    if sys.argv[1:2] == ["--step-worker"]:
        return step_worker(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40000, help="training lines (default: 40000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run, at least 2 (default: 2)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--out", default="/tmp/escm2-scaling")
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)  # the runs' paths are given with -o, where relative means the config's folder
    data = os.path.join(args.out, f"data-real-{args.rows}")
    if not os.path.isdir(data):
        subprocess.run([sys.executable, os.path.join(REPO, "datasets", "synthetic", "generate.py"), "--shape", "real",
                        "--out", data, "--train", str(args.rows), "--test", "1000", "--seed", "1"], check=True)
    print(f"{args.rows} real-shaped lines, batch 1024 per process, table 737946 x 12, max_len 3, DR, "
          f"{args.epochs} epochs; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("| processes | epoch 0 (parses text), samples/s | later epochs (cache), samples/s | efficiency "
          "(later epochs) | wall time, s |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for n in args.processes:
        records, wall = train(n, data, os.path.join(args.out, f"run-{n}"), max(args.epochs, 2))
        cold, warm = records[0]["ips"], sum(r["ips"] for r in records[1:]) / (len(records) - 1)
        base = base or warm / n
        print(f"| {n} | {cold:,.0f} | {warm:,.0f} | {warm / (n * base):.2f} | {wall:.1f} |", flush=True)
    print("\nms per step of rank 0 (1024 samples per process and step), wall time / CPU time of its main thread:")
    print("| processes | forward | backward (+ gradient exchange) | optimizer | flags and waiting | total |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in args.processes:
        ms = step_times(n, data, args.out)
        cells = [f"{ms['wall'][k]:.1f} / {ms['cpu'][k]:.1f}" for k in ("forward", "backward", "optimizer", "flags")]
        print(f"| {n} | " + " | ".join(cells) + f" | {sum(ms['wall'].values()):.1f} / {sum(ms['cpu'].values()):.1f} |",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
