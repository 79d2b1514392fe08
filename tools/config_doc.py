"""Print a config reference (every key: type, default, meaning) as Markdown:
python tools/config_doc.py models/multitask/escm2     the keys of a model folder's config
python tools/config_doc.py --benchmark                 the keys of a benchmark suite"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rectools.config import describe  # noqa: E402
from rectools.keys import RUNNER_KEYS  # noqa: E402
from rectools.model_loader import import_model_package, model_module  # noqa: E402


def reference(model_dir):
    schema = model_module(import_model_package(model_dir), "config_schema", "model folder")
    return describe(RUNNER_KEYS + schema.KEYS)


def benchmark_reference():
    from rectools.cvr_benchmark import SUITE_KEYS
    return describe(SUITE_KEYS)


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "."
    print(benchmark_reference() if arg == "--benchmark" else reference(arg))
