"""The sampler's BLS calls to ``unet`` (``BlsBackend``) without a server, on the shipped digits
ONNX file: a stand-in for ``triton_python_backend_utils`` with the behaviour Triton documents --
a BLS response's tensors stay in the memory the called model put them in unless the request's
``preferred_memory`` says otherwise, and ``Tensor.as_numpy()`` refuses a tensor in GPU memory
(python_backend's README, "Business Logic Scripting", and ``PbTensor::AsNumpy``). The ``unet``
stands in for a TensorRT model, whose outputs are in GPU memory: every served request failed
("Tensor is stored in GPU and cannot be converted to NumPy")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ddpm_export.contract.spec import OUT_NAME
from ddpm_export.presets import shipped_onnx
from ddpm_export.runtime import Pipeline
from ddpm_export.serve.triton_models import BlsBackend

CPU, GPU = "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_GPU"


class Tensor:
    def __init__(self, name: str, array: np.ndarray, memory: str = CPU) -> None:
        self._name, self._array, self.memory = name, array, memory

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self.memory != CPU:
            raise RuntimeError("Tensor is stored in GPU and cannot be converted to NumPy.")
        return self._array


class PreferredMemory:
    def __init__(self, memory: str, device: int) -> None:
        self.memory, self.device = memory, device


class Response:
    def __init__(self, outputs: list[Tensor]) -> None:
        self.outputs = outputs

    def has_error(self) -> bool:
        return False


class GpuUNetTriton:
    """``pb_utils`` whose ``unet`` model runs ``backend`` and leaves its output on the GPU."""

    TRITONSERVER_MEMORY_CPU, TRITONSERVER_MEMORY_GPU = CPU, GPU
    Tensor, PreferredMemory = Tensor, PreferredMemory

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def InferenceRequest(self, *, model_name: str, inputs: list[Tensor], requested_output_names: list[str],
                         preferred_memory: PreferredMemory | None = None) -> Any:
        assert model_name == "unet" and requested_output_names == [OUT_NAME]
        feeds = {t.name(): t.as_numpy() for t in inputs}
        memory = GPU if preferred_memory is None else preferred_memory.memory
        backend = self.backend

        class Request:
            def exec(self) -> Response:
                out = backend(feeds["x_t"], feeds["t"].reshape(-1), feeds["class_labels"].reshape(-1))
                return Response([Tensor(OUT_NAME, out, memory)])
        return Request()

    @staticmethod
    def get_output_tensor_by_name(response: Response, name: str) -> Tensor:
        return next(t for t in response.outputs if t.name() == name)


def test_a_unet_whose_output_is_in_gpu_memory_is_read_back_in_cpu_memory() -> None:
    path = shipped_onnx("digits")
    if path is None:
        pytest.skip("the digits preset ships no model.onnx here")
    pipe = Pipeline.from_onnx(path)
    served = Pipeline(BlsBackend(GpuUNetTriton(pipe.backend), pipe.info.spec, "unet"), pipe.info)
    got = served.sample(3, steps=4, seed=5, guidance_scale=1.5, progress=False)
    np.testing.assert_array_equal(got, pipe.sample(3, steps=4, seed=5, guidance_scale=1.5, progress=False))
