"""JSON text parsed with one error type for every malformed input (torch-free, no project imports).

Python's ``json`` raises ``RecursionError``, not ``ValueError``, for arrays or objects nested past
its parser's depth (``'[' * 100000``): each reader of a user's file caught it beside ``ValueError``
or ended in a traceback. :func:`parse_json` raises ``ValueError`` for it too, and for an object
that gives a key twice, which ``json`` merges silently (the last one wins).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_json"]


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``; ValueError for any malformed JSON, nesting past the parser's depth
    and a key given twice in one object included."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested deeper than the JSON parser can read") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; ValueError for a key given twice (json keeps the last one
    silently: an edited ``beta_end`` above an old one was ignored, a bundle manifest's second
    ``files`` list hid the first)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} is given twice")
        seen.add(key)
    return dict(pairs)
