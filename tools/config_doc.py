"""Print a config reference (every key: type, default, meaning) as Markdown:
python tools/config_doc.py models/multitask/escm2                the keys of a model folder's config
python tools/config_doc.py --bias-study models/multitask/escm2   the keys of its bias-study suites"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools.config import describe  # noqa: E402
from rectools.keys import RUNNER_KEYS  # noqa: E402
from rectools.model_loader import import_model_package, model_module  # noqa: E402


def reference(model_dir):
    schema = model_module(import_model_package(model_dir), "config_schema", "model folder")
    return describe(RUNNER_KEYS + schema.KEYS)


def bias_study_reference(model_dir):
    return describe(model_module(import_model_package(model_dir), "bias_study", "model folder").SUITE_KEYS)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--bias-study"]:
        print(bias_study_reference(args[1] if len(args) > 1 else "."))
    else:
        print(reference(args[0] if args else "."))
