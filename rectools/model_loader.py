"""Import a model folder (config_schema.py, a reader, dygraph_model.py, ...; see rectools.contract)
as a package, wherever it lives, so its modules can import each other relatively."""
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys

from .config import Sources, load_config, resolve_path, schema_of
from .errors import ConfigError
from .keys import RUNNER_KEYS, validate


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


def has_module(package, module):
    return os.path.isfile(os.path.join(package.__path__[0], module + ".py"))


def model_module(package, module, key):
    """A module of the model folder; `key` names the config key that chose it, for the error."""
    if not has_module(package, module):
        raise ConfigError(f"{key}: no module {module}.py in the model folder {package.__path__[0]}"
                          f"{_readers_hint(package, key)}")
    return importlib.import_module(f"{package.__name__}.{module}")


def _readers_hint(package, key):
    """For a reader key (runner.*_reader_path): the folder's reader modules (*_reader.py) and the
    override that picks one, as a clause; '' otherwise. A config written for another framework's
    copy of a model may name a reader that this folder does not hold."""
    if not key.endswith("_reader_path"):
        return ""
    readers = sorted(name[:-3] for name in os.listdir(package.__path__[0]) if name.endswith("_reader.py"))
    if not readers:
        return ""
    return f"; its readers: {', '.join(readers)} (choose one with -o {key}=<reader>)"


def locate(sources):
    """The model package of a config (rectools.config.Sources): runner.model_dir, by default the
    config file's folder."""
    given = sources.resolved(schema_of(RUNNER_KEYS), known_only=True)
    model_dir, _, base = given.get("runner.model_dir", (".", None, os.path.dirname(sources.path)))
    return import_model_package(resolve_path(str(model_dir), base))


def load(config_path, overrides=()):
    """(checked config, model package) for a config file and its -o overrides."""
    sources = Sources(config_path, overrides)
    package = locate(sources)  # the model folder decides the schema, so find it first
    schema = model_module(package, "config_schema", "runner.model_dir")
    config = load_config(sources, (), RUNNER_KEYS + schema.KEYS)
    validate(config)
    schema.validate(config)
    return config, package


def call_model_function(call):
    """(model_dir, module, function, argument) -> module.function(argument), the module imported
    from the model folder at model_dir: how a worker process runs a model folder's function."""
    model_dir, module, function, argument = call
    return getattr(model_module(import_model_package(model_dir), module, "model folder"), function)(argument)
