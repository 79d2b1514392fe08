"""Throughput and memory of the data path on lines of the real Ali-CCP shape, in one run.

    python benchmarks/data_pipeline.py [--rows 200000] [--big-rows 1000000 | --skip-big] [--out DIR]

For each file size (default 200,000 lines, then 1,000,000 to show that memory does not grow):
1. Lines of the real shape (~880 tokens, datasets/synthetic/generate.py --shape real), made once
   and kept in --out (~12 KB a line: 2.5 GB and 12 GB). Before each measurement the file is read
   once, so that it comes from the page cache as far as memory allows: the figures are parsing
   and training, not the disk.
2. Reader alone (escm_reader.py over datasets/ali_ccp/lines.py, max_len 3, 737946 ids): lines/s of the first
   pass (text, parse workers, cache written) and of a second pass (the cache); and the line-by-line
   reference parser (the reader of the previous version) on the first 20,000 lines, for the ratio.
3. Training end to end, tools/trainer.py as a subprocess, batch 1024, DR, two epochs with a fresh
   cache folder: epoch 0 reads text, epoch 1 the cache; samples/s as the trainer reports them. With
   PaddleRec's MMoE configuration (expert_num 8, expert_size 16, tower_size 8, dim 12) and with the
   config's MLP towers; each with the tools' MKL setting (on an AMD CPU with AVX2 they set
   MKL_DEBUG_CPU_TYPE=5, MKL's AVX2 code; rectools.cli.mkl_avx2_on_amd) and with MKL left to its own
   choice (MKL_DEBUG_CPU_TYPE set empty, which the tools leave alone and MKL ignores).
   Memory: the peak RSS of the trainer process (its own high-water mark), and the peak of the summed
   PSS of the trainer and its parse workers (sampled every 0.1 s; PSS splits shared pages fairly
   between the forked workers and the trainer). The reader's own peak RSS is measured alone too.
   An epoch's predictions (18 bytes an impression on disk) go to a temporary folder and the exact AUC
   ranks them in bounded memory (rectools.metrics), so no figure should grow with the file.
Every figure shares the machine with whatever else runs: compare rows of one run.
"""
import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "models", "multitask", "escm2", "config.yaml")
GENERATOR = os.path.join(REPO, "datasets", "synthetic", "generate.py")
COMMON = ["hyper_parameters.sparse_feature_number=737946", "hyper_parameters.max_len=3",
          "hyper_parameters.sparse_feature_dim=12", "runner.train_batch_size=1024", "runner.epochs=2",
          "runner.print_interval=100000", "runner.counterfact_mode=DR",
          "runner.ctr_prior_init=False"]  # whose pass over the data would parse the text before epoch 0
NETS = {"mmoe": ["hyper_parameters.backbone=mmoe", "hyper_parameters.interaction=none", "hyper_parameters.expert_num=8",
                 "hyper_parameters.expert_size=16",
                 "hyper_parameters.tower_size=8"],
        "mlp": ["hyper_parameters.backbone=mlp"]}
REFERENCE_LINES = 20000


def make_data(out, rows):
    folder = os.path.join(out, f"real-{rows}")
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        start = time.perf_counter()
        subprocess.run([sys.executable, GENERATOR, "--shape", "real", "--out", folder, "--train", str(rows),
                        "--test", "1000", "--seed", "1", "--force"], check=True, stdout=subprocess.DEVNULL)
        print(f"  generated {rows} lines in {time.perf_counter() - start:.0f} s")
    return os.path.join(folder, "train", "part-00000.txt")


def read_through(path):
    """Read the file once, so that the text passes measure parsing rather than the disk: the page
    cache then holds as much of it as memory allows (a 12 GB file on a 24 GB machine: most of it).
    Returns the seconds the read took (seconds per GB near 0.2 when it was cached already)."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(64 << 20)
        while f.readinto(buffer):
            pass
    return time.perf_counter() - start


def reader_figures(path, cache_dir):
    """(text lines/s, cache lines/s, reference lines/s, cache bytes a line, peak RSS MB) of the model's reader on `path`,
    measured in a child process of its own, so that its peak RSS is the reader's alone."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--reader-only", path, cache_dir],
                             stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit("the reader failed")
    return (*json.loads(output), usage.ru_maxrss / 1024)


def reader_only(path, cache_dir):
    from rectools import cache, model_loader
    config, package = model_loader.load(CONFIG, COMMON + [f"runner.cache_dir={cache_dir}"])
    reader = model_loader.model_module(package, "escm_reader", "benchmark")
    shutil.rmtree(cache_dir, ignore_errors=True)
    dataset = reader.RecDataset([path], config)
    speeds = []
    for _ in range(2):  # the text, then the cache the first pass wrote
        start, rows = time.perf_counter(), 0
        for chunk in dataset.chunks():
            rows += len(chunk["click"])
        speeds.append(rows / (time.perf_counter() - start))
    rows_read = rows
    entry_bytes = sum(entry["bytes"] for entry in cache.entries(cache_dir))
    shutil.rmtree(cache_dir, ignore_errors=True)
    from datasets.ali_ccp import line_parser, lines
    reference = line_parser.LineParser(dataset.fields, dataset.max_len, dataset.vocab)
    start, rows = time.perf_counter(), 0
    for first_line, block in lines.read_blocks(path, lines.BLOCK_BYTES, dataset.chunk_lines):
        rows += len(reference.parse(block, path, first_line)[0]["click"])
        if rows >= REFERENCE_LINES:
            break
    speeds.append(rows / (time.perf_counter() - start))
    print(json.dumps([*speeds, entry_bytes / rows_read]))


def _tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def train(data_dir, net, mkl, out):
    """(samples/s of epoch 0 (text) and epoch 1 (cache), peak RSS of the trainer and peak PSS of its
    tree (MB), the MKL code it ran). mkl: "tools" (the tools' setting) or "own" (MKL's choice)."""
    run = os.path.join(out, f"run-{net}-{mkl}")
    shutil.rmtree(run, ignore_errors=True)
    os.makedirs(run)
    env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    if mkl == "own":
        env["MKL_DEBUG_CPU_TYPE"] = ""
    with open(os.path.join(run, "log.txt"), "w") as log:
        child = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "tools", "trainer.py"), "-m", CONFIG, "-o",
                                  f"runner.train_data_dir={data_dir}", f"runner.model_save_path={run}/model",
                                  f"runner.cache_dir={run}/cache", *COMMON, *NETS[net]],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
        peak_pss, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak_pss[0] = max(peak_pss[0], sum(_pss_kb(p) for p in _tree(child.pid)))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    if child.returncode:
        sys.exit(f"trainer failed, see {run}/log.txt")
    with open(os.path.join(run, "model", "train_metrics.jsonl")) as f:
        ips = [json.loads(line)["ips"] for line in f]
    with open(os.path.join(run, "log.txt")) as f:
        code = "AVX2 (set by the tools)" if "MKL_DEBUG_CPU_TYPE=5" in f.read() else "MKL's own choice"
    shutil.rmtree(os.path.join(run, "cache"), ignore_errors=True)
    shutil.rmtree(os.path.join(run, "model"), ignore_errors=True)
    return ips[0], ips[1], usage.ru_maxrss / 1024, peak_pss[0] / 1024, code


def measure(out, rows, nets, mkl_choices=("tools", "own")):
    print(f"\n{rows} lines of the real shape, max_len 3, 737946 ids:")
    path = make_data(out, rows)
    print(f"  the text, {os.path.getsize(path) / 1e9:.1f} GB, read once beforehand in {read_through(path):.0f} s")
    text, cached, reference, line_bytes, reader_rss = reader_figures(path, os.path.join(out, "reader-cache"))
    print(f"  reader, text (first pass, cache written) {text:10.0f} lines/s   (reader alone: peak RSS "
          f"{reader_rss:.0f} MB, its process; parse workers forked from it)")
    print(f"  reader, cache (second pass)              {cached:10.0f} lines/s   ({line_bytes:.0f} bytes a line on "
          f"disk: ids int32, click and buy int8, sample_id int64)")
    print(f"  reference line parser (first {REFERENCE_LINES} lines)  {reference:10.0f} lines/s"
          f"   -> text pass {text / reference:.1f}x")
    print("  training end to end, batch 1024, DR (samples/s; MB):")
    print(f"    {'net':5s} {'MKL code':24s} {'epoch 0 (text)':>15s} {'epoch 1 (cache)':>16s} "
          f"{'peak RSS':>9s} {'peak PSS, all':>14s}")
    for net in nets:
        for mkl in mkl_choices:
            read_through(path)  # what the runs before evicted from the page cache
            cold, warm, rss, pss, code = train(os.path.dirname(path), net, mkl, out)
            print(f"    {net:5s} {code:24s} {cold:15.0f} {warm:16.0f} {rss:9.0f} {pss:14.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--big-rows", type=int, default=1000000, help="the second size, for memory growth")
    parser.add_argument("--skip-big", action="store_true", help="measure --rows only")
    parser.add_argument("--out", default="/tmp/escm2-pipeline", help="data and runs (kept data is reused)")
    parser.add_argument("--reader-only", nargs=2, metavar=("FILE", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the reader's per-file notes are not figures
    if args.reader_only:
        reader_only(*args.reader_only)
        return
    with open("/proc/loadavg") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])} ({os.cpu_count()} cores)")
    measure(args.out, args.rows, ["mmoe", "mlp"])
    if not args.skip_big:
        measure(args.out, args.big_rows, ["mmoe"])
    with open("/proc/loadavg") as f:
        print(f"\nload average at end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
