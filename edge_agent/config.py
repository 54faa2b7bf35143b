"""Configuration: one frozen dataclass per stage, one YAML section per stage.

Every section is parsed by :func:`from_mapping`, which rejects unknown keys and wrong types with
an error that names the file, the section, the key and the fix. Command-line overrides use the
dotted form ``section.key=value`` (value parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how to fix it."""


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=False))
            )
        return type(value)(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept any float literal.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping; unknown keys and bad types are errors."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_mapping(obj: Any) -> Any:
    """Dataclass → plain dict/list structure, suitable for YAML or JSON sidecars."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def apply_overrides(
    data: dict[str, Any], overrides: list[str], source: str = "command line"
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        node: Any = data
        for k, nxt in itertools.pairwise(keys):
            node = _child(node, k, item, source, {} if not nxt.isdigit() else [])
        last = keys[-1]
        if isinstance(node, list):
            node[_index(node, last, item, source)] = yaml.safe_load(raw)
        else:
            node[last] = yaml.safe_load(raw)
    return data


def _index(node: list, key: str, item: str, source: str) -> int:
    """A list position named in an override (``streams.0.source=...``); must already exist."""
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"{source}: override {item!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _child(node: Any, key: str, item: str, source: str, empty: Any) -> Any:
    """Step into ``node[key]`` for an override, creating a missing section."""
    if isinstance(node, list):
        child = node[_index(node, key, item, source)]
    elif isinstance(node, dict):
        child = node.setdefault(key, empty)
    else:
        raise ConfigError(f"{source}: override {item!r}: {key!r} is not a section")
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"{source}: override {item!r}: {key!r} is not a section")
    return child


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a mapping of sections; errors name the file."""
    path = Path(path)
    try:
        with path.open() as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_sections(data: Mapping[str, Any], sections: Mapping[str, type], source: str) -> dict[str, Any]:
    """Parse each known section into its dataclass; an unknown section is an error."""
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections are {sorted(sections)}")
    return {name: from_mapping(cls, data.get(name), f"{source}:{name}") for name, cls in sections.items()}
