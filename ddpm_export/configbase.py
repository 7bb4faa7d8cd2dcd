"""Frozen, versioned config dataclasses that round-trip through JSON (torch-free).

Every config of the project derives from :class:`FrozenConfig`: a frozen dataclass with a
``version`` field, a ``validate()`` that raises :class:`ConfigError` naming the bad field, and
``to_dict`` / ``from_dict`` / ``to_json`` / ``from_json`` that round-trip exactly. Every config
is at version 1 and no migration exists: another version is refused (a future version 2 of a
config must add a migration here, or keep refusing version 1 with a clear message). Tuples are
written as JSON lists and read back as tuples; unknown keys are refused with their names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Iterable, TypeVar

from ddpm_export.errors import BadInputError
from ddpm_export.jsonio import parse_json

C = TypeVar("C", bound="FrozenConfig")


class ConfigError(BadInputError):
    """A config field holds a bad value. The message names the field and the valid choices."""


class ConfigFileError(ConfigError):
    """A ConfigError in a file's (or metadata's) config: its field names are the file's keys, not
    CLI flags (the CLI leaves them alone)."""


def read_config_text(path: str | Path) -> str:
    """A JSON config file's text: UTF-8, a byte-order mark allowed; ConfigError naming the file
    when it is not UTF-8 (e.g. saved as UTF-16 by an editor) or not a regular file (a folder)."""
    if Path(path).exists() and not Path(path).is_file():
        raise ConfigError(f"{path}: not a regular file")
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 JSON") from e


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``, listing them."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{field}={value!r} is not valid; choose one of: {listed}")


def check(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError ``"<field>: <message>"`` when ``condition`` is false."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    """Base of every config: JSON round trip, a version, validation at construction."""

    #: The only version this code reads and writes. There is no migration: a file with another
    #: version (older or newer) is refused with an error naming the field.
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        check(self.version == self.VERSION, "version",
              f"{self.version} is not supported (this ddpm-export reads version {self.VERSION})")
        self.validate()

    def validate(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__} must implement validate()")

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def differences(self, other: "FrozenConfig") -> list[str]:
        """The names of the fields whose values differ from ``other``'s, sorted."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine if mine[k] != theirs.get(k))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        if not isinstance(data, dict):
            raise ConfigFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigFileError(
                f"{source}: unknown field(s) {', '.join(repr(u) for u in unknown)} for {cls.__name__}; "
                f"known fields: {', '.join(sorted(names))}"
            )
        version = data.get("version", cls.VERSION)
        if type(version) is not int or version < 1:
            raise ConfigFileError(f"{source}: version={version!r} is not a {cls.__name__} version: it must be an "
                                  f"integer 1..{cls.VERSION} (this ddpm-export writes {cls.VERSION})")
        if version > cls.VERSION:
            raise ConfigFileError(
                f"{source}: version={version!r} is not supported by this ddpm-export "
                f"({cls.__name__} versions 1..{cls.VERSION}); upgrade ddpm-export"
            )
        hints = _field_types(cls)
        kwargs = {}
        for key, value in data.items():
            if isinstance(value, list) and _is_tuple_type(hints[key]):
                value = tuple(value)
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigFileError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls: type[C], text: str, *, source: str = "config") -> C:
        try:
            data = parse_json(text)
        except ValueError as e:
            raise ConfigFileError(f"{source}: not valid JSON ({e})") from e
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        return cls.from_json(read_config_text(path), source=str(path))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@functools.cache
def _field_types(cls: type) -> types.MappingProxyType[str, Any]:
    """``typing.get_type_hints(cls)``, evaluated once per class: with ``from __future__ import
    annotations`` every call compiles each annotation string again (~0.7 ms per config built, which
    the samplers do on every ``Pipeline.sample``)."""
    return types.MappingProxyType(typing.get_type_hints(cls))


def _is_tuple_type(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    return any(_is_tuple_type(a) for a in typing.get_args(tp))


def _check_type(field: str, value: Any, tp: Any) -> None:
    """Check a field against its annotation (int, float, bool, str, Literal, Optional, tuples)."""
    if typing.get_origin(tp) is typing.Literal:
        check_choice(field, value, typing.get_args(tp))
    elif not _matches(value, tp):
        why = "must be finite" if _non_finite(value) else f"has the wrong type; expected {_type_name(tp)}"
        raise ConfigError(f"{field}={value!r} {why}")


def _non_finite(value: Any) -> bool:
    """A NaN or infinite float, or a tuple holding one (JSON's NaN / Infinity literals)."""
    if isinstance(value, tuple):
        return any(_non_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # NaN and +-Infinity (JSON's NaN / Infinity literals) are no setting of any field
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # other annotations are checked by validate()


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))
