"""Field-level machinery of the typed config (config.py): the error type, range checks shared by
every section's validate(), and the JSON / `--set section.field=value` parsing by declared field type.
Standard library only: this module ships inside artifacts and exported scripts with config.py.
"""
from __future__ import annotations

import dataclasses
import math
import typing


class ConfigError(ValueError):
    """An impossible or malformed configuration; the message names the field and the fix."""


def finite(section: str, obj) -> None:
    """Refuse nan/inf in any float field: a nan budget or learning rate would silently mean 'off'."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{section}.{f.name}={v} must be a finite number")


def at_least(section: str, obj, minimum: float, *names: str, hint: str = "") -> None:
    for name in names:
        v = getattr(obj, name)
        if not v >= minimum:
            raise ConfigError(f"{section}.{name}={v} must be >= {minimum}{hint}")


def fractions(section: str, obj, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{section}.{name}={v} must be a fraction in [0, 1]")


def field_types(cls) -> dict:
    """Declared field types, resolved (annotations are strings under `from __future__`)."""
    return typing.get_type_hints(cls)


def from_dict(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix or '<root>'} must be an object")
    types = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config field(s) {sorted(prefix + k for k in unknown)}")
    kwargs = {}
    for k, v in d.items():
        t = types[k]
        if dataclasses.is_dataclass(t):
            kwargs[k] = from_dict(t, v, f"{prefix}{k}.")
        else:
            kwargs[k] = coerce(v, t, prefix + k)
    return cls(**kwargs)


def coerce(value, t, key: str):
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: expected a boolean (true/false)")
    try:
        if t is int:
            if isinstance(value, str):
                value = value.replace("_", "")
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                return int(f)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t is float:
            return float(value.replace("_", "") if isinstance(value, str) else value)
        if t is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {t.__name__}") from None
    raise ConfigError(f"{key}: unsupported field type {t}")


def set_dotted(cfg, key: str, raw) -> None:
    parts = key.split(".")
    obj = cfg
    for p in parts[:-1]:
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise ConfigError(f"--set {key}: no config section {p!r}")
        obj = getattr(obj, p)
    leaf = parts[-1]
    types = field_types(type(obj))
    if leaf not in types or dataclasses.is_dataclass(types[leaf]):
        valid = sorted(f.name for f in dataclasses.fields(obj))
        raise ConfigError(f"--set {key}: unknown field {leaf!r}; valid fields: {', '.join(valid)}")
    setattr(obj, leaf, coerce(raw, types[leaf], key))
