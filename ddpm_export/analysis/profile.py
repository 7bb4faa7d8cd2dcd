"""Where the time goes once exported: ONNX Runtime's profiler over a few model calls.

The model is traced to ONNX (fp32; attention as ``ort-mha``, one fused ``MultiHeadAttention`` node
per block, which ran 0.98-1.21x the decomposed form's time in ONNX Runtime: README, "Speed")
with every node named after the full module path that produced it (``/unet/unet.down.1.resnets.0/
unet.down.1.resnets.0.conv1/Conv``). The TorchScript exporter names scopes by the *last* module
name only (``resnets.0`` for every level), so for this trace only its module map is replaced by
one with qualified names (a private hook of torch 2.x's exporter, patched and restored here; the
exported files of ``ddpm-export onnx`` are untouched).

Each node's kernel time (the ``*_kernel_time`` events, first warm-up call excluded) goes to
- a **category**: ``conv`` (Conv nodes), ``attention`` (attention kernels and everything inside
  an ``Attention`` module: projections, reshapes), ``normalization`` (every node inside a norm
  module: InstanceNormalization and the reshapes and affine around it), ``linear`` (other
  Gemm / MatMul: embeddings, conditioning projections), ``layout`` (the ``ReorderInput`` /
  ``ReorderOutput`` nodes ONNX Runtime inserts into and out of its blocked NCHWc convolution
  layout: 6.5% of tiny's kernel time), ``elementwise`` (the rest: activations, adds,
  concatenation of skips, casts, resizes);
- the **block** (:func:`ddpm_export.analysis.blocks.iter_blocks`) whose module produced it,
  ``(layout reorders)`` for ONNX Runtime's reorders (inserted nodes: no module scope), or
  ``(glue)`` for the U-Net's own ops (skip concatenation, casts at the boundary).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import onnx
import onnxruntime as ort
import torch

from ddpm_export.analysis.blocks import block_names
from ddpm_export.export.onnx import DEFAULT_OPSET, trace_to_onnx
from ddpm_export.export.rewrites import resolve_rewrites
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.nn.attention import Attention
from ddpm_export.nn.layers import BatchNorm32, GroupNorm32
from ddpm_export.nn.unet import UNet
from ddpm_export.runtime.onnxruntime_backend import create_session, session_options_for

__all__ = ["CATEGORIES", "GLUE", "LAYOUT", "Profile", "profile_onnxruntime", "qualified_scope_names"]

CATEGORIES = ("conv", "attention", "normalization", "linear", "layout", "elementwise")
GLUE = "(glue)"
LAYOUT = "(layout reorders)"
_LAYOUT_OPS = {"ReorderInput", "ReorderOutput"}
_ATTENTION_OPS = {"MultiHeadAttention", "Attention", "Softmax"}
_NORM_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Kernel time in microseconds of ``runs`` calls at ``batch``, per category and per block: each
    node's median over the calls, times ``runs`` (a call slowed by another process on the machine
    must not dominate the shares, as it did in a plain sum)."""

    runs: int
    batch: int
    threads: int
    total_us: float
    by_category: dict[str, float]
    by_block: dict[str, float]
    by_op: dict[str, float]


@contextlib.contextmanager
def qualified_scope_names() -> Iterator[None]:
    """While active, ``torch.onnx.export(dynamo=False)`` names node scopes by qualified module names."""
    from torch.onnx._internal.torchscript_exporter import utils as ts_utils

    original = ts_utils._setup_trace_module_map

    def setup(model: torch.nn.Module, export_modules_as_functions: object) -> object:
        result = original(model, export_modules_as_functions)
        torch.jit._trace._trace_module_map = {
            m: torch._C._jit_onnx_create_full_scope_name(torch.typename(type(m)), n)
            for n, m in model.named_modules()}
        return result

    ts_utils._setup_trace_module_map = setup
    try:
        yield
    finally:
        ts_utils._setup_trace_module_map = original


def _module_of(node_name: str) -> str | None:
    """``/unet/unet.down.0.resnets.0/unet.down.0.resnets.0.conv1/Conv`` -> ``down.0.resnets.0.conv1``."""
    scopes = [s for s in node_name.split("/")[:-1] if s.startswith("unet.")]
    return scopes[-1].removeprefix("unet.") if scopes else None


def _classify(op: str, module: str | None, kinds: dict[str, type]) -> str:
    if op in ("Conv", "FusedConv", "ConvTranspose"):
        return "conv"
    if op in _LAYOUT_OPS:
        return "layout"
    chain = [] if module is None else [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)]
    classes = [kinds.get(name) for name in chain]
    if op in _ATTENTION_OPS or any(c is Attention for c in classes):
        return "attention"
    if op in _NORM_OPS or any(c in (GroupNorm32, BatchNorm32) for c in classes):
        return "normalization"
    if op in ("Gemm", "MatMul", "FusedGemm", "FusedMatMul"):
        return "linear"
    return "elementwise"


def _block_of(module: str | None, blocks: Sequence[str]) -> str:
    if module is None:
        return GLUE
    return next((b for b in blocks if module == b or module.startswith(b + ".")), GLUE)


def profile_onnxruntime(unet: UNet, *, batch: int = 1, runs: int = 5, threads: int = 1, seed: int = 0) -> Profile:
    """Trace ``unet`` to ONNX (in a temporary folder; with the exact rewrites an fp32 export for
    ONNX Runtime gets), run it ``runs + 1`` times at ``batch`` with ONNX Runtime's profiler on
    (CPU provider, ``threads`` intra-op threads) and add up kernel times (:class:`Profile`)."""
    spec = ExportSpec.from_config(unet.config, min_batch=1, opt_batch=max(batch, 1), max_batch=max(batch, 2))
    rewrites = resolve_rewrites("auto", "fp32", "onnxruntime")
    with qualified_scope_names():
        proto = trace_to_onnx(unet, spec, precision="fp32", attention="ort-mha", opset=DEFAULT_OPSET,
                              rewrites=rewrites)
    kinds = {name: type(m) for name, m in unet.named_modules()}
    blocks = block_names(unet)
    with tempfile.TemporaryDirectory(prefix="ddpm-inspect-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(proto, str(path))
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = create_session(path, providers=["CPUExecutionProvider"],
                                 session_options=session_options_for(threads, options))
        for i in range(runs + 1):  # sample_inputs draws t over [0, T) too
            session.run(None, spec.sample_inputs(batch, seed=seed + i))
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    return _summarise(events, kinds, blocks, runs, batch, threads)


def _summarise(events: list[dict], kinds: dict[str, type], blocks: Sequence[str], runs: int, batch: int,
               threads: int) -> Profile:
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_end = model_runs[0]["ts"] + model_runs[0]["dur"] if model_runs else -1
    durations: dict[tuple[str, str], list[float]] = collections.defaultdict(list)  # (node, op) -> per call
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] <= warm_end:
            continue
        durations[name.removesuffix("_kernel_time"), e.get("args", {}).get("op_name", "?")].append(e["dur"])
    by_category: dict[str, float] = collections.Counter({c: 0.0 for c in CATEGORIES})
    by_block: dict[str, float] = collections.Counter()
    by_op: dict[str, float] = collections.Counter()
    for (node, op), times in durations.items():
        us = statistics.median(times) * runs
        module = _module_of(node)
        by_category[_classify(op, module, kinds)] += us
        by_block[LAYOUT if op in _LAYOUT_OPS else _block_of(module, blocks)] += us
        by_op[op] += us
    total = float(sum(by_category.values()))
    return Profile(runs, batch, threads, total, dict(by_category), dict(by_block), dict(by_op))
