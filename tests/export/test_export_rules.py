"""Export refuses inconsistent inputs before it writes anything."""

from __future__ import annotations

import pytest

from ddpm_export.diffusion import DiffusionConfig
from ddpm_export.export.onnx import export_onnx


def test_a_schedule_with_another_T_than_the_model_is_refused(tmp_path):
    out = tmp_path / "tiny.onnx"
    with pytest.raises(ValueError, match=r"num_train_timesteps=2000 \(from the diffusion argument\) differs from "
                                         r"the model's 1000"):
        export_onnx("tiny", out, diffusion=DiffusionConfig(num_train_timesteps=2000), log=lambda s: None)
    assert list(tmp_path.iterdir()) == []
