"""The PyTorch reference model as a sampling backend: numpy in, numpy out.

Implements :class:`ddpm_export.diffusion.Backend`, so the reference runs through the same numpy
loop and the same noise as the ONNX Runtime and TensorRT backends. Needs torch (the ``export``
extra); nothing under ``ddpm_export.diffusion`` or ``ddpm_export.runtime`` imports this module.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TorchBackend"]


class TorchBackend:
    """Wrap a model ``forward(x [B,C,H,W] f32, t [B] i64, cond=None) -> [B,C_out,H,W]``.

    The model is moved to ``device`` and put in eval mode (dropout off) once, here; calls run
    under ``torch.no_grad``. Typically ``TorchBackend(ddpm_export.load_model("tiny"))``.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        """``x_t`` [B, C, H, W] float32, ``t`` [B] int64, ``cond`` class ids [B] int64 or a
        context [B, L, D] float32 or None -> model output [B, C_out, H, W] float32."""
        _check_input("x_t", x_t, np.float32)
        _check_input("t", t, np.int64)
        if cond is not None:
            _check_input("cond", cond, np.int64 if cond.ndim == 1 else np.float32)
        out = self.model(self._tensor(x_t), self._tensor(t), None if cond is None else self._tensor(cond))
        return out.to("cpu", torch.float32).numpy()

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)


def _check_input(name: str, a: np.ndarray, dtype: type[np.generic]) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"TorchBackend: {name} must be a numpy {np.dtype(dtype).name} array, got {got}")
