"""Export the inference model of a checkpoint: python tools/export.py -m CONFIG [-o runner.export_checkpoint=DIR runner.export_dir=DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli, model_loader, serving  # noqa: E402


def main(config_path, overrides):
    serving.export_checkpoint(*model_loader.load(config_path, overrides))


if __name__ == "__main__":
    cli.run(main, __doc__)
