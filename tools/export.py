"""Export the inference model of a checkpoint: python tools/export.py -m CONFIG [-o runner.export_checkpoint=DIR runner.export_dir=DIR]"""
from rectools import cli  # (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import serving
    serving.export_checkpoint(config, package)


if __name__ == "__main__":
    cli.run(main, __doc__)
