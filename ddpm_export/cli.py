"""The ``ddpm-export`` command line (click). Subcommands import torch only when they need it.

Errors are turned into exit statuses here, and only here: a :class:`~ddpm_export.errors.DdpmExportError`
(or a missing module) prints one ``Error: ...`` line and exits with its kind's status -- 1 when a
verification failed or an output is not finite, 2 for bad input, integrity or environment
problems (:mod:`ddpm_export.errors`). ``--debug`` prints the traceback first, with the same line
and exit status. Usage errors are click's own (status 2).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
import re
import sys
import traceback
import warnings
from typing import Any, Iterator, NoReturn

import click

from ddpm_export import commands
from ddpm_export._version import __version__
from ddpm_export.configbase import ConfigFileError
from ddpm_export.console import FLAG_NAMES, VERBOSITY, IntRange, name_flags
from ddpm_export.errors import (BadInputError, DdpmExportError, DdpmExportWarning, describe, exit_status,
                                out_of_memory)
from ddpm_export.threads import MAX_THREADS, set_threads


#: the longest ``Error:`` line: a value read from a file (a 100 MB metadata string, a header entry)
#: was echoed whole, hundreds of MB on one line
MAX_MESSAGE = 2000


def _bounded(message: str) -> str:
    """``message`` with its middle left out when longer than :data:`MAX_MESSAGE` characters: its
    start names the file and field, its end says what to do."""
    if len(message) <= MAX_MESSAGE:
        return message
    head, tail = message[:MAX_MESSAGE * 3 // 4], message[-(MAX_MESSAGE // 4):]
    return f"{head} ...({len(message) - len(head) - len(tail)} characters left out)... {tail}"


#: C0 and C1 control characters and DEL: read from a file (a sidecar's string, a file name in a
#: bundle folder) and echoed raw, ESC sequences recoloured, cleared or retitled the terminal
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(message: str) -> str:
    """``message`` with each control character written as its Python escape (``\\x1b``, ``\\r``,
    ``\\n``): an ``Error:`` or ``Warning:`` line is one line, and no file's bytes drive the terminal."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], message)


class Failure(click.ClickException):
    """A handled error: click prints ``Error: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def _warnings_as_lines(quiet: bool) -> Iterator[None]:
    """While a command runs: ddpm-export's warnings (:class:`DdpmExportWarning`) as one ``Warning:
    ...`` line on stderr (none under ``-q``); other packages' warnings as Python shows them."""
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", DdpmExportWarning)
        else:
            python_show = warnings.showwarning

            def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                     line: str | None = None) -> None:
                if issubclass(category, DdpmExportWarning):
                    click.echo(f"Warning: {_printable(str(message))}", err=True)
                else:
                    python_show(message, category, filename, lineno, file, line)
            warnings.showwarning = show
        yield


def _stdout_to_devnull() -> None:
    """After a write to a closed stdout (`... | head`): no second error at exit's flush of it."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


#: ``click.Context.meta`` key: True once a SIGINT arrived while the command ran
_INTERRUPTED = "ddpm_export.interrupted"


def _interrupted(ctx: click.Context) -> NoReturn:
    """Exit 130 with one line (after the traceback with ``--debug``)."""
    if ctx.meta.get("ddpm_export.debug"):  # the traceback, then the same line and exit status
        traceback.print_exc(file=sys.stderr)
    click.echo("Error: interrupted; nothing was left half-written", err=True)
    raise SystemExit(130) from None


class _Main(click.Group):
    """The command group; maps errors to exit statuses for every subcommand."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # `ddpm-export --help` / `--version` print here, before invoke: click alone exited 1, silently
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError as e:
            _stdout_to_devnull()
            raise Failure(describe(e), exit_status(e)) from e

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # SIGINT: every ``finally`` has run, no temp file is left
            _interrupted(ctx)
        except Exception as e:  # noqa: BLE001 -- ours, a missing module, a file, an engine out of memory
            if ctx.meta.get(_INTERRUPTED):  # a library turned the SIGINT into its own error
                _interrupted(ctx)
            if not isinstance(e, (DdpmExportError, ImportError, OSError)) and not out_of_memory(e):
                raise  # a bug: Python's traceback
            if isinstance(e, BrokenPipeError):
                _stdout_to_devnull()
            if ctx.meta.get("ddpm_export.debug"):  # the traceback, then the same line and exit status
                traceback.print_exc(file=sys.stderr)
            message = _bounded(_printable(describe(e)))
            from_file = isinstance(e, ConfigFileError) or isinstance(e.__cause__, ConfigFileError)
            if isinstance(e, BadInputError) and not from_file:  # the library names its arguments; the user typed flags
                message = name_flags(message, ctx.meta.get(FLAG_NAMES, {}))
            raise Failure(message, exit_status(e)) from e


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="ddpm-export")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error before its line (same exit status).")
@click.option("-v", "--verbose", is_flag=True, help="Progress bars even when stderr is not a terminal.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (stderr); no progress bars.")
@click.option("--threads", type=IntRange(1, MAX_THREADS), default=None,
              help="CPU threads for ONNX Runtime, OpenVINO and PyTorch [default: ONNX Runtime 1 for ONNX files "
                   "under 16 MiB, where a second thread was slower; else each engine's own].")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool, quiet: bool, threads: int | None) -> None:
    """Take a DDPM U-Net from PyTorch to ONNX / TensorRT and sample it without PyTorch.

    \b
    Typical flow:
      ddpm-export models                      # the shipped presets and their sizes
      ddpm-export onnx --model tiny -o tiny.onnx
      ddpm-export sample --onnx tiny.onnx -n 16 -o grid.png
      ddpm-export verify --model tiny --onnx tiny.onnx
    \b
    Exit status: 0 success, 1 verification failed or non-finite output, 2 bad input, usage
    or environment (e.g. a missing optional dependency).
    """
    if verbose and quiet:
        raise click.UsageError("-q (print nothing but errors) and -v (progress bars) contradict each other: pass one")
    ctx.meta["ddpm_export.debug"] = debug
    verbosity = 0 if quiet else 2 if verbose else 1
    ctx.meta[VERBOSITY] = verbosity
    if verbosity == 0:  # -q: the commands' stdout lines are dropped; errors (stderr) still show
        ctx.with_resource(contextlib.redirect_stdout(io.StringIO()))
    ctx.with_resource(_warnings_as_lines(quiet=verbosity == 0))
    set_threads(threads)
    ctx.call_on_close(lambda: set_threads(None))
    _exit_cleanly_on_signals(ctx)



def _exit_cleanly_on_signals(ctx: click.Context) -> None:
    """While a command runs, SIGTERM raises SystemExit(143) like SIGINT raises KeyboardInterrupt,
    so that every ``finally`` runs and no temporary file is left (``ddpm_export.files``); and a
    SIGINT is remembered (:data:`_INTERRUPTED`), for the libraries that turn the KeyboardInterrupt
    raised inside their set-up into another error (a Ctrl-C as onnxruntime loads read "import numpy
    failed", exit 2). Python's own SIGINT handler only is replaced; the previous handlers are
    restored afterwards. Main thread only."""
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def interrupt(signum: int, frame: Any) -> None:
        ctx.meta[_INTERRUPTED] = True
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGTERM, stop)
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
        ctx.call_on_close(lambda: signal.signal(signal.SIGINT, signal.default_int_handler))


def _register_commands() -> None:
    """Every module of ``ddpm_export.commands`` defines one click command named ``command``."""
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        main.add_command(module.command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
