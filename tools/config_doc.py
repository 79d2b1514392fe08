"""Print a config reference (every key: type, default, meaning) as Markdown.

  python tools/config_doc.py models/multitask/escm2                the keys of a model folder's config
  python tools/config_doc.py --bias-study                          the keys of the bias study's suites"""
import argparse
import os

from rectools import cli
from rectools.config import describe
from rectools.errors import UserError
from rectools.keys import RUNNER_KEYS
from rectools.model_loader import import_model_package, model_module


def model_folder_module(model_dir, module):
    """A module of a model folder, or a UserError naming what is missing."""
    if not os.path.isdir(model_dir):
        raise UserError(f"model folder not found: {model_dir}")
    if not os.path.isfile(os.path.join(model_dir, module + ".py")):
        raise UserError(f"{model_dir} is not a model folder: it has no {module}.py")
    return model_module(import_model_package(model_dir), module, "model folder")


def reference(model_dir):
    """The reference of a model folder's keys (the runner's and its config_schema.py's)."""
    return describe(RUNNER_KEYS + model_folder_module(model_dir, "config_schema").KEYS)


def bias_study_reference():
    """The reference of the keys of the bias study's suites (studies/bias/bias_study.py)."""
    from studies.bias import bias_study
    return describe(bias_study.SUITE_KEYS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", help="a model folder (one with config_schema.py)")
    parser.add_argument("--bias-study", action="store_true", help="the keys of its bias-study suites instead")
    args = parser.parse_args(argv)
    if not args.bias_study and args.model_dir is None:
        parser.error("a model folder is required (or --bias-study)")
    cli.one_line_errors(lambda: print(bias_study_reference() if args.bias_study else reference(args.model_dir)))


if __name__ == "__main__":
    main()
