#!/usr/bin/env python3
"""Speed and peak memory of datasets/ali_ccp/preprocess.py on raw files of Ali-CCP's shape.

    python benchmarks/preprocess_speed.py [--rows 100000] [--rows-per-user 58] [--keep]

Writes a training skeleton of --rows rows grouped by common row (Ali-CCP has ~58 skeleton
rows per common row), a common-feature file whose rows carry the user fields with 100-330 ids in
each of the four behaviour fields (~880 tokens per joined row, as in PaddleRec's published
lines), and a test pair a tenth of that size; then runs the command as a user would (its own
process), once writing every id and once with --max-len 3, and prints rows per second (skeleton
rows over the wall time of the whole run: both training passes and the test split) and the
process's peak resident memory.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "datasets", "ali_ccp", "preprocess.py")

USER_FIELDS = {"121": 98, "122": 14, "124": 3, "125": 8, "127": 4, "128": 3, "129": 5}  # single ids
BEHAVIOUR_FIELDS = {"109_14": 12_000, "110_14": 150_000, "127_14": 120_000, "150_14": 180_000}
ITEM_FIELDS = {"205": 500_000, "206": 12_000, "207": 150_000, "216": 120_000, "301": 3}
CROSS_FIELDS = {"508": 200_000, "509": 200_000, "702": 200_000, "853": 200_000}


def zipf_ids(rng, space, size, base):
    """Ids in [base, base + space) with a long tail, as raw Ali-CCP ids are."""
    return base + (rng.zipf(1.3, size) - 1) % space


def items(pairs):
    return "\x01".join(f"{field}\x02{feat}\x03{value}" for field, feat, value in pairs)


def write_split(folder, name, n_rows, rows_per_user, rng, first_sample_id):
    skeleton = os.path.join(folder, f"sample_skeleton_{name}.csv")
    common = os.path.join(folder, f"common_features_{name}.csv")
    tokens = 0
    with open(skeleton, "w") as sk, open(common, "w") as cf:
        sample_id, user = first_sample_id, 0
        while sample_id < first_sample_id + n_rows:
            user += 1
            cidx = f"{rng.integers(1 << 60):016x}"
            pairs = [("101", 1_000_000 + int(rng.integers(400_000)), "1.0")]
            pairs += [(f, 2_000_000 + int(rng.integers(k)), "1.0") for f, k in USER_FIELDS.items()]
            for base, (f, space) in enumerate(BEHAVIOUR_FIELDS.items(), 3):
                n = int(rng.integers(100, 331))
                values = np.round(np.log1p(rng.integers(1, 40, n)), 6)
                pairs += [(f, feat, value) for feat, value in zip(zipf_ids(rng, space, n, base * 1_000_000).tolist(),
                                                                    values.tolist())]
            cf.write(f"{cidx},{len(pairs)},{items(pairs)}\n")
            group = min(max(1, int(rng.poisson(rows_per_user))), first_sample_id + n_rows - sample_id)
            for _ in range(group):
                click = int(rng.random() < 0.04)
                buy = int(click and rng.random() < 0.05) if rng.random() > 1e-4 else 1  # a few buy-without-click
                own = [(f, int(zipf_ids(rng, space, 1, 10_000_000 + 1_000_000 * i)[0]), "1.0")
                       for i, (f, space) in enumerate(ITEM_FIELDS.items())]
                own += [("210", int(x), "1.0") for x in zipf_ids(rng, 50_000, int(rng.integers(1, 6)), 20_000_000)]
                for i, (f, space) in enumerate(CROSS_FIELDS.items()):
                    own += [(f, int(x), "1.0") for x in
                            zipf_ids(rng, space, int(rng.integers(0, 3)), 30_000_000 + 1_000_000 * i)]
                sk.write(f"{sample_id},{click},{buy},{cidx},{len(own)},{items(own)}\n")
                tokens += len(own) + len(pairs)
                sample_id += 1
    return skeleton, common, tokens / n_rows, user


def measure(command, work):
    """(wall seconds, peak resident MiB, stdout) of one run of `command` in its own process."""
    with open(os.path.join(work, "stdout"), "w+") as out, open(os.path.join(work, "stderr"), "w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            sys.exit(f"preprocess.py failed:\n{err.read()}")
        return elapsed, usage.ru_maxrss / 1024, out.read()  # ru_maxrss is in KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="training skeleton rows")
    parser.add_argument("--rows-per-user", type=float, default=58, help="mean skeleton rows per common row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated files and the output")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    work = tempfile.mkdtemp(prefix="preprocess_speed.")
    try:
        start = time.perf_counter()
        train = write_split(work, "train", args.rows, args.rows_per_user, rng, 1)
        test = write_split(work, "test", max(args.rows // 10, 1), args.rows_per_user, rng, args.rows + 1)
        size = sum(os.path.getsize(p) for p in (*train[:2], *test[:2]))
        print(f"generated in {time.perf_counter() - start:.0f} s: {args.rows:,} training and {args.rows // 10:,} test "
              f"skeleton rows, {train[3]:,} + {test[3]:,} common rows, {train[2]:.0f} tokens per joined row, "
              f"{size / 2**20:,.0f} MiB of raw files")
        skeleton_rows = args.rows + args.rows // 10
        for extra in ([], ["--max-len", "3"]):
            out = os.path.join(work, "out")
            command = [sys.executable, TOOL, "--skeleton", train[0], "--common", train[1], "--test-skeleton", test[0],
                       "--test-common", test[1], "--out", out, "--force", *extra]
            elapsed, peak, stdout = measure(command, work)
            written = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(out) for f in files)
            print(f"\n$ preprocess.py ... {' '.join(extra)}")
            print("\n".join(line for line in stdout.splitlines() if " rows in " in line))
            print(f"{skeleton_rows:,} skeleton rows ({args.rows:,} read twice) in {elapsed:.1f} s: "
                  f"{skeleton_rows / elapsed:,.0f} rows/s end to end, {written / 2**20:,.0f} MiB written, "
                  f"peak memory {peak:,.0f} MiB")
        if args.keep:
            print(f"files kept in {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
