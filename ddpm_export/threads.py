"""The CPU thread count of a command (``ddpm-export --threads N``), torch-free.

:func:`set_threads` records it for ONNX Runtime sessions created afterwards
(:func:`ddpm_export.runtime.onnxruntime_backend.create_session` reads :func:`get_threads` when the
caller passes no session options) and applies it to torch: now when torch is already imported,
else through ``OMP_NUM_THREADS`` which torch reads when it is imported.
"""

from __future__ import annotations

import os
import sys

from ddpm_export.checks import check_int

__all__ = ["MAX_THREADS", "check_threads", "get_threads", "set_threads"]

#: the most threads any engine is given: a million made ONNX Runtime allocate until the kernel
#: killed it (24 GB on a 2-core machine), and a thousand already ran 7x slower than two there
MAX_THREADS = 1024

_threads: int | None = None


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads (>= 1) in ONNX Runtime and torch; None keeps their defaults."""
    global _threads
    if n is None:
        _threads = None
        return
    check_threads("--threads", n)
    _threads = n = int(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def check_threads(name: str, n: object) -> None:
    """Refuse a thread count ``n`` that is not an int in ``[1, MAX_THREADS]`` (``name``: the flag or
    argument): WrongTypeError for no int (a bool, a float, a str), BadInputError out of range."""
    check_int(name, n, 1, MAX_THREADS, f"an int in [1, {MAX_THREADS}]")


def get_threads() -> int | None:
    """The thread count set by :func:`set_threads`, or None (the engines' defaults)."""
    return _threads
