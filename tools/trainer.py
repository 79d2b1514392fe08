"""Train a model folder in dygraph mode: python -u tools/trainer.py -m CONFIG [-o key=value ...]
Several processes: python -m paddle.distributed.launch --nproc_per_node N tools/trainer.py -m CONFIG -o runner.use_fleet=True"""
from rectools import cli  # (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import distributed, loops
    loops.train(config, package, group=distributed.group(config))


if __name__ == "__main__":
    cli.run(main, __doc__)
