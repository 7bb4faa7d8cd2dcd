"""Checks that need a CUDA GPU (skipped here with the reason; run by tools/gpu_check.sh)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_export.contract.spec import ExportSpec
from ddpm_export.metrics import errors

torch = pytest.importorskip("torch")


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["tiny", "kitchen-sink", "ddpm-cifar10"])
def test_reference_model_on_cuda_matches_cpu(preset):
    from ddpm_export import load_model
    from ddpm_export.torch_backend import TorchBackend

    model = load_model(preset)
    spec = ExportSpec.from_config(model.config)
    feeds = spec.sample_inputs(4, seed=1)
    cond = feeds.get("class_labels")
    cpu = TorchBackend(model)(feeds["x_t"], feeds["t"], cond)
    gpu = TorchBackend(load_model(preset), device="cuda")(feeds["x_t"], feeds["t"], cond)
    max_abs, rel_l2 = errors(gpu, cpu)
    print(f"{preset}: cuda vs cpu max abs {max_abs:.3e} rel L2 {rel_l2:.3e}")
    assert rel_l2 < 1e-3  # TF32 convolutions on CUDA are allowed by default


@pytest.mark.gpu
def test_fp16_policy_on_cuda_matches_fp32():
    """The fp16 GraphModule (the network the fp16 ONNX file records) run natively on the GPU."""
    from ddpm_export import load_model
    from ddpm_export.export.precision import GraphModule

    model = load_model("ddpm-cifar10")
    spec = ExportSpec.from_config(model.config)
    feeds = spec.sample_inputs(8, seed=2)
    x, t = (torch.from_numpy(feeds[n]).cuda() for n in ("x_t", "t"))
    with torch.no_grad():
        ref = GraphModule(model, "fp32").cuda()(x, t).double()
        half = GraphModule(model, "fp16").cuda()(x, t).double()
    rel = float((half - ref).norm() / ref.norm())
    print(f"ddpm-cifar10 fp16 policy on cuda: rel L2 {rel:.3e}")
    assert np.isfinite(rel) and rel < 1e-2
