"""``--save-io``: torch's inputs and outputs in Polygraphy's JSON formats, so that
``polygraphy run model.onnx --onnxrt --load-inputs inputs.json --load-outputs outputs.json``
compares ONNX Runtime with torch using the tool users already know."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from polygraphy.comparator import IterationResult, RunResults
from polygraphy.json import save_json
from polygraphy.logger import G_LOGGER

from ddpm_export.contract.spec import ExportSpec
from ddpm_export.errors import BadInputError
from ddpm_export.export.validate import torch_reference
from ddpm_export.files import atomic_files, refuse_existing_file, refuse_stdout_folder
from ddpm_export.metrics import FP16_CALL_REL_L2, FP32_MAX_ABS, INT8_REL_L2, output_scale
from ddpm_export.nn.unet import UNet

INPUTS_NAME, OUTPUTS_NAME = "inputs.json", "outputs.json"


def check_io_paths(out_dir: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """``(inputs.json, outputs.json)`` in ``out_dir``; refuses existing ones unless ``force``, and
    a folder they cannot be written into (checked before an export starts, so a refusal writes
    nothing)."""
    if str(out_dir) == "":  # Path("") is the current folder: the files landed there without a word
        raise BadInputError("--save-io '' names no folder; give one (. for the current folder)")
    refuse_stdout_folder("--save-io", out_dir)  # it made a folder named '-'
    out = Path(out_dir)
    paths = out / INPUTS_NAME, out / OUTPUTS_NAME
    for path in paths:
        refuse_existing_file(path, force)
    return paths


@contextlib.contextmanager
def staged_torch_io(unet: UNet, spec: ExportSpec, paths: tuple[Path, Path], onnx_path: Path, precision: str,
                    log: Callable[[str], None]) -> Iterator[None]:
    """Write torch's inputs (a list of feed dicts) and outputs (RunResults of runner ``torch``) for
    the spec's opt batch to ``paths`` from :func:`check_io_paths`, as temp files renamed into place
    when the block exits cleanly: with the ONNX file ``onnx_path`` written inside the block, all
    three files or none. Polygraphy's own log lines (which name the temp files) are kept quiet;
    ``log`` gets the polygraphy command that compares the file with them, holding it to the
    export's limit for ``precision`` (:func:`polygraphy_tolerances`)."""
    feeds = spec.sample_inputs(spec.opt_batch, seed=0)
    outputs = {spec.output_names[0]: torch_reference(unet, spec, feeds)}
    results = RunResults()
    results.append(("torch", [IterationResult(outputs=outputs, runner_name="torch")]))
    with atomic_files(*paths, force=True) as (tmp_inputs, tmp_outputs):  # existing ones: refused by check_io_paths
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            save_json([feeds], str(tmp_inputs), description="torch inputs")
            results.save(str(tmp_outputs))
        yield
    log(f"wrote torch's inputs and outputs at batch {spec.opt_batch} for polygraphy: "
        + shlex.join(["polygraphy", "run", str(onnx_path), "--onnxrt", "--load-inputs", str(paths[0]),
                      "--load-outputs", str(paths[1]), *polygraphy_tolerances(precision, *outputs.values())]))


def polygraphy_tolerances(precision: str, reference: np.ndarray) -> list[str]:
    """``polygraphy run`` options for the export's own limit (:mod:`ddpm_export.metrics`) against
    torch's ``reference`` outputs. fp32: every element within the max abs limit (times the
    output's scale), as validation checks. fp16 and int8, whose limit is a relative L2 error (a
    file within it fails Polygraphy's elementwise 1e-5): the mean abs error within the limit
    times the reference's RMS, which that limit implies (mean |d| <= RMS(d) = rel L2 x RMS(ref))."""
    if precision == "fp32":
        return ["--atol", f"{FP32_MAX_ABS * output_scale(reference):.3g}"]
    limit = FP16_CALL_REL_L2 if precision == "fp16" else INT8_REL_L2
    rms = float(np.sqrt(np.mean(np.square(reference, dtype=np.float64))))
    return ["--check-error-stat", "mean", "--atol", f"{limit * rms:.3g}"]
