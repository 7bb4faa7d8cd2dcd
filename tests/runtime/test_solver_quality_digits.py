"""The torch-free runtime samples the shipped digits model with 10 solver steps at least as well
as with DDIM-50, by the project's quality metric (``ddpm_export.quality``; 1000 samples, as
``tools/quality.py`` scores by default). Slow: about 60,000 image-evaluations of the U-Net
(3-4 minutes on 2 busy CPU cores); ``tools/solver_table.py`` prints the whole table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # to export the shipped model; sampling and scoring need none

from ddpm_export.presets import MODELS_DIR  # noqa: E402
from ddpm_export.quality import CLASSIFIER_DIR, DigitClassifier, load_digits_split, score  # noqa: E402

N = 1000


@pytest.mark.slow
def test_ten_solver_steps_sample_digits_at_least_as_well_as_ddim_50(tmp_path: Path) -> None:
    import onnxruntime as ort

    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime import Pipeline

    path = export_onnx(MODELS_DIR / "digits", tmp_path / "digits.onnx", opt_batch=120, max_batch=120,
                       log=lambda s: None).path
    opts = ort.SessionOptions()  # 2 threads, not spinning: the same samples as 1 thread, bit for bit
    opts.intra_op_num_threads = 2  # (checked at batch 240: max abs 0), in ~0.75x the time
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    pipe = Pipeline.from_onnx(path, session_options=opts)
    clf, digits = DigitClassifier.load(CLASSIFIER_DIR), load_digits_split()
    labels = np.arange(N) % 10

    def scored(sampler: str, steps: int):
        x = pipe.sample(N, sampler=sampler, steps=steps, seed=0, classes=labels, progress=False)
        return score(x, clf, digits.heldout_x, labels)

    ddim = scored("ddim", 50)       # measured: confident 0.918, FD 4.55
    for sampler in ("dpm-solver++", "unipc"):  # measured: 0.950 / 4.51 and 0.948 / 4.37
        got = scored(sampler, 10)
        assert got.confident_fraction >= ddim.confident_fraction, (sampler, got, ddim)
        assert got.frechet <= ddim.frechet, (sampler, got, ddim)
