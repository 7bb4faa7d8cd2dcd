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


def _tiny_folder(tmp_path, **changes):
    import json

    from ddpm_export.presets import MODELS_DIR

    folder = tmp_path / "model"
    folder.mkdir()
    config = {**json.loads((MODELS_DIR / "tiny" / "config.json").read_text()), **changes}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.filterwarnings("ignore:.*holds no model.safetensors")
def test_int8_of_a_context_model_is_refused_before_the_trace(tmp_path):
    """Calibration samples trajectories and nothing supplies contexts: it failed after the trace
    with 'pass a context', which `ddpm-export onnx` has no way to do."""
    lines: list[str] = []
    with pytest.raises(ValueError, match=r"--precision int8 of .*model: calibration samples the model's trajectories, "
                                         r"and a context-conditioned model has no contexts"):
        export_onnx(_tiny_folder(tmp_path, context_dim=12), tmp_path / "c.onnx", precision="int8", log=lines.append)
    assert not any(line.startswith("exporting") for line in lines) and not (tmp_path / "c.onnx").exists()


@pytest.mark.filterwarnings("ignore:.*holds no model.safetensors")
def test_an_attention_form_on_a_model_without_attention_is_recorded_as_not_applied(tmp_path):
    """The file recorded attention=ort-mha with no MultiHeadAttention in it (Triton's OpenVINO
    repository refuses ort-mha files)."""
    from ddpm_export.runtime.info import read_info

    lines: list[str] = []
    folder = _tiny_folder(tmp_path, attention_resolutions=[], mid_attention=False)
    result = export_onnx(folder, tmp_path / "a.onnx", attention="ort-mha", max_batch=2, log=lines.append)
    assert result.attention == read_info(result.path).attention == "decomposed"
    assert f"attention ort-mha: {folder} has no attention; not applied" in lines


def test_an_int8_file_records_the_groups_its_calibration_kept_float(tmp_path):
    import json

    from ddpm_export.export.int8 import CalibrationConfig
    from ddpm_export.runtime.info import read_metadata

    result = export_onnx("tiny", tmp_path / "q.onnx", precision="int8", max_batch=2, validate=False,
                         calibration=CalibrationConfig(float_groups=("embedding",), trajectories=1, steps=2),
                         log=lambda s: None)
    policy = json.loads(read_metadata(result.path)["ddpm_export.precision_policy"])
    assert policy["float_islands"] == ["embedding"]  # was always embedding, first_last_conv, attention
    # the calibration that made it, not only "sampler trajectories" (any settings gave the same metadata)
    assert {k: v for k, v in policy["calibration"].items() if k != "method"} == {
        "trajectories": 1, "steps": 2, "images": 4, "guidance_scale": 1.5, "seed": 1234}
    assert policy["activation_dtype"] == "uint8"  # --target any; tensorrt's are signed (test_int8.py)
