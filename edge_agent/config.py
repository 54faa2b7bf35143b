"""Configuration: one frozen dataclass per stage, one YAML section per stage.

Every section is parsed by :func:`from_mapping`, which rejects unknown keys and wrong types with
an error that names the file, the section, the key and the fix. Command-line overrides use the
dotted form ``section.key=value`` (value parsed as YAML).

Whatever a file or an override holds, loading it gives the configuration or a :class:`ConfigError`
— never another exception: a file that is not UTF-8 text or not YAML, a key that is not a string,
a number that is NaN, infinite or beyond float64, a list item or map value of the wrong type.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how to fix it."""


# Values in messages are cut short: a config can hold a 10 MB string or lists 1000 deep.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 60, 60, 6, 6


def _show(value: Any) -> str:
    return _REPR.repr(value)


def _one_line(error: BaseException) -> str:
    """PyYAML's multi-line message (with a caret drawing) as one line."""
    return " ".join(str(error).split())


def _names(keys: Any) -> list[str]:
    """Keys as sorted strings: YAML keys may be ints, floats or None, which sort() cannot mix."""
    return sorted(str(k) for k in keys)


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
        raise ConfigError(errors[0] if errors else f"{where}: bad value {_show(value)}")
    if origin is typing.Literal:
        if isinstance(value, bool) or not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{where}: {_show(value)} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=False))
            )
        if args:  # list[int]: every item checked
            return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return type(value)(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        if len(args) == 2:  # dict[str, float]: every key and value checked
            return {
                _check_type(k, args[0], f"{where} key {_show(k)}"): _check_type(v, args[1], f"{where}.{k}")
                for k, v in value.items()
            }
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if annotation is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any float literal.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        try:
            number = float(value)
        except (ValueError, OverflowError):  # not a number, or an int beyond float64
            raise ConfigError(f"{where}: expected a number, got {_show(value)}") from None
        if not math.isfinite(number):  # NaN compares false with everything: no check would hold
            raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
        return number
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return value
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping; unknown keys and bad types are errors."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = _names(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ArithmeticError) as e:  # the dataclass's own checks (__post_init__)
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
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"{source}: override {_show(item)} must look like section.key=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(
                f"{source}: override {_show(item)}: {path.strip()!r} is not a dotted key like section.key"
            )
        node: Any = data
        for k, nxt in itertools.pairwise(keys):
            node = _child(node, k, item, source, {} if not nxt.isdigit() else [])
        value = _parse_value(raw, item, source)
        last = keys[-1]
        if isinstance(node, list):
            node[_index(node, last, item, source)] = value
        else:
            node[last] = value
    return data


OVERRIDES = "command line (--set)"  # how errors name what --set brought


def parse_with_overrides(
    parse: Callable[[dict[str, Any], str], T], data: dict[str, Any], overrides: Sequence[str], source: str
) -> T:
    """``parse(data with the overrides applied, where)``; its ConfigError names ``source`` (the file)
    when the file's own content is wrong, and :data:`OVERRIDES` when only what the overrides brought
    is (the file alone parses). ``data`` is not changed."""
    merged = apply_overrides(copy.deepcopy(data), list(overrides), OVERRIDES)
    try:
        return parse(merged, source)
    except ConfigError:
        if not overrides:
            raise
        try:
            parse(copy.deepcopy(data), source)
        except ConfigError:
            pass  # the file is wrong too: the error above names it
        else:
            parse(merged, OVERRIDES)  # raises again, naming the overrides
        raise


def _parse_value(raw: str, item: str, source: str) -> Any:
    """An override's value, as YAML (``2``, ``1e-3``, ``[0, 0, 640, 480]``, ``null``, text)."""
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(
            f"{source}: override {_show(item)}: the value is not valid YAML ({_one_line(e)}); "
            "quote text values"
        ) from None
    _check_keys(value, f"{source}: override {_show(item)}")
    return value


def _index(node: list, key: str, item: str, source: str) -> int:
    """A list position named in an override (``streams.0.source=...``); must already exist."""
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(
            f"{source}: override {_show(item)}: {key!r} is not an index of a list of {len(node)}"
        )
    return int(key)


def _child(node: Any, key: str, item: str, source: str, empty: Any) -> Any:
    """Step into ``node[key]`` for an override, creating a missing section."""
    if isinstance(node, list):
        child = node[_index(node, key, item, source)]
    elif isinstance(node, dict):
        child = node.setdefault(key, empty)
    else:
        raise ConfigError(f"{source}: override {_show(item)}: {key!r} is not a section")
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"{source}: override {_show(item)}: {key!r} is not a section")
    return child


def _check_keys(value: Any, where: str) -> None:
    """Every mapping key in a config is a name (a string): ``1: x`` or ``null: x`` is refused.

    Iterative, and each container is visited once: YAML aliases can make a small file a structure
    with 10⁹ paths (the "billion laughs"), and nesting can go deeper than Python's stack."""
    stack: list[tuple[Any, str]] = [(value, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if not isinstance(node, (Mapping, list)) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))
            continue
        for key, item in node.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"{where}: key {_show(key)}{f' in {path}' if path else ''} is not a name; "
                    "keys are section and setting names (strings)"
                )
            stack.append((item, f"{path}.{key}" if path else key))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a mapping of sections; errors name the file."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e}); give the YAML config file") from None
    except OSError as e:  # a directory, no permission, ...
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (yaml.YAMLError, RecursionError) as e:  # RecursionError: nesting deeper than Python's stack
        raise ConfigError(f"{path}: not valid YAML: {_one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    _check_keys(data, str(path))
    return data


def load_sections(data: Mapping[str, Any], sections: Mapping[str, type], source: str) -> dict[str, Any]:
    """Parse each known section into its dataclass; an unknown section is an error."""
    unknown = _names(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections are {sorted(sections)}")
    return {name: from_mapping(cls, data.get(name), f"{source}:{name}") for name, cls in sections.items()}
