"""Print the config reference of a model folder (every key: type, default, meaning) as Markdown:
python tools/config_doc.py models/multitask/escm2"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools.config import describe  # noqa: E402
from rectools.keys import RUNNER_KEYS  # noqa: E402
from rectools.model_loader import import_model_package, model_module  # noqa: E402


def reference(model_dir):
    schema = model_module(import_model_package(model_dir), "config_schema", "model folder")
    return describe(RUNNER_KEYS + schema.KEYS)


if __name__ == "__main__":
    print(reference(sys.argv[1] if len(sys.argv) > 1 else "."))
