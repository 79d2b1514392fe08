"""Config as a schema: every key has one declaration (type, default, meaning).

A YAML file with sections (`runner:`, `hyper_parameters:`) is flattened to dotted keys
(`hyper_parameters.optimizer.learning_rate`), `-o key=value` overrides are applied, and every
value is checked against the schema before any work starts. Paths in the file are relative to
the file; paths given with `-o` are relative to the current directory.
"""
import decimal
import difflib
import math
import os
import re
from dataclasses import dataclass

import yaml

from .errors import ConfigError

REQUIRED = object()  # default of a key that has no default


class _Loader(yaml.SafeLoader):
    """YAML as users mean it: YAML 1.1 would read the field id 109_14 as the integer 10914 and
    0123 as 83; here only plain decimal digits make an integer."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 10))


def parse_yaml(text):
    return yaml.load(text, Loader=_Loader)


# YAML 1.1 floats need a dot and a signed exponent, so 1e-3 and 1e3 arrive as strings; a key that
# expects a number reads them as one (a str key keeps them as written).
_SCIENTIFIC = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")
_EXACT_FLOAT_INTS = 2 ** 53  # every whole float up to this is exactly the integer it looks like


def _number(value, whole):
    """`value` as the number a numeric key expects, or None when it is not one.

    int, float and scientific notation ('1e-3', '2.5E+4') are numbers; with `whole` (an integer
    key) only whole ones are, and they come back as int ('1e3' -> 1000, 2.0 -> 2, '1e-3' -> None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value):
        exact = decimal.Decimal(value)
        if not whole:
            return float(exact)  # beyond float's range: inf, refused as not finite
        return int(exact) if exact.adjusted() < 30 and exact == exact.to_integral_value() else None
    if whole:
        if isinstance(value, float):
            return int(value) if value.is_integer() and abs(value) <= _EXACT_FLOAT_INTS else None
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) else None


def _text(value, allow_numbers):
    if isinstance(value, str) or (allow_numbers and isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    return None


# type -> converter of one value (None: not of this type); list types convert each item
_CONVERT = {
    "int": lambda v: _number(v, whole=True),
    "float": lambda v: _number(v, whole=False),
    "bool": lambda v: v if isinstance(v, bool) else None,
    "str": lambda v: _text(v, allow_numbers=False),
    "path": lambda v: v if isinstance(v, str) and v != "" else None,
    "optional_path": lambda v: v if isinstance(v, str) else None,  # "" or none: no path, not the default
    "int_list": lambda v: _number(v, whole=True),
    "str_list": lambda v: _text(v, allow_numbers=True),  # field ids such as 101 are written unquoted
    "float_list": lambda v: _number(v, whole=False),
}

_TYPE_NAMES = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "path": "a path", "optional_path": "a path or none", "int_list": "a list of integers", "str_list": "a list of strings",
    "float_list": "a list of numbers",
}


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: object
    doc: str
    choices: tuple = ()
    minimum: float = None
    maximum: float = None
    ignored: bool = False  # accepted for PaddleRec compatibility; has no effect here

    def check(self, value, source):
        """The value converted to this key's type, or a ConfigError naming key and source."""
        if value is None and self.default is None:
            return None
        convert = _CONVERT[self.type]
        if self.type.endswith("_list"):
            converted = [convert(x) for x in value] if isinstance(value, list) else None
            if converted is not None and None in converted:
                converted = None
        else:
            converted = convert(value)
        if converted is None:
            raise ConfigError(f"{source}: {self.name} must be {_TYPE_NAMES[self.type]}, got {value!r}")
        value = converted
        if self.type in ("float", "float_list") and not all(math.isfinite(x) for x in _items(value)):
            raise ConfigError(f"{source}: {self.name} must be finite, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{source}: {self.name} must be at least {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{source}: {self.name} must be at most {self.maximum}, got {value!r}")
        if self.choices and not all(x in self.choices for x in _items(value)):
            raise ConfigError(
                f"{source}: {self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value


def _items(value):
    return value if isinstance(value, list) else [value]


class Config(dict):
    """Flat dotted key -> checked value. `path` is the YAML file it came from."""

    def __init__(self, values, path, schema):
        super().__init__(values)
        self.path = path
        self.schema = schema

    def section(self, prefix):
        """{key without "prefix.": value} of every key under `prefix`, e.g. section("hyper_parameters")."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in self.items() if k.startswith(start)}

    def require(self, *names, by):
        """Fail before any work if a key the command `by` needs was left unset."""
        for name in names:
            if self.get(name) is None:
                raise ConfigError(f"{self.path}: {name} is required by {by} (set it in the file or with -o {name}=...)")


class Flat(dict):
    """Dotted key -> value of a YAML file; `lines` maps each key written in it to its line (1-based)."""

    def __init__(self, values, lines):
        super().__init__(values)
        self.lines = lines

    def source(self, path, name):
        """`path:line` of `name` when its line is known, else `path`: the prefix of an error."""
        return f"{path}:{self.lines[name]}" if name in self.lines else path


def flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _key_lines(node, path, prefix="", lines=None):
    """Line of every dotted key of a YAML mapping node; a key written twice (also as `runner.epochs`
    beside `runner: {epochs: ...}`) is a ConfigError: YAML would silently keep the last."""
    lines = {} if lines is None else lines
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue  # keys merged from an anchor (<<: *base) may be overridden: that is their point
        name = prefix + key_node.value
        line = key_node.start_mark.line + 1
        if name in lines:
            raise ConfigError(f"{path}:{line}: duplicate key {name} (first set at line {lines[name]})")
        lines[name] = line
        if isinstance(value_node, yaml.MappingNode):
            _key_lines(value_node, path, name + ".", lines)
    return lines


def read_yaml(path):
    """The file's keys flattened to dotted names (a Flat), or a ConfigError naming file and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        lines = _key_lines(node, path) if isinstance(node, yaml.MappingNode) else {}
        tree = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if tree is None:
        raise ConfigError(f"{path}: the config file is empty; expected sections such as runner: and "
                          f"hyper_parameters:")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected sections such as runner: and hyper_parameters:")
    return Flat(flatten(tree), lines)


def full_name(name, schema):
    """A key as written (dotted, or its last parts when only one key ends with them) -> the key's name."""
    if name in schema:
        return name
    endings = [k for k in schema if k.endswith("." + name)]
    if len(endings) > 1:
        raise ConfigError(f"-o {name}: ambiguous, say one of {', '.join(endings)}")
    return endings[0] if endings else name


class Sources:
    """A config file and its -o overrides, read once: (name as written, value, source, base folder)
    in the order they apply. A relative path is relative to the file for values from the file, to
    the current directory for values given with -o."""

    def __init__(self, path, overrides):
        self.path = os.path.abspath(path)
        base = os.path.dirname(self.path)
        written = read_yaml(self.path)
        self.entries = [(name, value, written.source(self.path, name), base) for name, value in written.items()]
        for item in overrides:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ConfigError(f"-o {item!r}: expected key=value, e.g. -o runner.epochs=2")
            try:
                value = parse_yaml(text) if text.strip() else ""
            except yaml.YAMLError:
                value = text
            self.entries.append((name, value, "-o", os.getcwd()))

    def resolved(self, schema, known_only=False):
        """{key name: (value, source, base)}, the last entry of a key winning; a key not in `schema`
        is refused, or passed over with known_only (when only some keys are looked up)."""
        values = {}
        for name, value, source, base in self.entries:
            full = full_name(name, schema) if source == "-o" else name
            if full in schema:
                values[full] = (value, source, base)
            elif value is None and any(k.startswith(full + ".") for k in schema):
                continue  # a section with every key commented out
            elif not known_only:
                raise unknown_key_error(full, value, schema, source)
        return values


NO_PATH = ("", "none")  # the values by which an optional_path key chooses no path at all (not its default)


def resolve_path(value, base):
    """A path from a config, absolute: `~` expanded, relative ones joined to `base`."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def unknown_key_error(name, value, schema, source):
    """The ConfigError of a name that is not a key: a section given a value, or a typo."""
    section = [k for k in schema if k.startswith(name + ".")]
    if section:
        return ConfigError(f"{source}: {name} must be a section (a mapping of keys such as "
                           f"{section[0][len(name) + 1:]}), got {value!r}")
    hint = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.6)
    if not hint:  # a typo inside a long dotted key: compare the last part too
        tails = {k.rsplit(".", 1)[-1]: k for k in schema}
        near = difflib.get_close_matches(name.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.6)
        hint = [tails[near[0]]] if near else []
    more = f"; did you mean {hint[0]}?" if hint else ""
    return ConfigError(f"{source}: unknown key {name}{more}")


def schema_of(keys):
    """{name: Key}; a later declaration of a name replaces an earlier one (a model folder may give a
    runner key its own default), keeping the first one's place."""
    schema = {}
    for key in keys:
        schema[key.name] = key
    return schema


def load_config(path, overrides, keys):
    """Read, override and check a config against `keys` (an iterable of Key, or Sources already read)."""
    sources = path if isinstance(path, Sources) else Sources(path, overrides)
    schema = schema_of(keys)
    given = sources.resolved(schema)
    base = os.path.dirname(sources.path)
    checked = {}
    for name, key in schema.items():
        if name in given:
            value, source, relative_to = given[name]
            value = key.check(value, source)
        elif key.default is REQUIRED:
            raise ConfigError(f"{sources.path}: {name} is required ({key.doc})")
        else:
            value, relative_to = key.default, base
        if key.type == "optional_path" and value is not None and value.strip().lower() in NO_PATH:
            value = ""
        elif key.type in ("path", "optional_path") and value is not None:
            value = resolve_path(value, relative_to)
        checked[name] = value
    return Config(checked, sources.path, schema)


def describe(keys):
    """The schema as a Markdown table, for the docs."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for k in schema_of(keys).values():
        default = "required" if k.default is REQUIRED else ("" if k.default is None else repr(k.default))
        doc = ("accepted, no effect here: " if k.ignored else "") + k.doc
        rows.append(f"| `{k.name}` | {k.type} | {default} | {doc} |")
    return "\n".join(rows)
