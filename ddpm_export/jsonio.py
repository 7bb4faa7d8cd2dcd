"""JSON text parsed with one error type for every malformed input (torch-free, no project imports).

Python's ``json`` raises ``RecursionError``, not ``ValueError``, for arrays or objects nested past
its parser's depth (``'[' * 100000``): each reader of a user's file caught it beside ``ValueError``
or ended in a traceback. :func:`parse_json` raises ``ValueError`` for it too.
"""

from __future__ import annotations

import json
from typing import Any, Callable

__all__ = ["parse_json"]


def parse_json(text: str | bytes, *,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """``json.loads(text)``; ValueError for any malformed JSON, nesting past the parser's depth included."""
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError("nested deeper than the JSON parser can read") from None
