"""The CPU thread count of a command (``ddpm-export --threads N``), torch-free.

:func:`set_threads` records it for ONNX Runtime sessions created afterwards
(:func:`ddpm_export.runtime.onnxruntime_backend.create_session` reads :func:`get_threads` when the
caller passes no session options) and applies it to torch: now when torch is already imported,
else through ``OMP_NUM_THREADS`` which torch reads when it is imported.
"""

from __future__ import annotations

import os
import sys

from ddpm_export.errors import BadInputError

__all__ = ["get_threads", "set_threads"]

_threads: int | None = None


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads (>= 1) in ONNX Runtime and torch; None keeps their defaults."""
    global _threads
    if n is None:
        _threads = None
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadInputError(f"--threads must be an int >= 1, got {n!r}")
    _threads = n
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def get_threads() -> int | None:
    """The thread count set by :func:`set_threads`, or None (the engines' defaults)."""
    return _threads
