"""An ONNX file's ``metadata_props`` and external-data locations read from the protobuf wire format,
without loading the graph or its weights (no ``onnx`` package needed).

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
from typing import BinaryIO, Iterator

__all__ = ["scan_external_data", "scan_metadata_props"]

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


def _fields(read: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, value, size)`` of every field of the message between ``start`` and
    ``end``: a varint's value (size 0); a length-delimited payload's start offset and size. Fixed
    fields are skipped. Each field is read from its own offset, so the caller may move ``read``
    (read a payload, walk a nested message) between them."""
    pos = start
    while pos < end:
        read.seek(pos)
        key = _varint(read, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value = _varint(read, end)
            pos = read.tell()
            yield field, wire, value, 0
            continue
        if wire in _FIXED:
            size = _FIXED[wire]
        elif wire == 2:
            size = _varint(read, end)
        else:
            raise _Malformed(f"wire type {wire}")
        begin = read.tell()
        if begin + size > end:
            raise _Malformed("a field runs past the end")
        pos = begin + size
        if wire == 2:
            yield field, wire, begin, size


def _walk(read: BinaryIO, end: int, wanted: tuple[int, ...]) -> list[tuple[int, bytes]]:
    """``(field, payload)`` of every length-delimited field numbered in ``wanted``, in order, from
    ``read`` up to ``end``; every other field is skipped (seeked past)."""
    payloads = []
    for field, wire, begin, size in _fields(read, read.tell(), end):
        if wire == 2 and field in wanted:
            read.seek(begin)
            payloads.append((field, read.read(size)))
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


#: the messages that hold tensors, each field holding one and the kind of that field's message
#: (onnx.proto: ModelProto.graph and .functions, GraphProto.node, .initializer and
#: .sparse_initializer, FunctionProto.node and .attribute_proto, NodeProto.attribute,
#: AttributeProto.t, .g, .tensors, .graphs, .sparse_tensor(s), SparseTensorProto.values and .indices)
_HOLDERS = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 13, 14, 1  # TensorProto.external_data, .data_location, EXTERNAL


def _external_location(read: BinaryIO, start: int, end: int) -> str | None:
    """The ``location`` of a TensorProto whose ``data_location`` is EXTERNAL, else None."""
    location, external = None, False
    for field, wire, value, size in _fields(read, start, end):
        if field == _DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif field == _EXTERNAL_DATA and wire == 2:
            read.seek(value)
            key, text = _entry(read.read(size))
            location = text if key == "location" else location
    return location if external else None


def _locations(read: BinaryIO, kind: str, start: int, end: int, found: set[str]) -> None:
    """Add to ``found`` the external-data location of every tensor in the ``kind`` message."""
    if kind == "tensor":
        location = _external_location(read, start, end)
        if location is not None:
            found.add(location)
        return
    holders = _HOLDERS[kind]
    for field, wire, begin, size in _fields(read, start, end):
        if wire == 2 and field in holders:
            _locations(read, holders[field], begin, begin + size, found)


def scan_external_data(path: str | Path) -> list[str] | None:
    """The ``location`` of every tensor of the ONNX file at ``path`` stored as external data (in
    initializers, node attributes, subgraphs and functions, as ``onnx.external_data_helper`` finds
    them), sorted and as written in the file (not checked); None when the file is not a well-formed
    protobuf message. The weights themselves are seeked past, not read."""
    path = Path(path)
    found: set[str] = set()
    try:
        with open(path, "rb") as read:
            _locations(read, "model", 0, path.stat().st_size, found)
    except (_Malformed, UnicodeDecodeError, RecursionError):
        return None
    return sorted(found)
