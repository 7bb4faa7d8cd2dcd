"""TensorRT layer names -> the blocks and op categories of :mod:`ddpm_export.analysis.profile`.

A TensorRT layer is named after the ONNX node(s) it was built from, as ``ddpm-export onnx``
named them: one node (``/unet/resnets.0/conv1_2/Conv``), a fusion (``A + B``, ``PWN(A, B)``),
a Myelin region (``{ForeignNode[first.../last]}``, the graph-ordered span from ``first`` to
``last``) or a copy TensorRT inserted (``Reformatting CopyNode for Input Tensor 0 to A``).

The exported file names scopes by the *last* module name only (``resnets.0`` at every level;
a repeated scope gets ``_1``, ``_2``... in call order), so a name alone does not say which block
it is in. :func:`scope_map` therefore traces the model twice, once with the exporter's names and
once with qualified ones (:func:`~ddpm_export.analysis.profile.qualified_scope_names`): the two
graphs are node-for-node the same trace, so zipping them maps each exported node name, and each
exported scope, to the qualified module that produced it.

A layer's time goes to one (block, category): its constituents are classified as in the ONNX
Runtime profile, the layer takes the first category of :data:`CATEGORIES` any of them has (a
``Conv + Add`` fusion is conv time) and the block of the first constituent of that category.
Copies TensorRT inserts are ``layout`` time of the block they feed; layers naming no node
of the model (shape bookkeeping, ``[trainStation]``) are ``elementwise`` time of ``(glue)``.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable, Mapping

from ddpm_export.analysis.blocks import block_names
from ddpm_export.analysis.profile import CATEGORIES, GLUE, _block_of, _classify, _module_of, qualified_scope_names
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.export.attention_forms import AUTO_ATTENTION
from ddpm_export.export.onnx import DEFAULT_OPSET, trace_to_onnx
from ddpm_export.export.rewrites import resolve_rewrites
from ddpm_export.nn.unet import UNet

__all__ = ["LayerMap", "LayerProfile", "layer_map", "node_names", "place_layer", "scope_map", "summarise_layers"]

_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")
_FOREIGN = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
_SPLIT = re.compile(r"[\s,()\[\]{}]+|\+")
_OP = re.compile(r"_\d+$")


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """What is needed to place a layer: exported node name -> qualified module (None: the
    U-Net's own ops), exported scope -> module, the exported node order, and the model's
    module classes and blocks (longest name first)."""

    nodes: Mapping[str, str | None]
    scopes: Mapping[str, str | None]
    order: tuple[str, ...]
    kinds: Mapping[str, type]
    blocks: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Layer time in microseconds summed over ``runs`` engine calls at ``batch``."""

    runs: int
    batch: int
    total_us: float
    by_category: dict[str, float]
    by_block: dict[str, float]
    by_layer: dict[str, float]  # the layers as TensorRT names them
    unplaced_us: float          # time of layers naming no node of the model

    def share(self, us: float) -> float:
        return us / self.total_us if self.total_us else 0.0


def scope_map(unet: UNet) -> tuple[dict[str, str | None], dict[str, str | None], tuple[str, ...]]:
    """``(node -> module, scope -> module, node order)`` of the graph ``ddpm-export onnx --target
    tensorrt`` exports for ``unet`` (fp32; its attention form and rewrites as ``auto`` picks them
    for TensorRT), from two traces zipped node for node."""
    spec = ExportSpec.from_config(unet.config, min_batch=1, opt_batch=2, max_batch=2)
    form = AUTO_ATTENTION["tensorrt"]
    rewrites = resolve_rewrites("auto", "fp32", "tensorrt")
    plain = trace_to_onnx(unet, spec, precision="fp32", attention=form, opset=DEFAULT_OPSET, rewrites=rewrites)
    with qualified_scope_names():
        qualified = trace_to_onnx(unet, spec, precision="fp32", attention=form, opset=DEFAULT_OPSET, rewrites=rewrites)
    if [n.op_type for n in plain.graph.node] != [n.op_type for n in qualified.graph.node]:
        raise RuntimeError("the two traces of the model differ; cannot map TensorRT layer names to blocks")
    nodes: dict[str, str | None] = {}
    scopes: dict[str, str | None] = {}
    for a, b in zip(plain.graph.node, qualified.graph.node):
        module = _module_of(b.name)
        nodes[a.name] = module
        scopes.setdefault(a.name.rpartition("/")[0], module)
    return nodes, scopes, tuple(n.name for n in plain.graph.node)


def layer_map(unet: UNet) -> LayerMap:
    """The :class:`LayerMap` of ``unet`` (two ONNX traces: about a second for the tiny preset)."""
    nodes, scopes, order = scope_map(unet)
    blocks = block_names(unet)
    return LayerMap(nodes, scopes, order, {name: type(m) for name, m in unet.named_modules()}, blocks)


def node_names(layer: str, lmap: LayerMap) -> tuple[list[str], bool]:
    """The exported node names a TensorRT layer name carries, in order, and whether the layer is
    a copy TensorRT inserted. A ``ForeignNode[a...b]`` stands for every node from ``a`` to ``b``."""
    found = _REFORMAT.match(layer)
    if found:
        return [t for t in _tokens(found.group(1)) if _known(t, lmap)], True
    names: list[str] = []
    for first, last in _FOREIGN.findall(layer):
        if first in lmap.nodes and last in lmap.nodes:
            i, j = lmap.order.index(first), lmap.order.index(last)
            names += lmap.order[min(i, j):max(i, j) + 1]
        layer = layer.replace(f"{first}...{last}", f"{first} {last}")
    names += [t for t in _tokens(layer) if _known(t, lmap) and t not in names]
    return names, False


def _tokens(text: str) -> list[str]:
    return [t for t in _SPLIT.split(text) if t]


def _known(token: str, lmap: LayerMap) -> bool:
    """A node of the graph, or a name TensorRT derived from one (in a scope of the graph)."""
    scope = token.rpartition("/")[0]
    return token in lmap.nodes or (bool(scope) and scope in lmap.scopes)


def _module(node: str, lmap: LayerMap) -> str | None:
    return lmap.nodes[node] if node in lmap.nodes else lmap.scopes.get(node.rpartition("/")[0])


def place_layer(layer: str, lmap: LayerMap) -> tuple[str, str] | None:
    """``(block, category)`` of one TensorRT layer; None when it names no node of the model."""
    names, copy = node_names(layer, lmap)
    if not names:
        return None
    placed = []
    for node in names:
        module = _module(node, lmap)
        op = _OP.sub("", node.rpartition("/")[2])
        placed.append((_block_of(module, lmap.blocks), _classify(op, module, lmap.kinds)))
    if copy:
        return placed[0][0], "layout"
    rank = {c: i for i, c in enumerate(CATEGORIES)}
    return min(placed, key=lambda bc: rank[bc[1]])


def summarise_layers(reports: Iterable[tuple[str, float]], lmap: LayerMap, *, runs: int, batch: int) -> LayerProfile:
    """Sum ``(layer name, milliseconds)`` reports (the calls after warm-up) per category and block."""
    by_category: dict[str, float] = collections.Counter({c: 0.0 for c in CATEGORIES})
    by_block: dict[str, float] = collections.Counter()
    by_layer: dict[str, float] = collections.Counter()
    unplaced = 0.0
    cache: dict[str, tuple[str, str] | None] = {}
    for layer, ms in reports:
        us = 1e3 * float(ms)
        if layer not in cache:
            cache[layer] = place_layer(layer, lmap)
        block, category = cache[layer] or (GLUE, "elementwise")
        unplaced += us if cache[layer] is None else 0.0
        by_category[category] += us
        by_block[block] += us
        by_layer[layer] += us
    total = float(sum(by_category.values()))
    return LayerProfile(runs, batch, total, dict(by_category), dict(by_block), dict(by_layer), unplaced)
