"""Evaluate a model folder's checkpoints as a static graph: python -u tools/static_infer.py -m CONFIG [-o key=value ...]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli  # noqa: E402  (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import distributed, loops
    loops.infer(config, package, mode="static", group=distributed.group(config))


if __name__ == "__main__":
    cli.run(main, __doc__)
