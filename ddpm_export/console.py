"""What the command line shows: the verbosity set by ``ddpm-export -v / -q`` and whether to draw
progress bars (torch-free). The library never draws one unless asked (``progress=True``)."""

from __future__ import annotations

import sys

import click

__all__ = ["VERBOSITY", "show_progress"]

#: ``click.Context.meta`` key: 0 quiet (``-q``), 1 normal, 2 verbose (``-v``).
VERBOSITY = "ddpm_export.verbosity"


def show_progress(flag: bool | None = None) -> bool:
    """Whether a command draws progress bars: ``flag`` when given (``--progress/--no-progress``),
    else on with ``-v``, off with ``-q``, otherwise when stderr is a terminal."""
    if flag is not None:
        return flag
    ctx = click.get_current_context(silent=True)
    verbosity = ctx.meta.get(VERBOSITY, 1) if ctx is not None else 1
    return verbosity == 2 or (verbosity == 1 and sys.stderr.isatty())
