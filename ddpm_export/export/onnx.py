"""``ddpm-export onnx``: PyTorch -> ONNX with a chosen attention form and precision policy,
validated against PyTorch before the file appears on disk.

Flow: load the model -> wrap it in the precision policy (``GraphModule``) -> trace with the
TorchScript exporter (deterministic, fast, and lets each attention form emit its own node) ->
attach metadata -> write to a temporary file -> validate (checker, strict shape inference,
ONNX Runtime vs torch at min/opt/interior/max batch) -> rename into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import onnx
import torch
from google.protobuf.message import DecodeError
from onnx.external_data_helper import _get_all_tensors, uses_external_data
from safetensors.torch import save as safetensors_save

from ddpm_export._version import __version__
from ddpm_export.contract import metadata as md
from ddpm_export.contract.choices import MAX_OPSET, MIN_OPSET, TARGETS
from ddpm_export.contract.spec import ExportSpec, batch_range
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.from_diffusers import SCHEDULER_CONFIG_NAME, schedule_only_class
from ddpm_export.errors import BadInputError
from ddpm_export.export.attention_forms import attention_kernel, resolve_attention
from ddpm_export.export.int8 import PROTOBUF_LIMIT, CalibrationConfig, quantizes_outputs, symmetric_activations
from ddpm_export.export.polygraphy_io import check_io_paths, staged_torch_io
from ddpm_export.export.precision import GraphModule
from ddpm_export.export.precision_policy import check_precision, policy
from ddpm_export.export.rewrites import resolve_rewrites
from ddpm_export.export.validate import NonFiniteModelError, ValidationError, ValidationReport, validate_onnx
from ddpm_export.files import (made_parents, names_no_file, new_file_mode, refuse_existing_file, refuse_folder_name,
                               refuse_same_file, remove_leftovers, rename_into_place, scratch_folder)
from ddpm_export.nn.attention import Attention, use_attention_kernel
from ddpm_export.nn.checkpoint import (DIFFUSION_NAME, diffusion_config_for, is_diffusers_folder, load_model,
                                      model_folder, schedule_file, weights_path)
from ddpm_export.nn.rewrites import applicable, use_rewrites
from ddpm_export.nn.unet import UNet
from ddpm_export.nn.weights import tensors_sha256
from ddpm_export.presets import DIFFUSERS_WEIGHTS_NAME

DEFAULT_OPSET = 20
#: int8 for TensorRT (signed int8 activations, zero point 0): ONNX Runtime's EXTENDED optimiser fails
#: on the file at opset 21+ ("output_dtype INT8 does not match y_zero_point type UINT8", 1.32)
INT8_TENSORRT_MAX_OPSET = 20
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT  # protobuf's 2 GB limit


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    spec: ExportSpec
    precision: str
    attention: str
    rewrites: tuple[str, ...]
    opset: int
    seconds: float
    size_bytes: int  # with the external data file's, if any
    validation: ValidationReport | None
    data_path: Path | None = None  # the external data file (a graph over 2 GB), else None


def export_onnx(model: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, precision: str = "fp32",
                attention: str = "auto", target: str = "any", min_batch: int = 1, opt_batch: int | None = None,
                max_batch: int = 16, rewrites: str = "auto", diffusion: DiffusionConfig | None = None,
                validate: bool = True,
                save_io: str | Path | None = None, force: bool = False, calibration: CalibrationConfig | None = None,
                log: Callable[[str], None] = print) -> ExportResult:
    """Export ``model`` (a preset name, our checkpoint folder or a diffusers folder) to ``out``.

    The schedule recorded in the metadata is ``diffusion``, else the folder's ``diffusion.json``,
    else a diffusers folder's scheduler config (:mod:`ddpm_export.diffusion.from_diffusers`), else
    the default DiffusionConfig. ``precision="int8"`` quantizes the float32 graph, calibrated
    on the sampler's own trajectories (``calibration``, see :mod:`ddpm_export.export.int8`).
    ``rewrites``: ``auto`` (per precision, :mod:`ddpm_export.export.rewrites`), ``none``, or
    a comma-separated list of exact rewrites (:mod:`ddpm_export.nn.rewrites`).

    Raises FileExistsError when ``out`` exists and not ``force`` (or ``<out>.data``, when the graph is
    written with external data; ``force`` replaces it, and removes the one a replaced ``out`` named
    when the new graph holds its weights); ValueError for bad options;
    ``ValidationError`` when the exported graph disagrees with torch (nothing is written then).
    ``opt_batch`` None: 4 brought into ``[min_batch, max_batch]`` (:func:`~ddpm_export.contract.spec.batch_range`).
    """
    refuse_folder_name(out)  # before Path() drops a trailing "/"
    start, out = time.perf_counter(), Path(out)
    form = _check_options(out, force=force, precision=precision, attention=attention, target=target, opset=opset,
                          calibration=calibration)
    applied = resolve_rewrites(rewrites, precision, target)
    refuse_same_file({}, {"the output": out, "the I/O folder (--save-io)": save_io})
    io_paths = check_io_paths(save_io, force=force) if save_io is not None else None
    unet = load_model(model)
    applied = _kept_rewrites(unet, applied, rewrites, model, log)
    form = _kept_attention(unet, form, attention, model, log)
    diffusion, schedule_source = _schedule(model, unet, diffusion)
    opt_batch = batch_range(min_batch, opt_batch, max_batch)[1]
    spec = ExportSpec.from_config(unet.config, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)
    if precision == "int8":
        _check_calibratable(spec, model)
    log(f"exporting {model} -> {out} ({precision}, opset {opset})")  # every option and input checked
    if schedule_source.endswith(SCHEDULER_CONFIG_NAME):  # a diffusers folder: say what its scheduler became
        _log_scheduler(Path(schedule_source), diffusion, log)
    proto = trace_to_onnx(unet, spec, precision=precision, attention=form, opset=opset, rewrites=applied)
    quantized_outputs = quantizes_outputs(target)  # int8 only: the QDQ layout --target asks for
    if precision == "int8":
        proto = _quantize(proto, unet, spec, diffusion, calibration, quantized_outputs, target, log)
    _describe(proto, model, unet, diffusion, spec, precision=precision, attention=form, rewrites=applied,
              target=target, calibration=calibration)
    staged = staged_torch_io(unet, spec, io_paths, out, precision, log) if io_paths is not None else None
    with staged or contextlib.nullcontext():
        report, data = _write_validated(proto, out, (unet, spec, precision) if validate else None, log, force)
    size = out.stat().st_size + (data.stat().st_size if data is not None else 0)
    return ExportResult(out, spec, precision, form, applied, opset, time.perf_counter() - start, size, report, data)


def _describe(proto: onnx.ModelProto, model: str | Path, unet: UNet, diffusion: DiffusionConfig, spec: ExportSpec, *,
              precision: str, attention: str, rewrites: tuple[str, ...], target: str,
              calibration: CalibrationConfig | None) -> None:
    """Write into ``proto`` its metadata (docs/metadata.md), producer and doc string."""
    source = weights_path(model)
    proto.metadata_props.clear()
    for key, value in md.metadata_props(
        unet=unet.config, diffusion=diffusion, spec=spec, attention=attention, rewrites=rewrites, target=target,
        policy=_policy(precision, attention, target, calibration or CalibrationConfig()),
        exporter_version=f"ddpm-export {__version__}; torch {torch.__version__.split('+')[0]}; onnx {onnx.__version__}",
        source=_source_name(model, source),
        source_sha256=md.sha256_file(source) if source else state_sha256(unet),
        source_tensors_sha256=tensors_sha256(unet.state_dict()),
    ).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "ddpm-export", __version__
    proto.doc_string = (f"DDPM U-Net exported by ddpm-export {__version__}: precision {precision}, attention "
                        f"{attention}, rewrites {','.join(rewrites) or 'none'}, "
                        f"batch {spec.min_batch}..{spec.max_batch}")


def _policy(precision: str, attention: str, target: str, calibration: CalibrationConfig) -> dict[str, object]:
    """The precision policy recorded in the file; an int8 file's names its QDQ layout and calibration."""
    settings = {k: v for k, v in calibration.to_dict().items() if k not in ("version", "float_groups")}
    return policy(precision, attention=attention, quantized_outputs=quantizes_outputs(target),
                  float_groups=calibration.float_groups, symmetric_activations=symmetric_activations(target),
                  calibration=settings)


def _source_name(model: str | Path, weights: Path | None) -> str:
    """``ddpm_export.source``: the name of the weights file (``weights``), of a sharded diffusers
    folder's shard index, of the preset, or of a folder without weights; never the path as typed,
    which would carry the exporter's own folders into a file meant to be shared."""
    if weights is not None:
        return weights.name
    folder = model_folder(model)
    index = folder / f"{DIFFUSERS_WEIGHTS_NAME}.index.json"
    if is_diffusers_folder(folder) and index.is_file():
        return index.name
    return Path(os.path.abspath(model)).name if Path(model).is_dir() else str(model)


def _kept_rewrites(unet: UNet, applied: tuple[str, ...], asked: str, model: str | Path,
                   log: Callable[[str], None]) -> tuple[str, ...]:
    """``applied`` less the rewrites that find nothing to rewrite in ``unet`` (the file records what
    it holds: multi-head attention has no fold); said when they were asked for by name."""
    kept = applicable(unet, applied)
    if kept != applied and asked not in ("auto", "none"):
        log(f"rewrites {', '.join(r for r in applied if r not in kept)}: nothing to rewrite in {model}; not applied")
    return kept


def _log_scheduler(path: Path, diffusion: DiffusionConfig, log: Callable[[str], None]) -> None:
    """What a diffusers folder's scheduler config became, and when its class is one whose sampler
    this package does not run (Euler, PNDM, ...), that the file's default sampler is DDIM."""
    cls = schedule_only_class(path)
    log(f"schedule from {path}: {diffusion.beta_schedule} betas, T={diffusion.num_train_timesteps}, "
        f"{diffusion.prediction_type} prediction; sampler {diffusion.sampler}, {diffusion.num_inference_steps} steps"
        + (f" ({cls}'s own sampler does not run here: its schedule is sampled with {diffusion.sampler} by default; "
           f"`sample --sampler` picks another)" if cls is not None else ""))


def _check_calibratable(spec: ExportSpec, model: str | Path) -> None:
    """int8 calibration samples the model's trajectories: refuse a model no sampler runs, or one
    conditioned on a context (nothing supplies contexts here: it failed after the trace)."""
    spec.check_samplable(f"--precision int8 of {model} (calibrated along sampled trajectories)")
    if spec.cond_kind == "context":
        raise BadInputError(f"--precision int8 of {model}: calibration samples the model's trajectories, and a "
                            f"context-conditioned model has no contexts to sample them with; export fp32 or fp16")


def _kept_attention(unet: UNet, form: str, asked: str, model: str | Path, log: Callable[[str], None]) -> str:
    """``form``, or ``decomposed`` for a model without attention (the file records what it holds: an
    ``ort-mha`` file of one had no MultiHeadAttention node and would be refused where that form is);
    said when a form was asked for by name."""
    if form == "decomposed" or any(isinstance(m, Attention) for m in unet.modules()):
        return form
    if asked != "auto":
        log(f"attention {asked}: {model} has no attention; not applied")
    return "decomposed"


def _schedule(model: str | Path, unet: UNet, diffusion: DiffusionConfig | None) -> tuple[DiffusionConfig, str]:
    """The schedule to record and where it comes from ("" for the default): ``diffusion``, else
    :func:`~ddpm_export.nn.checkpoint.diffusion_config_for` (``diffusion.json``, or a diffusers
    folder's scheduler config), else the default; refused when its T is not the model's."""
    source = "the diffusion argument" if diffusion is not None else str(schedule_file(model) or "")
    diffusion = diffusion or diffusion_config_for(model) or DiffusionConfig()
    T = unet.config.num_train_timesteps
    if diffusion.num_train_timesteps != T:
        where = (f"from {source}" if source else
                 f"the default DiffusionConfig: {model} has no {DIFFUSION_NAME}; write one holding "
                 f'{{"num_train_timesteps": {T}}} and the rest of its schedule')
        raise BadInputError(f"the schedule's num_train_timesteps={diffusion.num_train_timesteps} ({where}) differs "
                            f"from the model's {T}")
    return diffusion, source


def _check_options(out: Path, *, force: bool, precision: str, attention: str, target: str, opset: int,
                   calibration: CalibrationConfig | None) -> str:
    """Refuse bad options before any work; the attention form ``attention`` resolves to."""
    if out.suffix.lower() != ".onnx":  # model.ONNX is an ONNX file too
        named = not names_no_file(out) and out.name != ".onnx"  # Path(".onnx"): a hidden file, no suffix
        raise BadInputError(f"output {out} must end in .onnx" if named else
                            f"output {str(out) or repr('')} needs a file name ending in .onnx, e.g. model.onnx")
    refuse_existing_file(out, force)
    check_precision(precision)
    if calibration is not None and precision != "int8":  # it would be ignored: no calibration runs
        raise BadInputError(f"calibration applies to precision='int8' only, got precision={precision!r}; "
                            f"leave it out (None) or export int8")
    if target not in TARGETS:
        raise BadInputError(f"target={target!r} is not valid; choose one of: {', '.join(TARGETS)}")
    form = resolve_attention(attention, target)
    if form == "ort-mha" and target == "tensorrt":
        raise BadInputError("--attention ort-mha is ONNX Runtime's contrib op com.microsoft.MultiHeadAttention, which "
                            "TensorRT's ONNX parser cannot take: with --target tensorrt choose decomposed or "
                            "onnx-attention (or auto)")
    if opset < MIN_OPSET[form]:
        raise BadInputError(f"--attention {form} needs --opset >= {MIN_OPSET[form]}, got {opset}")
    if opset > MAX_OPSET:
        raise BadInputError(f"--opset {opset} is above {MAX_OPSET}, the highest opset the exporter writes")
    if precision == "int8" and target == "tensorrt" and opset > INT8_TENSORRT_MAX_OPSET:
        raise BadInputError(
            f"--precision int8 for --target tensorrt needs --opset <= {INT8_TENSORRT_MAX_OPSET}, got {opset}: ONNX "
            f"Runtime, which calibrates and validates the file, cannot load its signed-int8 QuantizeLinear nodes at "
            f"opset 21 and later (its graph optimiser mistypes their zero points; seen with 1.32)"
            + (f"; and --attention onnx-attention needs opset {MIN_OPSET[form]}: use decomposed (or auto)"
               if form == "onnx-attention" else ""))
    return form


def _names_data_file(path: Path, data_name: str) -> bool:
    """Whether the ONNX file at ``path`` keeps tensors in ``data_name`` beside it (its external
    data); False when there is no such data file (the replaced graph is then not parsed: it holds
    all its weights, up to 2 GB, on every --force re-export), no file, or onnx cannot parse it."""
    if not (path.parent / data_name).is_file():
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError, RecursionError):
        return False
    return any(entry.key == "location" and os.path.normpath(entry.value) == data_name
               for tensor in _get_all_tensors(model) if uses_external_data(tensor) for entry in tensor.external_data)


def _write_validated(proto: onnx.ModelProto, out: Path, validation: tuple[UNet, ExportSpec, str] | None,
                     log: Callable[[str], None], force: bool) -> tuple[ValidationReport | None, Path | None]:
    """Write ``proto`` to ``out``, validated first when ``validation`` = (unet, spec, precision);
    returns the report and the external data file (None when the graph holds its weights).

    Written and validated in a temp folder beside ``out`` (with its external data, > 2 GB,
    under the final name), then moved into place: data file first, graph last (all or none).
    """
    with made_parents(out):
        remove_leftovers(out)  # of a killed earlier run; the scratch folder below is unique per call
        external = proto.ByteSize() > EXTERNAL_DATA_THRESHOLD
        data_name = out.name + ".data"
        if external:  # known only now: the graph's size decides
            refuse_existing_file(out.parent / data_name, force)
        with scratch_folder(out) as tmp_dir:
            try:
                onnx.save_model(proto, str(tmp_dir / out.name), save_as_external_data=external,
                                all_tensors_to_one_file=True, location=data_name if external else None)
            except OSError as e:  # onnx's short write names no file: name the one asked for
                if e.filename is not None:
                    raise
                raise type(e)(e.errno, e.strerror or str(e), str(out)) from e
            if external:  # onnx writes it 0600; the graph beside it, like every other file, follows the umask
                os.chmod(tmp_dir / data_name, new_file_mode())
            try:
                report = validate_onnx(tmp_dir / out.name, *validation, log=log, name=out) if validation else None
            except NonFiniteModelError as e:  # the model's fault: writing it unchecked is no way out
                raise type(e)(f"{e}; nothing was written") from e
            except ValidationError as e:
                raise type(e)(f"{e}; nothing was written (validate=False, `ddpm-export onnx --no-validate`, "
                              f"writes the file unchecked)") from e
            stale = force and not external and _names_data_file(out, data_name)  # the replaced file's weights
            if external:
                rename_into_place(tmp_dir / data_name, out.parent / data_name, force)
            rename_into_place(tmp_dir / out.name, out, force)  # not over a file that appeared meanwhile
            if stale:
                (out.parent / data_name).unlink(missing_ok=True)
    return report, out.parent / data_name if external else None


def trace_to_onnx(unet: UNet, spec: ExportSpec, *, precision: str, attention: str, opset: int,
                  rewrites: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Trace the precision-wrapped ``unet`` with the ``attention`` kernel and the exact ``rewrites``
    into an ONNX model."""
    module = GraphModule(unet, precision)
    # Tracing runs the model once; fp16 convolutions on a CPU are slow, so trace a small batch
    # (2, not 1, so that no size-1 broadcast is baked in; validation covers every batch).
    feeds = spec.sample_inputs(min(2, spec.max_batch))
    args = tuple(torch.from_numpy(feeds[name]) for name in spec.input_names)
    with use_attention_kernel(module, attention_kernel(attention)), use_rewrites(module, rewrites), \
            warnings.catch_warnings(), torch.no_grad(), _trace_file(module) as f:
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, f, dynamo=False, opset_version=opset,
                          input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
                          custom_opsets={"com.microsoft": 1} if attention == "ort-mha" else None)
        proto = onnx.load_from_string(f.getvalue()) if isinstance(f, io.BytesIO) else onnx.load(f)
    _declare_output_shape(proto, spec)
    return proto


@contextlib.contextmanager
def _trace_file(module: torch.nn.Module) -> Iterator[io.BytesIO | str]:
    """Where torch writes the traced graph: a buffer, or for weights over half protobuf's 2 GB
    limit (the exporter refuses a buffer over it: "larger than the 2GiB limit") a file in a
    temporary folder, its weights written beside it and loaded back with it."""
    if sum(t.numel() * t.element_size() for t in module.state_dict().values()) <= EXTERNAL_DATA_THRESHOLD // 2:
        yield io.BytesIO()
        return
    with tempfile.TemporaryDirectory(prefix="ddpm-trace-") as tmp:
        yield str(Path(tmp) / "model.onnx")


def _declare_output_shape(proto: onnx.ModelProto, spec: ExportSpec) -> None:
    """The output's C, H, W as numbers: torch's shape inference stops at ``com.microsoft``'s
    MultiHeadAttention and declared them as names (``Castmodel_output_dim_1``) in ``ort-mha`` files."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(list(dims)[1:], spec.output_shape(1)[1:]):
        dim.Clear()
        dim.dim_value = size


def _quantize(proto: onnx.ModelProto, unet: UNet, spec: ExportSpec, diffusion: DiffusionConfig,
              calibration: CalibrationConfig | None, quantized_outputs: bool, target: str,
              log: Callable[[str], None]) -> onnx.ModelProto:
    """Record calibration inputs along DDIM trajectories of the float32 model; quantize to QDQ int8."""
    from ddpm_export.export.int8 import quantize_int8, record_calibration_inputs
    from ddpm_export.torch_backend import TorchBackend

    cfg = calibration or CalibrationConfig()
    cond = unet.config
    feeds = record_calibration_inputs(TorchBackend(unet), spec, diffusion, cond.num_classes,
                                      cond.num_classes if cond.num_classes is not None and cond.null_class else None, cfg)
    log(f"int8: calibrating on {len(feeds)} batches of model inputs along {cfg.trajectories} DDIM trajectories; "
        f"float: {', '.join(cfg.float_groups)}")
    return quantize_int8(proto, feeds, float_groups=cfg.float_groups, quantized_outputs=quantized_outputs,
                         symmetric=symmetric_activations(target), external_above=EXTERNAL_DATA_THRESHOLD)


def state_sha256(unet: UNet) -> str:
    """The sha256 of the weights serialised as safetensors: the ``source_sha256`` of a model with no
    weights file (a seed-initialised preset)."""
    return md.sha256_bytes(safetensors_save({k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}))
