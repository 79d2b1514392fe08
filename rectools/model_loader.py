"""Import a model folder (net.py, dygraph_model.py, reader, config_schema.py) as a package,
wherever it lives, so its modules can import each other relatively."""
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys

from .config import load_config, parse_overrides, read_yaml
from .errors import ConfigError
from .keys import RUNNER_KEYS


def import_model_package(model_dir):
    model_dir = os.path.abspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ConfigError(f"runner.model_dir: folder not found: {model_dir}")
    name = "recmodel_" + hashlib.sha1(model_dir.encode()).hexdigest()[:12]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [model_dir]
        sys.modules[name] = package
    return sys.modules[name]


def model_module(package, module, key):
    """A module of the model folder; `key` names the config key that chose it, for the error."""
    if not os.path.isfile(os.path.join(package.__path__[0], module + ".py")):
        raise ConfigError(f"{key}: no module {module}.py in the model folder {package.__path__[0]}")
    return importlib.import_module(f"{package.__name__}.{module}")


def load(config_path, overrides=()):
    """(checked config, model package) for a config file and its -o overrides."""
    model_dir = read_yaml(config_path).get("runner.model_dir") or "."
    base = os.path.dirname(os.path.abspath(config_path))
    # the model folder decides the schema, so find it first, reading -o as load_config will
    overridden = parse_overrides(overrides, {k.name: k for k in RUNNER_KEYS})
    if "runner.model_dir" in overridden:
        model_dir, base = overridden["runner.model_dir"], os.getcwd()
    package = import_model_package(os.path.join(base, os.path.expanduser(str(model_dir))))
    schema = model_module(package, "config_schema", "runner.model_dir")
    config = load_config(config_path, overrides, RUNNER_KEYS + schema.KEYS)
    schema.validate(config)
    return config, package
