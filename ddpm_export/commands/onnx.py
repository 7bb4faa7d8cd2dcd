"""`ddpm-export onnx`: export and validate."""

from __future__ import annotations

import click

from ddpm_export.console import IntRange
from ddpm_export.contract.choices import ATTENTION_CHOICES, MAX_OPSET, MIN_OPSET, PRECISIONS, REWRITES, TARGETS
from ddpm_export.contract.spec import MAX_BATCH


@click.command("onnx")
@click.option("--model", "-m", "model", required=True,
              help="A preset name (see `ddpm-export models`), our checkpoint folder, or a diffusers UNet2DModel folder.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option("--opset", type=IntRange(min(MIN_OPSET.values()), MAX_OPSET), default=20,
              help="ONNX opset (onnx-attention needs 23).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
              help="fp16: explicitly typed mixed precision (time embedding, norm statistics and, with decomposed "
                   "attention, its bias and softmax stay fp32; ort-mha runs in fp16); int8: QDQ calibrated on the "
                   "sampler's own trajectories (embedding, first/last conv and attention's q k^T and softmax(.) v "
                   "stay float).")
@click.option("--attention", type=click.Choice(ATTENTION_CHOICES), default="auto",
              help="Form of attention in the graph; auto picks per --target.")
@click.option("--target", type=click.Choice(TARGETS), default="any",
              help="Where the file will run; decides --attention auto (the form measured fastest there: decomposed "
                   "everywhere), --rewrites auto (none for tensorrt) and, for int8, where the quantize/dequantize "
                   "pairs go: openvino leaves the outputs of the int8 convs float (faster in OpenVINO, 2.6-3x "
                   "slower in ONNX Runtime); the others quantize them, as ONNX Runtime needs.")
@click.option("--rewrites", default="auto", show_default=True,
              help=f"Exact rewrites (same function, fewer multiply-adds): a comma-separated list of "
                   f"{', '.join(REWRITES)} (one upsampling form at most); none; or auto (what was measured "
                   f"faster: upsample-deconv,attention-fold for fp32, upsample-subpixel,attention-fold for int8, "
                   f"none for fp16 and --target tensorrt).")
@click.option("--min-batch", type=IntRange(1, MAX_BATCH), default=1, help="Smallest batch the graph accepts.")
@click.option("--opt-batch", type=IntRange(1, MAX_BATCH), default=None,
              help="Batch TensorRT optimises for [default: 4, brought into --min-batch..--max-batch].")
@click.option("--max-batch", type=IntRange(1, MAX_BATCH), default=16, help="Largest batch the graph accepts.")
@click.option("--save-io", type=click.Path(file_okay=False), default=None,
              help="Also write torch's inputs/outputs as Polygraphy JSON (inputs.json, outputs.json) here: "
                   "the fp32 reference outputs in every --precision; the printed `polygraphy run` command "
                   "holds the file to the export's limit for its precision.")
@click.option("--validate/--no-validate", default=True, help="Check the graph and compare ONNX Runtime with torch.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def command(model: str, output: str, opset: int, precision: str, attention: str, target: str, rewrites: str,
            min_batch: int, opt_batch: int | None, max_batch: int, save_io: str | None, validate: bool,
            force: bool) -> None:
    """Export a model to ONNX and validate it against PyTorch.

    \b
    The file carries its model config, schedule, precision policy and source hash in its
    metadata; it is written only after validation passes (temp file + rename).
    \b
    Examples:
      ddpm-export onnx --model ddpm-cifar10 -o cifar10.onnx
      ddpm-export onnx --model tiny -o tiny16.onnx --precision fp16 --target tensorrt
      ddpm-export onnx --model digits -o digits-int8.onnx --precision int8 --target openvino
    """
    from ddpm_export.console import use_flag_names
    from ddpm_export.presets import check_model_name

    check_model_name(model)  # a typo is named as one, not as a missing export extra

    from ddpm_export.export.onnx import export_onnx

    use_flag_names({"rewrites": "--rewrites", "target": "--target", "opset": "--opset", "precision": "--precision",
                    "min_batch/opt_batch/max_batch": "--min-batch/--opt-batch/--max-batch"})
    result = export_onnx(model, output, opset=opset, precision=precision, attention=attention, target=target,
                         rewrites=rewrites, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                         validate=validate, save_io=save_io, force=force, log=click.echo)
    size = result.size_bytes / 2**20
    data = f" + {result.data_path.name}" if result.data_path is not None else ""  # external data (> 2 GB)
    click.echo(f"wrote {result.path}{data} ({size:.2f} MiB) in {result.seconds:.1f} s; attention {result.attention}, "
               f"rewrites {','.join(result.rewrites) or 'none'}, batch {result.spec.min_batch}..{result.spec.max_batch}"
               + (f", target {target}" if target != "any" else ""))
    if result.validation is not None:
        click.echo(f"validation passed: max abs {result.validation.max_abs:.3e}, rel L2 {result.validation.rel_l2:.3e}")
