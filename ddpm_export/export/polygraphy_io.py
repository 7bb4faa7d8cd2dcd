"""``--save-io``: torch's inputs and outputs in Polygraphy's JSON formats, so that
``polygraphy run model.onnx --onnxrt --load-inputs inputs.json --load-outputs outputs.json``
compares ONNX Runtime with torch using the tool users already know."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Callable, Iterator

from polygraphy.comparator import IterationResult, RunResults
from polygraphy.json import save_json
from polygraphy.logger import G_LOGGER

from ddpm_export.contract.spec import ExportSpec
from ddpm_export.errors import BadInputError
from ddpm_export.export.validate import torch_reference
from ddpm_export.files import atomic_files, refuse_existing_file, refuse_stdout_folder
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
def staged_torch_io(unet: UNet, spec: ExportSpec, paths: tuple[Path, Path], onnx_path: Path,
                    log: Callable[[str], None]) -> Iterator[None]:
    """Write torch's inputs (a list of feed dicts) and outputs (RunResults of runner ``torch``) for
    the spec's opt batch to ``paths`` from :func:`check_io_paths`, as temp files renamed into place
    when the block exits cleanly: with the ONNX file ``onnx_path`` written inside the block, all
    three files or none. Polygraphy's own log lines (which name the temp files) are kept quiet;
    ``log`` gets the polygraphy command that compares the file with them."""
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
                      "--load-outputs", str(paths[1])]))
