"""One-line explanations of failed TensorRT builds, naming the node and giving a hint (torch-free).

Pure functions over what TensorRT reports -- the ONNX parser's errors (``IParserError``:
``node_name()``, ``node_operator()``, ``desc()``) and the builder's logged error lines -- so they
are tested on a CPU with TensorRT's own message formats.
"""

from __future__ import annotations

import re
from typing import Sequence

from ddpm_export.errors import DdpmExportError

__all__ = ["BuildFailed", "build_failure", "parse_failure"]

#: the ONNX ops of our attention forms that only ONNX Runtime runs
_ORT_ONLY = {"MultiHeadAttention": "com.microsoft.MultiHeadAttention is an ONNX Runtime contrib op",
             "Attention": "the opset-23 Attention op needs a TensorRT whose ONNX parser supports it"}
_OOM = re.compile(r"out of memory|outofmemory|cudaErrorMemoryAllocation|requested amount of gpu memory"
                  r"|insufficient (gpu )?memory|failed to allocate", re.IGNORECASE)
_NO_IMPL = re.compile(r"could not find any implementation for node (\S+?)[.)\]]*(?:\s|$)", re.IGNORECASE)
_NODE = re.compile(r"node[: ]+(\S+?)[.)\]:,]*(?:\s|$)", re.IGNORECASE)


class BuildFailed(DdpmExportError, RuntimeError):
    """TensorRT could not parse the ONNX file or build the engine; the message says where and why.

    Exit status 2 (the base's): a failed build of a valid file is a tooling or environment failure
    (an operator this TensorRT does not support, GPU memory, a tactic that does not fit the
    workspace), never a verification failure -- status 1 means only that an output disagrees
    with PyTorch or is not finite (:mod:`ddpm_export.errors`).
    """


def parse_failure(path: str, errors: Sequence[tuple[str, str, str]]) -> str:
    """``errors``: (node name, operator, description) per parser error; the first one explains."""
    if not errors:
        return f"{path}: TensorRT's ONNX parser failed without saying why (is it a valid ONNX file?)"
    name, op, desc = errors[0]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    if op in _ORT_ONLY:
        hint = (f"{_ORT_ONLY[op]}: re-export with `ddpm-export onnx --target tensorrt` "
                f"(decomposed attention, which TensorRT fuses)")
    else:
        hint = "the operator or its attributes are not supported by this TensorRT version; see `polygraphy inspect model`"
    return f"{path}: TensorRT cannot parse node {name!r} ({op}): {desc.strip()}{more}; hint: {hint}"


def build_failure(errors: Sequence[str], *, max_batch: int, workspace_mib: int | None) -> str:
    """Explain a failed ``build_serialized_network`` from the error lines TensorRT logged."""
    text = "\n".join(errors)
    workspace = "TensorRT's default" if workspace_mib is None else f"{workspace_mib} MiB"
    if _OOM.search(text):
        where = _node(text)
        return (f"TensorRT ran out of GPU memory while building{where}; hint: export a smaller --max-batch "
                f"(the profile goes up to {max_batch}), free the GPU from other processes, or lower "
                f"--builder-optimization-level; the workspace limit is {workspace}")
    match = _NO_IMPL.search(text)
    if match:
        return (f"TensorRT found no implementation for node {match.group(1)!r}; hint: raise --workspace "
                f"(now {workspace}) so more tactics fit, or re-export with --attention decomposed")
    last = errors[-1].strip() if errors else "no error was logged"
    return f"TensorRT could not build the engine: {last}"


def _node(text: str) -> str:
    match = _NODE.search(text)
    return f" (at node {match.group(1)!r})" if match else ""
