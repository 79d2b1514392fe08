"""Ground-truth CVR debiasing benchmark: python tools/benchmark.py -m configs/benchmark/default.yaml [-o key=value ...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli, cvr_benchmark  # noqa: E402


def main(config_path, overrides):
    cvr_benchmark.run(cvr_benchmark.load_suite(config_path, overrides))


if __name__ == "__main__":
    cli.run(main, __doc__)
