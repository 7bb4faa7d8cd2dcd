"""An ONNX file's ``metadata_props`` read from the protobuf wire format, without loading the graph.

A ``ModelProto`` is a sequence of top-level fields, each ``key`` (a varint: ``field << 3 |
wire type``) then its payload; ``metadata_props`` is field 14, repeated
``StringStringEntryProto {string key = 1; string value = 2;}``, and the graph (field 7, all the
weights of a file without external data) is one length-delimited field that this reader seeks
past. Reading the metadata of a 100 MiB file this way touches a few hundred bytes, where an
ONNX Runtime session (even unoptimised) reads and copies every initializer.

Wire types (https://protobuf.dev/programming-guides/encoding/): 0 varint, 1 fixed 64-bit,
2 length-delimited, 5 fixed 32-bit; 3 and 4 (groups) do not occur in ONNX. Anything else, a field
number 0, or a length running past the end of the file makes the bytes not a well-formed message.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

__all__ = ["scan_metadata_props"]

METADATA_PROPS = 14  # ModelProto.metadata_props
_FIXED = {1: 8, 5: 4}  # wire type -> payload bytes


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


def _varint(read: BinaryIO, end: int) -> int:
    """The next varint of ``read`` (at most 10 bytes, not past ``end``)."""
    value = 0
    for shift in range(0, 70, 7):
        if read.tell() >= end:
            raise _Malformed("a varint runs past the end")
        byte = read.read(1)[0]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
    raise _Malformed("a varint longer than 10 bytes")


def _walk(read: BinaryIO, end: int, wanted: tuple[int, ...]) -> list[tuple[int, bytes]]:
    """``(field, payload)`` of every length-delimited field numbered in ``wanted``, in order, from
    ``read`` up to ``end``; every other field is skipped (seeked past)."""
    payloads = []
    while read.tell() < end:
        key = _varint(read, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            _varint(read, end)
            continue
        if wire in _FIXED:
            size = _FIXED[wire]
        elif wire == 2:
            size = _varint(read, end)
        else:
            raise _Malformed(f"wire type {wire}")
        if read.tell() + size > end:
            raise _Malformed("a field runs past the end")
        if wire == 2 and field in wanted:
            payloads.append((field, read.read(size)))
        else:
            read.seek(size, 1)
    return payloads


def _entry(payload: bytes) -> tuple[str, str]:
    """``(key, value)`` of a StringStringEntryProto (fields 1 and 2; a repeated one: the last, as
    protobuf parsers do; a missing one: the empty string)."""
    fields = dict(_walk(io.BytesIO(payload), len(payload), (1, 2)))
    return fields.get(1, b"").decode("utf-8"), fields.get(2, b"").decode("utf-8")


def scan_metadata_props(path: str | Path) -> dict[str, str] | None:
    """``metadata_props`` of the ONNX file at ``path`` as a dict (a repeated key: the last one
    wins), or None when the file is not a well-formed protobuf message (truncated, not ONNX) or
    has no metadata: the caller then asks a full parser, for its error message."""
    path = Path(path)
    end = path.stat().st_size
    try:
        with open(path, "rb") as read:
            entries = [_entry(payload) for _, payload in _walk(read, end, (METADATA_PROPS,))]
    except (_Malformed, UnicodeDecodeError):
        return None
    return dict(entries) or None
