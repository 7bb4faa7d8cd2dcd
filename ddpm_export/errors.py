"""The exceptions of ddpm-export: one base, a few kinds, each mapped to one exit status (torch-free).

Every error the package raises on purpose derives from :class:`DdpmExportError`; the CLI
(:mod:`ddpm_export.cli`) turns it into a one-line message and the exit status of its kind:

==============================  ======  ===================================================
kind                            status  meaning
==============================  ======  ===================================================
:class:`BadInputError`          2       an argument, flag, file or config value is wrong
:class:`IntegrityError`         2       a file was altered or does not belong with another
:class:`MissingDependencyError` 2       an optional package, a GPU or a driver is missing
:class:`EngineError`            2       ONNX Runtime or OpenVINO failed on a model call
:class:`VerificationFailed`     1       an export disagrees with PyTorch beyond its limits
:class:`NonFiniteOutputError`   1       a model produced NaN or infinity
==============================  ======  ===================================================

An error of no kind derives from :class:`DdpmExportError` itself and keeps its status 2: a tool
failing on valid input in this environment, e.g. a TensorRT build that fails on an unsupported
operator or out of GPU memory (``export.trt_failures.BuildFailed``) -- never status 1, which only
says that an output disagrees with PyTorch or is not finite.

The kinds also derive from the built-in exception callers caught before this module existed
(``ValueError``, ``ImportError``, ``RuntimeError``, ``FileExistsError``), so ``except ValueError``
keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import re
from collections.abc import Iterator
from importlib import metadata
from types import ModuleType

__all__ = ["BadInputError", "DdpmExportError", "DdpmExportWarning", "EngineError", "InputNotFoundError",
           "IntegrityError", "MissingDependencyError", "NonFiniteOutputError", "NotAFolderError",
           "OutputExistsError", "TargetMismatchWarning", "VerificationFailed", "WrongTypeError", "describe",
           "check_onnxruntime", "exit_status", "export_extra_needed", "load_error", "ort_gpu_hint", "out_of_memory",
           "without_ort_status"]

#: Modules of the ``export`` extra: a command that imports one needs ``pip install 'ddpm-export[export]'``.
EXPORT_EXTRA = ("torch", "onnx", "safetensors", "polygraphy")
#: How to install the CPU build of the torch the ``export`` extra allows (pyproject.toml's pin) before it.
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


class DdpmExportError(Exception):
    """Base of every deliberate ddpm-export error; ``exit_status`` is the CLI's exit code for it."""

    exit_status = 2


class BadInputError(DdpmExportError, ValueError):
    """An argument, flag, input file or config value is wrong; the message names it."""


class WrongTypeError(BadInputError, TypeError):
    """An argument has the wrong Python type (e.g. a list where a numpy array is needed)."""


class OutputExistsError(BadInputError, FileExistsError):
    """An output file or folder exists and ``--force`` was not given."""


class InputNotFoundError(BadInputError, FileNotFoundError):
    """An input file or folder named by the caller does not exist (or is not the kind of file it
    must be). For a path that does not exist it carries, like any ``FileNotFoundError``, the path
    as ``filename`` and ``errno`` ENOENT (the raiser gives the path only then); its message is the
    one given."""

    def __init__(self, message: str, filename: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        if filename is not None:
            self.errno, self.filename = errno.ENOENT, os.fspath(filename)

    def __str__(self) -> str:  # OSError's would be "[Errno 2] None: 'path'" once errno is set
        return str(self.args[0])


class NotAFolderError(BadInputError, NotADirectoryError):
    """A path that must be a folder is a file."""


class CheckpointError(BadInputError):
    """A checkpoint folder or file is missing, malformed or does not match its config."""


class IntegrityError(DdpmExportError, ValueError):
    """A file does not match its recorded sha256, or was built from another file or version."""


class MissingDependencyError(DdpmExportError, ImportError):
    """An optional dependency (tensorrt, cuda-python, matplotlib, onnx...) or a GPU is missing."""


class EngineError(DdpmExportError, RuntimeError):
    """The engine (ONNX Runtime, OpenVINO, TensorRT or CUDA) failed on a model call that passed every
    check: a graph it cannot run at this batch size, memory it cannot allocate, a plan it cannot
    deserialise. The message gives the engine's own."""


class VerificationFailed(DdpmExportError, RuntimeError):
    """An export or engine disagrees with the PyTorch reference beyond its limits."""

    exit_status = 1


class NonFiniteOutputError(VerificationFailed):
    """A model call produced NaN or infinity."""


class DdpmExportWarning(UserWarning):
    """Base of ddpm-export's warnings: the work goes on, but the caller should know (the CLI prints
    ``Warning: ...`` on stderr, nothing under ``-q``)."""


class TargetMismatchWarning(DdpmExportWarning):
    """A file exported for one runtime (``--target``) is loaded on another, where it runs slower."""


def exit_status(error: BaseException) -> int:
    """The CLI exit status of ``error``: its kind's status; 2 for a missing module, an operating
    system error (a file that cannot be read or written) or an allocation that failed
    (:func:`out_of_memory`): the environment; else 1."""
    if isinstance(error, DdpmExportError):
        return error.exit_status
    return 2 if isinstance(error, (ImportError, OSError)) or out_of_memory(error) else 1


#: how PyTorch, ONNX Runtime and OpenVINO say that an allocation failed
_MEMORY_TEXT = ("can't allocate memory", "bad_alloc", "out of memory", "Failed to allocate memory")


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (Python's MemoryError, or an engine's error
    saying so): the machine's limit, not the model's fault nor the user's input (exit 2)."""
    return isinstance(error, MemoryError) or (not isinstance(error, OSError)
                                              and any(text in str(error) for text in _MEMORY_TEXT))


#: ONNX Runtime's ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : `` before its message
_ORT_STATUS = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
#: a C++ source location and function inside it (``Error: tensorprotoutils.cc:619 ValidateExternalDataPathFromDir ``)
_CPP_SOURCE = re.compile(r"\b[\w/.-]+\.(?:cc|cpp|h):\d+ [\w:~<>]+ ")


def without_ort_status(text: str) -> str:
    """``text`` without ONNX Runtime's ``[ONNXRuntimeError] : 7 : INVALID_PROTOBUF :`` prefix."""
    return _ORT_STATUS.sub("", text)


def load_error(error: BaseException) -> str:
    """The first line of an ONNX Runtime load error without its ``[ONNXRuntimeError] : 7 :
    INVALID_PROTOBUF :`` prefix nor C++ source locations: what is wrong with the file."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return _CPP_SOURCE.sub("", without_ort_status(text))[:300]


def ort_gpu_hint() -> str:
    """How to get ONNX Runtime's GPU build. Where onnxruntime-gpu is installed beside onnxruntime (a
    later ``pip install ddpm-export[...]`` brings the CPU build back: the two share one
    ``onnxruntime`` folder, which the last installed holds), installing it again changes nothing:
    say how to undo the clash."""
    try:
        gpu = metadata.version("onnxruntime-gpu")
        metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return "install onnxruntime-gpu in place of onnxruntime on a machine with an NVIDIA GPU"
    return (f"onnxruntime-gpu {gpu} is installed, but so is onnxruntime (pip brings it back with ddpm-export), "
            f"whose CPU build now holds the folder they share: pip uninstall -y onnxruntime onnxruntime-gpu && "
            f"pip install onnxruntime-gpu=={gpu}")


def check_onnxruntime(module: ModuleType) -> None:
    """Refuse an ``onnxruntime`` that imported as an empty namespace package (no ``__init__.py``):
    what pip leaves of the folder onnxruntime and onnxruntime-gpu share when one of the two is
    uninstalled while both were installed. Its import succeeds and its first use was an
    AttributeError traceback (``module 'onnxruntime' has no attribute 'SessionOptions'``)."""
    if module.__file__ is None:
        folder = next(iter(module.__path__), "onnxruntime")
        raise MissingDependencyError(
            f"ONNX Runtime is broken here: {folder} holds no onnxruntime package, only what pip left of the folder "
            f"that onnxruntime and onnxruntime-gpu share when one of them was uninstalled; reinstall one: pip "
            f"uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime (or onnxruntime-gpu)")


def describe(error: BaseException) -> str:
    """The one-line message of ``error`` for the CLI: a missing module of the export extra (or
    onnxruntime) says what to install; a closed stdout says so; an operating-system error names
    the file and what to do; an allocation that failed gives the engine's first line and what to
    lower."""
    if isinstance(error, DdpmExportError):
        return str(error)
    if isinstance(error, BrokenPipeError):  # `... | head`: the reader of stdout exited
        return "stdout was closed (the command reading this one's output exited); nothing was left half-written"
    if out_of_memory(error):
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return (f"out of memory ({type(error).__name__}: {first[:200]}): lower the batch (--batch, -n), the input "
                f"size or the number of samples, or free memory")
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in EXPORT_EXTRA:
        return _export_extra_message("this command", str(error.name))
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "onnxruntime":
        return ("this needs ONNX Runtime, a dependency of ddpm-export that is not installed here: "
                "pip install onnxruntime (or onnxruntime-gpu)")
    if isinstance(error, OSError) and not isinstance(error, ImportError):
        where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None) or "a file"
        return (f"{where}: {error.strerror or error} -- check that the folder exists, is writable "
                f"and has free space")
    return str(error)


def _export_extra_message(what: str, module: str) -> str:
    """``what`` needs the export extra, whose ``module`` is missing: what to install (torch's CPU
    build first where torch is missing too)."""
    torch_first = "" if importlib.util.find_spec("torch") is not None else (
        f" (first the CPU build of torch, or pip takes the multi-GB CUDA one on Linux: {CPU_TORCH})")
    return f"{what} needs the export extra (no module {module!r}): pip install 'ddpm-export[export]'{torch_first}"


@contextlib.contextmanager
def export_extra_needed(what: str) -> Iterator[None]:
    """Inside: a missing module of the export extra is a MissingDependencyError saying that ``what``
    needs the extra and how to install it (the library's callers get the CLI's line, not a bare
    ModuleNotFoundError)."""
    try:
        yield
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in EXPORT_EXTRA:
            raise
        raise MissingDependencyError(_export_extra_message(what, str(e.name))) from e
