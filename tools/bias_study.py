"""The bias study: CVR debiasing against a known truth (studies/bias/).
python tools/bias_study.py -m studies/bias/default.yaml [-o key=value ...]"""
from rectools import cli  # (no Paddle yet: it loads inside cli's frame)


def main(suite_path, overrides):
    from studies.bias import bias_study
    bias_study.run(bias_study.load_suite(suite_path, overrides))


if __name__ == "__main__":
    cli.run(main, __doc__, load=lambda suite_path, overrides: (suite_path, overrides))  # the suite's own reading
