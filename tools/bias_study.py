"""The bias study: CVR debiasing against a known truth.
python tools/bias_study.py -m configs/bias_study/default.yaml [-o key=value ...]

Runs the bias_study module of the model folder that the suite's suite.model_config belongs to."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli  # noqa: E402  (no Paddle yet: it loads inside cli's frame)


def main(suite_path, overrides):
    from rectools import model_loader
    study = model_loader.study_module(suite_path, overrides)
    study.run(study.load_suite(suite_path, overrides))


if __name__ == "__main__":
    cli.run(main, __doc__, load=lambda suite_path, overrides: (suite_path, overrides))  # the suite's own reading
