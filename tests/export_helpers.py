"""Shared by the export tests: small checkpoint configs and ways to read and run an ONNX graph.

Every graph reading here uses ``onnx`` itself (producers, initializers, ``Constant`` nodes) so the
tests do not lean on the code under test; ``ddpm_export.export.graph`` is used only where the
issue names it (``embedding_subgraph``, ``tensor_types``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from ddpm_export.config import UNetConfig

#: a small two-level network: 8 x 8 -> 4 x 4, channels 16 and 32, two heads, attention at 4 x 4 and
#: in the middle; zero_init=False so that every attention branch contributes to the output
SMALL = dict(base_channels=16, channel_mult=(1, 2), sample_size=8, num_groups=8, num_res_blocks=1,
             attention_resolutions=(4,), num_heads=2, dropout=0.0, zero_init=False)

#: checkpoint folder name -> UNetConfig; each turns on one feature the export must carry
CONFIGS: dict[str, UNetConfig] = {
    "context": UNetConfig(**SMALL, context_dim=12),
    "learned": UNetConfig(**SMALL, time_embedding="learned"),
    "class-embedding": UNetConfig(**SMALL, num_classes=5, class_conditioning="embedding"),
    "batch-norm": UNetConfig(**SMALL, norm="batch"),
    "sinusoidal-2d": UNetConfig(**{**SMALL, "num_heads": 1}, positional_encoding="sinusoidal_2d"),
    "attention-cond": UNetConfig(**SMALL, time_conditioning="attention"),
    # one level, 8 channels: for the behaviour tests (overwrite, atomicity), exported in about a second
    "micro": UNetConfig(base_channels=8, channel_mult=(1,), sample_size=8, num_groups=4, num_res_blocks=1,
                        attention_resolutions=(), mid_attention=True, zero_init=False),
}


#: checkpoint folder name -> the diffusion.json saved with it (the others have none)
DIFFUSION = {"learned": dict(beta_schedule="cosine", prediction_type="v_prediction")}


def save_test_checkpoint(name: str, root: Path) -> Path:
    """``root/name``: config.json + model.safetensors (+ diffusion.json) of ``CONFIGS[name]`` (seed 0).

    Batch norm gets random running statistics, so that the exported BatchNormalization does
    more than divide by sqrt(1 + eps).
    """
    from ddpm_export.diffusion.config import DiffusionConfig
    import torch

    from ddpm_export.nn.checkpoint import build_model, save_checkpoint
    from ddpm_export.nn.layers import BatchNorm32

    model = build_model(CONFIGS[name], seed=0)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, BatchNorm32):
            m.running_mean.copy_(0.5 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    diffusion = DiffusionConfig(**DIFFUSION[name]) if name in DIFFUSION else None
    return save_checkpoint(model, root / name, diffusion=diffusion)


# --- reading a graph ------------------------------------------------------------------------------
def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


class GraphIndex:
    """Producers and initializers of a graph, built once (the lookups below are per tensor)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.producer = producers(model)
        self.initializer = {i.name: i for i in model.graph.initializer}

    def _through_identity(self, name: str) -> str:
        node = self.producer.get(name)
        while name not in self.initializer and node is not None and node.op_type == "Identity":
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a constant (an initializer or a ``Constant`` node's
        output, possibly through ``Identity`` nodes); None when it is computed at run time."""
        name = self._through_identity(name)
        if name in self.initializer:
            return numpy_helper.to_array(self.initializer[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                return numpy_helper.to_array(attr["value"].t)
            if "value_float" in attr:
                return np.array(attr["value_float"].f, np.float32)
        return None

    def initializer_type(self, name: str) -> int | None:
        """Element type of the initializer behind ``name`` (through ``Identity``), or None."""
        init = self.initializer.get(self._through_identity(name))
        return None if init is None else init.data_type


def infer(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list[int | str]]]:
    """Element type and shape of every tensor after one strict shape inference (symbolic dims by name)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    types: dict[str, int] = {}
    shapes: dict[str, list[int | str]] = {}
    for init in model.graph.initializer:
        types[init.name], shapes[init.name] = init.data_type, list(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]], shapes[node.output[0]] = value.data_type, list(value.dims)
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = vi.type.tensor_type
        types[vi.name] = tensor.elem_type
        if tensor.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    return types, shapes


def count_ops(model: onnx.ModelProto, op_type: str, domain: str = "") -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type and n.domain == domain)


# --- running a graph --------------------------------------------------------------------------
def with_outputs(model: onnx.ModelProto, names: list[str], types: dict[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` (element types from ``types``)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    for name in names:
        extended.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return extended


def session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None) -> list[np.ndarray]:
    return session(model).run(outputs, feeds)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
