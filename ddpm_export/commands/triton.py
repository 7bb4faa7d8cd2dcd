"""`ddpm-export triton`: a Triton Inference Server model repository from a bundle."""

from __future__ import annotations

import click

from ddpm_export.console import IntRange
from ddpm_export.serve.configs import DEFAULT_MAX_IMAGE_STEPS, LIMITS, UNET_BACKENDS


@click.command("triton")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A bundle folder (`ddpm-export bundle`); every file's sha256 is checked first.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The model repository folder to write.")
@click.option("--unet-backend", type=click.Choice(UNET_BACKENDS.names), default="onnxruntime",
              help="How Triton runs the U-Net: onnxruntime_onnx, tensorrt_plan (needs an engine in the bundle), "
                   "OpenVINO, or a Python-backend model running ddpm-export's ONNX Runtime backend "
                   "(for servers without those backends, e.g. the CPU build in nvidia-pytriton).")
@click.option("--instances", type=IntRange(*LIMITS["instances"]), default=4,
              help="Sampler instances: requests sampled at once (their U-Net calls are batched together).")
@click.option("--onnx", "--bundle-onnx", "onnx_name", default=None, metavar="NAME",
              help="Which ONNX file of the bundle (its name; `sample` spells it --bundle-onnx) [default: the first].")
@click.option("--max-queue-delay-us", type=IntRange(*LIMITS["max_queue_delay_us"]), default=500,
              help="How long the unet's dynamic batcher waits to merge calls, in microseconds.")
@click.option("--max-images", type=IntRange(*LIMITS["max_images"]), default=1024,
              help="The largest num_images one request may ask for.")
@click.option("--max-image-steps", type=IntRange(*LIMITS["max_image_steps"]), default=DEFAULT_MAX_IMAGE_STEPS,
              help="The most num_images x steps one request may ask for: it holds a sampler instance that long "
                   "and an HTTP client cannot cancel it. The default (16 images of 1000 steps, 327 of 50) is 1.5-3 "
                   "minutes of the digits model on 2 CPU cores (5.3 ms per image-step, 11 guided, served by "
                   "--unet-backend python); lower it for a larger model.")
@click.option("--force", is_flag=True, help="Replace an existing repository folder.")
def command(bundle_dir: str, output: str, unet_backend: str, instances: int, onnx_name: str | None,
            max_queue_delay_us: int, max_images: int, max_image_steps: int, force: bool) -> None:
    """Write a Triton model repository: `unet` (dynamic batching) and `sampler` (the loop, via BLS).

    \b
    A request to `sampler` (seed, num_images, steps; optional sampler, eta, guidance_scale;
    class_labels for a class-conditional model, context [n, L, D] for a context-conditioned one)
    returns the images `Pipeline.sample` returns for the same arguments. The
    Python-backend models need this ddpm-export version installed in the server's Python.
    `ddpm-export --threads N triton ...` sets the U-Net's CPU threads in its config (not for
    tensorrt). The folder is written under a temporary name and renamed into place.
    \b
    Example:
      ddpm-export triton --bundle digits-bundle -o triton-repo --unet-backend python
      tritonserver --model-repository triton-repo
    """
    from ddpm_export.serve import write_repository
    from ddpm_export.threads import get_threads

    out = write_repository(bundle_dir, output, unet_backend=unet_backend, instances=instances,  # type: ignore[arg-type]
                           onnx=onnx_name, max_queue_delay_us=max_queue_delay_us, max_images=max_images,
                           max_image_steps=max_image_steps, threads=get_threads(), force=force)
    click.echo(f"wrote {out}/ (unet: {unet_backend}, sampler: {instances} instance(s))")
