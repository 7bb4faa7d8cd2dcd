"""The header of a safetensors file, read without torch or the safetensors package.

A safetensors file is ``<u64 little-endian header length N> <N bytes of JSON> <tensor bytes>``;
the JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
into the bytes after the header) plus an optional ``__metadata__`` entry. Used to count a
checkpoint's parameters torch-free (``ddpm-export models``) and to refuse a truncated file
before any tensor is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ddpm_export.errors import BadInputError
from ddpm_export.jsonio import parse_json

__all__ = ["MAX_HEADER_BYTES", "parameter_count", "read_header"]

#: The safetensors format's own cap on the header (100 MB).
MAX_HEADER_BYTES = 100_000_000


def read_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> ``{"dtype", "shape", "data_offsets"}`` of the safetensors file ``path``.

    Raises BadInputError naming the file when it is shorter than its header says, when the
    header is not the JSON object the format defines, or when a tensor's bytes lie past the end.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise BadInputError(f"{path}: not a safetensors file or truncated ({size} bytes; header length "
                                f"{n if n >= 0 else 'unreadable'}); write it again (ddpm-export: `save_checkpoint` "
                                f"or `tools/train.py`; diffusers: `save_pretrained`)")
        try:
            header = parse_json(f.read(n))
        except ValueError as e:
            raise BadInputError(f"{path}: the safetensors header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise BadInputError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data = size - 8 - n
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"]))
        if not ok:
            raise BadInputError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}")
        if entry["data_offsets"][1] > data:
            raise BadInputError(f"{path}: truncated: tensor {name!r} ends at byte {entry['data_offsets'][1]} "
                                f"of the data, which has only {data}; write the file again")
    return header


def parameter_count(path: str | Path) -> int:
    """The number of values in every tensor of the safetensors file ``path``."""
    return sum(math.prod(entry["shape"]) for entry in read_header(path).values())
