"""Reading an exported graph (onnx only, no torch): element types of every tensor and the
time-embedding subgraph, for checking the fp16 precision policy (used by the tests)."""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import TensorProto

FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
               TensorProto.DOUBLE: "float64"}


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (inputs, initializers, node outputs) after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def cast_to(node: onnx.NodeProto) -> int | None:
    """The element type a Cast node casts to; None for any other node."""
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def embedding_subgraph(model: onnx.ModelProto, input_name: str = "t") -> tuple[list[onnx.NodeProto], list[str]]:
    """Nodes computing from ``input_name`` until the value is cast to float16.

    Returns (nodes, boundary tensors): the boundary tensors are the float32 values that the
    Cast-to-float16 nodes read, i.e. the embedding as the rest of the network receives it.
    In an fp32 graph there is no such boundary and the walk covers everything downstream.
    """
    users = consumers(model)
    seen: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    boundary: list[str] = []
    frontier = [input_name]
    while frontier:
        name = frontier.pop()
        for node in users.get(name, []):
            key = node.name or node.output[0]
            if key in seen:
                continue
            seen.add(key)
            if cast_to(node) == TensorProto.FLOAT16:
                boundary.append(node.input[0])
                continue
            nodes.append(node)
            frontier.extend(node.output)
    return nodes, sorted(set(boundary))
