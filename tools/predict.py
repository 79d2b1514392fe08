"""Score a data folder with an exported model (paddle.inference): python tools/predict.py -m CONFIG [-o runner.inference_model_dir=DIR runner.predict_data_dir=DIR runner.predict_output=FILE]
Several processes: python -m paddle.distributed.launch --nproc_per_node N tools/predict.py -m CONFIG -o runner.use_fleet=True"""
from rectools import cli  # (no Paddle yet: it loads inside cli's frame)


def main(config, package):
    from rectools import distributed, serving
    serving.predict(config, package, distributed.group(config))


if __name__ == "__main__":
    cli.run(main, __doc__)
