"""Print a config reference (every key: type, default, meaning) as Markdown.

  python tools/config_doc.py models/multitask/escm2     the keys of a model folder's config
  python tools/config_doc.py --benchmark                 the keys of a benchmark suite"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools import cli  # noqa: E402
from rectools.config import describe  # noqa: E402
from rectools.errors import UserError  # noqa: E402
from rectools.keys import RUNNER_KEYS  # noqa: E402
from rectools.model_loader import import_model_package, model_module  # noqa: E402


def reference(model_dir):
    """The reference of a model folder's keys (the runner's and its config_schema.py's)."""
    if not os.path.isdir(model_dir):
        raise UserError(f"model folder not found: {model_dir}")
    if not os.path.isfile(os.path.join(model_dir, "config_schema.py")):
        raise UserError(f"{model_dir} is not a model folder: it has no config_schema.py")
    schema = model_module(import_model_package(model_dir), "config_schema", "model folder")
    return describe(RUNNER_KEYS + schema.KEYS)


def benchmark_reference():
    from rectools.cvr_benchmark import SUITE_KEYS
    return describe(SUITE_KEYS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("model_dir", nargs="?", help="a model folder (one with config_schema.py)")
    what.add_argument("--benchmark", action="store_true", help="the keys of a benchmark suite instead")
    args = parser.parse_args(argv)
    cli.one_line_errors(lambda: print(benchmark_reference() if args.benchmark else reference(args.model_dir)))


if __name__ == "__main__":
    main()
