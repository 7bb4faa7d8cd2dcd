"""fp32 ONNX file (written by ``ddpm-export onnx``) -> the fp16-typed graph of the same precision
policy, with ``onnx`` alone (no torch, no model source needed).

``ddpm-export onnx --precision fp16`` writes the policy into the model before tracing; this pass
reaches the same graph from an fp32 file, so that ``ddpm-export trt --fp16`` works on any of our
files. The policy (:data:`~ddpm_export.export.precision_policy.FP32_ISLANDS`) is found in the fp32
graph, which records it: torch's tracer keeps the model's ``.float()`` / ``.to(x.dtype)`` calls as
float -> float ``Cast`` nodes, and names every node by its module scope (``/unet/resnets.0/norm2/...``).

fp32 islands (:func:`fp32_islands`):
- ``embedding``: every node computing floats from the integer inputs (``t``, ``class_labels``)
  up to the recorded ``emb.to(x.dtype)`` cast: sinusoid or table, the MLP, the class embedding.
- ``normalization``: every node in the module scope of a normalization op (the cast in, the
  statistics, the affine, the cast out).
- ``softmax``: each ``Softmax`` with the ``Add`` (attention bias) / ``Cast`` chain feeding it.
- ``parameters``: computations on parameters only (position codes: sinusoids of learned
  frequencies, the relative-bias gather) and the constants that only fp32 nodes read.

Everything else -- convolutions, linears, activations, q/k/v, the q k^T product -- becomes
float16, with float32 graph inputs and outputs. The conversion is ONNX Runtime's
``onnxruntime.transformers.float16.convert_float_to_float16`` with these nodes blocked; it leaves
an fp32 -> fp16 -> fp32 round trip on every edge between two blocked nodes, which
:func:`_remove_round_trips` takes out (the islands must stay float32 end to end), together with
casts to the type a tensor already has.
"""

from __future__ import annotations

from pathlib import Path
import onnx
from onnx import TensorProto

from ddpm_export.contract import metadata as md
from ddpm_export.errors import BadInputError
from ddpm_export.export.graph import FLOAT_TYPES, cast_to, consumers, tensor_types
from ddpm_export.export.precision_policy import policy
from ddpm_export.files import atomic_file, refuse_existing_file

__all__ = ["FP16_PASS", "NORM_OPS", "convert_file", "convert_model", "fp32_islands"]

#: metadata key recording that a file was made by this pass (and from which fp32 file)
FP16_PASS = md.PREFIX + "fp16_pass"
NORM_OPS = ("InstanceNormalization", "BatchNormalization", "GroupNormalization", "LayerNormalization")
#: nodes that only hold or alias a value: kept fp32 only when every reader is fp32
_HOLDERS = ("Constant", "Identity")
#: inputs that ONNX (and TensorRT) want in float32 whatever the data's type: Resize's scales
_FLOAT32_INPUTS = {"Resize": (2,)}


def _scope(name: str) -> str:
    """``/unet/resnets.0/norm2/InstanceNormalization`` -> ``/unet/resnets.0/norm2/``."""
    return name[: name.rfind("/") + 1] if name.count("/") >= 2 else ""


def fp32_islands(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Names of the nodes that compute in float32 under the fp16 policy, per island (see the
    module docstring). ``model`` is an fp32 graph exported by us, with every node named."""
    types = tensor_types(model)
    users = consumers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    islands = {"embedding": _embedding(model, types, users), "normalization": _normalization(model),
               "softmax": _softmax(model, producer)}
    islands["parameters"] = _parameters(model, users, set().union(*islands.values()))
    return islands


def _embedding(model: onnx.ModelProto, types: dict[str, int], users: dict[str, list[onnx.NodeProto]]) -> set[str]:
    """Float nodes downstream of the integer inputs, up to (not including) a float -> float Cast."""
    is_float = lambda name: types.get(name) in FLOAT_TYPES  # noqa: E731
    frontier = [i.name for i in model.graph.input if i.type.tensor_type.elem_type not in FLOAT_TYPES]
    seen: set[str] = set()
    while frontier:
        for node in users.get(frontier.pop(), []):
            if node.name in seen or not any(is_float(o) for o in node.output):
                continue
            if node.op_type == "Cast" and any(is_float(i) for i in node.input):
                continue  # the recorded emb.to(x.dtype): the island ends here
            seen.add(node.name)
            frontier.extend(o for o in node.output if is_float(o))
    return seen


def _normalization(model: onnx.ModelProto) -> set[str]:
    scopes = {_scope(n.name) for n in model.graph.node if n.op_type in NORM_OPS} - {""}
    return {n.name for n in model.graph.node if _scope(n.name) in scopes}


def _softmax(model: onnx.ModelProto, producer: dict[str, onnx.NodeProto]) -> set[str]:
    """Each Softmax and the Add (bias) / Cast (``.float()``) nodes right before it."""
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        seen.add(node.name)
        frontier = list(node.input)
        while frontier:
            up = producer.get(frontier.pop())
            if up is not None and up.op_type in ("Add", "Cast") and up.name not in seen:
                seen.add(up.name)
                frontier.extend(up.input)
    return seen


def _parameters(model: onnx.ModelProto, users: dict[str, list[onnx.NodeProto]], blocked: set[str]) -> set[str]:
    """Parameter-only computations, and constants (or aliases of initializers) read only by
    float32 nodes -- so that, e.g., the sinusoid's frequencies are never rounded to fp16."""
    known = {i.name for i in model.graph.initializer} | {""}
    computed: set[str] = set()
    holders: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if all(i in known for i in node.input):
            known.update(node.output)
            if node.op_type in _HOLDERS:
                holders.append(node)
            else:
                computed.add(node.name)
    out = set(computed)
    fp32 = blocked | computed
    for node in reversed(holders):  # topological order reversed: an alias's readers are decided first
        readers = [(u, i) for o in node.output for u in users.get(o, []) for i, x in enumerate(u.input) if x == o]
        if readers and all(u.name in fp32 or i in _FLOAT32_INPUTS.get(u.op_type, ()) for u, i in readers):
            out.add(node.name)
            fp32.add(node.name)
    return out


def convert_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16-typed graph of ``model`` (an fp32 graph of ours); metadata left as it was."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never touch the caller's model
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_unnamed_{i}"
    blocked = set().union(*fp32_islands(model).values())
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=[], node_block_list=sorted(blocked))
    _toposort(model)
    _remove_round_trips(model)
    # keep the types of what remains (ONNX has no type inference for contrib ops such as
    # com.microsoft.MultiHeadAttention; their value_info carries it)
    outputs = {o for node in model.graph.node for o in node.output}
    kept = [vi for vi in model.graph.value_info if vi.name in outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return model


#: (outer, inner) casts whose round trip is dropped: fp32 -> fp16 -> fp32 between two fp32 nodes
#: (the converter's, lossy: the islands must stay fp32), and fp16 -> fp32 -> fp16 (exact)
_ROUND_TRIPS = {(TensorProto.FLOAT, TensorProto.FLOAT16), (TensorProto.FLOAT16, TensorProto.FLOAT)}


def _remove_round_trips(model: onnx.ModelProto) -> None:
    """Drop ``Cast(a)(Cast(b)(x: a))`` for (a, b) in _ROUND_TRIPS and casts to the type their input has."""
    outputs = {o.name for o in model.graph.output}
    types = tensor_types(model)  # removing casts re-points inputs; no remaining tensor changes type
    while True:
        producer = {out: node for node in model.graph.node for out in node.output}
        rename: dict[str, str] = {}
        for node in model.graph.node:
            to = cast_to(node)
            if to is None or node.output[0] in outputs:
                continue
            src = node.input[0]
            up = producer.get(src)
            if types.get(src) == to:
                rename[node.output[0]] = src
            elif up is not None and (to, cast_to(up)) in _ROUND_TRIPS and types.get(up.input[0]) == to:
                rename[node.output[0]] = up.input[0]
        if not rename:
            return
        _rewire(model, rename)


def _rewire(model: onnx.ModelProto, rename: dict[str, str]) -> None:
    """Read ``rename[x]`` wherever ``x`` was read, then drop the nodes nothing reads any more."""
    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    used = {i for node in model.graph.node for i in node.input}
    live = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)


def _toposort(model: onnx.ModelProto) -> None:
    """Order nodes so that each comes after the producers of its inputs (the converter appends
    its casts at the end); ties keep the original order."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            stack.extend((producer[x], False) for x in reversed(nodes[j].input)
                         if x in producer and producer[x] not in done)

    for i in range(len(nodes)):
        visit(i)
    del model.graph.node[:]
    model.graph.node.extend(order)


def convert_file(src: str | Path, dst: str | Path, *, force: bool = False, source_sha256: str | None = None) -> Path:
    """Write the fp16-typed graph of the fp32 file ``src`` to ``dst`` (atomically), with the
    metadata of ``src``, the fp16 precision policy and a ``ddpm_export.fp16_pass`` record
    ``{"from_sha256": ..., "converter": ...}`` (``source_sha256``: that of ``src`` when the caller
    has hashed it already). Raises BadInputError for a file that is not an fp32
    graph of ours (a MetadataError names the missing keys)."""
    src, dst = Path(src), Path(dst)
    refuse_existing_file(dst, force)
    model = onnx.load(str(src))
    props = md.read_metadata(model, source=str(src))
    precision = md.precision_of(props, str(src))
    if precision != "fp32":
        raise BadInputError(f"{src} is a {precision} graph already; the fp16 pass converts fp32 files")
    converted = convert_model(model)
    _set_metadata(converted, props, source_sha256 or md.sha256_file(src))
    onnx.checker.check_model(converted, full_check=True)
    with atomic_file(dst, force=force) as tmp:
        onnx.save_model(converted, str(tmp))
    return dst


def _set_metadata(model: onnx.ModelProto, props: dict[str, str], source_sha256: str) -> None:
    import onnxruntime

    props = {**props, md.PRECISION_POLICY: md.dumps(policy("fp16", attention=props[md.ATTENTION])),
             FP16_PASS: md.dumps({"from_sha256": source_sha256,
                                  "converter": f"onnxruntime.transformers.float16 {onnxruntime.__version__}"})}
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = model.doc_string.replace("precision fp32", "precision fp16 (fp16 pass)")

