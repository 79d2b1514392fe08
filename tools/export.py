"""Export the inference model of a checkpoint: python tools/export.py -m CONFIG [-o runner.export_checkpoint=DIR runner.export_dir=DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli  # noqa: E402  (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import serving
    serving.export_checkpoint(config, package)


if __name__ == "__main__":
    cli.run(main, __doc__)
