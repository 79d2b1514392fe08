"""Evaluate a model folder's checkpoints as a static graph: python -u tools/static_infer.py -m CONFIG [-o key=value ...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli, model_loader, runner  # noqa: E402


def main(config_path, overrides):
    runner.infer(*model_loader.load(config_path, overrides), mode="static")


if __name__ == "__main__":
    cli.run(main, __doc__)
