"""Train a model folder as a static graph: python -u tools/static_trainer.py -m CONFIG [-o key=value ...]"""
from rectools import cli  # (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import distributed, loops
    loops.train(config, package, mode="static", group=distributed.group(config))


if __name__ == "__main__":
    cli.run(main, __doc__)
