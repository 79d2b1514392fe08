"""Evaluate a model folder's checkpoints in dygraph mode: python -u tools/infer.py -m CONFIG [-o key=value ...]
Several processes: python -m paddle.distributed.launch --nproc_per_node N tools/infer.py -m CONFIG -o runner.use_fleet=True"""
from rectools import cli  # (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import distributed, loops
    loops.infer(config, package, group=distributed.group(config))


if __name__ == "__main__":
    cli.run(main, __doc__)
