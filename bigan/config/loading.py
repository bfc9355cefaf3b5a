"""Typed YAML: a tree of mappings (a YAML file with dotted command-line overrides merged in) turned
into nested dataclasses, every value checked against its field's type on the way.

Nothing here knows what a GAN is: any dataclass whose fields are ints, floats, strings, bools,
lists, dicts or other such dataclasses loads this way. Unknown keys are errors that suggest the
near miss; floats must fit float32, because training computes in it; ints accept `1e-3`-style
strings the way YAML 1.1 leaves them. Every error is a `ConfigError` naming the dotted field.
`bigan.config` puts its sections on top of this and validates the result.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bigan.config.vocabulary import ConfigError

# Training runs in float32: a float field outside its range would become inf (or 0) in a tensor
# and fail mid-run, far from the setting that caused it.
_FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(float32).max
_FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32; below it precision is lost
_INT64 = 1 << 63


def _float32(name: str, value: float) -> float:
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX or 0 < abs(value) < _FLOAT32_TINY:
        raise ConfigError(f"{name}={value!r} is invalid: must be a finite number that float32 "
                          f"holds (0, or 1.2e-38 <= |value| <= 3.4e38), as training computes "
                          f"in float32")
    return value


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Check a YAML value against a dataclass field type; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} is invalid: must be a mapping")
        key_type, value_type = typing.get_args(typ)
        out = {}
        for key, item in value.items():
            if key_type is int and isinstance(key, str) and key.strip().isdigit():
                key = int(key)  # a dotted override (`progressive.batch_size.64=32`) gives "64"
            out[_coerce(f"{name} key {key!r}", key, key_type)] = _coerce(f"{name}.{key}", item,
                                                                        value_type)
        return out
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return from_dict(typ, value, name)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} is invalid: must be a list")
        (item,) = typing.get_args(typ)[:1]
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(typ):
            if option is type(None) and value is None:
                return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return _float32(name, float(value))
    if typ is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, float):
        return _float32(name, value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool) \
            and not -_INT64 <= value < _INT64:
        raise ConfigError(f"{name}={value!r} is invalid: must fit in a 64-bit integer")
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is invalid: must be true or false")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} is invalid: must be an integer")
    if typ in (float, str) and not isinstance(value, typ):
        raise ConfigError(f"{name}={value!r} is invalid: must be a {typ.__name__}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping of its field names, each value coerced to the
    field's type (nested dataclasses from nested mappings); fields left out keep their defaults.
    Builds only: checking the values against each other is the caller's `validate`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint}; known: {', '.join(names)}")
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["model.ch=64", "train.precision=bf16"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` laid over it, key by key: where both hold a mapping the two merge the
    same way, anywhere else `extra`'s value wins. A new dict sharing nothing with either argument,
    which are left unchanged. (Config overrides over a YAML file; DeepSpeed overrides over the
    generated DeepSpeed config, `bigan/train/parallel.py`.)"""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_tree(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping of a YAML file (empty when `path` is None) with dotted `overrides` merged in."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    return deep_merge(data, parse_overrides(overrides or []))
