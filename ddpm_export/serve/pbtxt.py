"""A minimal writer of protobuf text format, enough for Triton's ``config.pbtxt`` (torch-free).

Triton reads a model's configuration as the text form of its ``ModelConfig`` message
(``model_config.proto``). We build configs as plain Python values and print them here, so
generating a repository needs no protobuf or tritonclient; ``tests/serve`` parses every
generated file with tritonclient's ``model_config_pb2`` to prove the text is valid.

Values map to text format as follows: ``str`` -> a quoted string, ``bool`` -> ``true`` /
``false``, ``int`` / ``float`` -> a number, :class:`Enum` -> a bare enum name, ``dict`` -> a
nested message, a list of dicts -> a repeated message, a list of scalars -> ``[a, b]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

__all__ = ["Enum", "to_pbtxt"]


@dataclasses.dataclass(frozen=True)
class Enum:
    """An enum value written without quotes, e.g. ``Enum("TYPE_FP32")``."""

    name: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"enum value {self.name!r} is not an identifier")


def to_pbtxt(message: Mapping[str, Any]) -> str:
    """The text format of ``message`` (field name -> value), ending in a newline."""
    return "".join(_fields(message, 0))


def _fields(message: Mapping[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    lines = []
    for key, value in message.items():
        if not key.isidentifier():
            raise ValueError(f"field name {key!r} is not an identifier")
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{\n", *_fields(value, depth + 1), f"{pad}}}\n"]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{pad}{key} [\n")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{\n", *_fields(item, depth + 2), f"{pad}  }}{comma}\n"]
            lines.append(f"{pad}]\n")
        elif isinstance(value, (list, tuple)):
            items = ", ".join(_scalar(key, v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]\n" if items else f"{pad}{key}: []\n")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, value)}\n")
    return lines


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{key}: {value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        if not value.isprintable() or not value.isascii():
            raise ValueError(f"{key}: {value!r} must be printable ASCII")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"{key}: cannot write a {type(value).__name__} in protobuf text format")
