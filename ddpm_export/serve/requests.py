"""A sampler request's tensors -> a validated :class:`~ddpm_export.runtime.SampleRequest` (torch-free).

Kept apart from the Triton model so it is tested without a server. Every error is a
:class:`RequestError` whose message starts with the request input it is about (``num_images: ...``),
which the sampler model returns to the client as a Triton error.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from ddpm_export.contract.conditioning import CONDITIONINGS
from ddpm_export.contract.info import ModelInfo
from ddpm_export.diffusion import SCHEDULERS
from ddpm_export.errors import BadInputError
from ddpm_export.runtime.pipeline import SampleRequest
from ddpm_export.serve.configs import MAX_IMAGE_STEPS_PARAM, OPTIONAL_INPUTS, REQUIRED_INPUTS

__all__ = ["RequestError", "parse_request"]

#: SampleRequest's argument names -> the request inputs (the conditioning's from its descriptor).
_INPUT_OF_ARGUMENT = {"n": "num_images",
                      **{c.argument: c.input_name for c in CONDITIONINGS.values() if c.argument and c.input_name}}


class RequestError(BadInputError):
    """A bad sampler request; the message names the input."""


def parse_request(info: ModelInfo, inputs: Mapping[str, np.ndarray], *, max_images: int,
                  max_image_steps: int | None = None) -> SampleRequest:
    """Validate the request tensors (name -> array, as Triton delivers them) against the model.

    ``seed``, ``num_images``, ``steps``: int64 ``[1]``; ``sampler``: bytes ``[1]`` (any name of
    :data:`ddpm_export.diffusion.samplers.SCHEDULERS`: ``ddim``, ``ddpm``, ``unipc``, ...); ``eta``,
    ``guidance_scale``: float32 ``[1]``; ``class_labels``: int64 ``[n]``; ``context``: float32
    ``[n, L, D]``. Absent optional inputs take the model's defaults. ``num_images`` is capped at
    ``max_images`` (the memory a request holds) and ``num_images x steps`` at ``max_image_steps``
    (None: no cap; a repository written before it), which bounds the time one request holds a
    sampler instance: an HTTP client cannot cancel it.
    """
    cond = info.spec.conditioning
    allowed = (*REQUIRED_INPUTS, *OPTIONAL_INPUTS, *cond.input_names())
    for name in inputs:
        if name not in allowed:
            raise RequestError(f"{name}: not an input of this model (inputs: {', '.join(allowed)})")
    for name in REQUIRED_INPUTS:
        if name not in inputs:
            raise RequestError(f"{name}: missing; every request needs {', '.join(REQUIRED_INPUTS)}")
    n = _one(inputs, "num_images", np.int64)
    if n > max_images:
        raise RequestError(f"num_images: at most {max_images} per request (the server's "
                           f"max_images_per_request), got {n}")
    conditioning = _conditioning(info, inputs)
    try:  # SampleRequest's own checks name its arguments; _name_input renames them to the inputs
        request = SampleRequest(
            info, n, steps=_one(inputs, "steps", np.int64), sampler=_sampler(inputs),
            seed=_one(inputs, "seed", np.int64), eta=_optional_float(inputs, "eta"),
            guidance_scale=_optional_float(inputs, "guidance_scale", 1.0), x_T=None, **conditioning)
    except BadInputError as e:
        raise RequestError(_name_input(str(e))) from e
    if max_image_steps is not None and request.n * request.steps > max_image_steps:
        raise RequestError(f"num_images x steps: {request.n} x {request.steps} = {request.n * request.steps} "
                           f"image-steps, more than the server's {MAX_IMAGE_STEPS_PARAM} {max_image_steps}; "
                           f"ask for fewer images or steps per request")
    return request


def _conditioning(info: ModelInfo, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """SampleRequest's conditioning arguments (``classes``, ``context``): the request's input for
    the model's kind (None when not sent), None for the others. The input must have the graph
    input's dtype and rank; the descriptor checks its values."""
    cond = info.spec.conditioning
    arguments: dict[str, np.ndarray | None] = {c.argument: None for c in CONDITIONINGS.values() if c.argument}
    value = None if cond.input_name is None else inputs.get(cond.input_name)
    if value is None or cond.argument is None:
        return arguments
    want = cond.shape(info.spec, 1, None)[cond.input_name]
    if value.dtype != cond.dtype or value.ndim != len(want):
        axes = cond.dynamic_axes().get(cond.input_name, {})
        dims = ["num_images", *(axes.get(i, str(size)) for i, size in enumerate(want) if i)]
        raise RequestError(f"{cond.input_name}: must be {cond.dtype} [{', '.join(dims)}], got {value.dtype} "
                           f"{list(value.shape)}")
    return {**arguments, cond.argument: value}


def _one(inputs: Mapping[str, np.ndarray], name: str, dtype: type) -> Any:
    arr = inputs[name]
    if arr.dtype != dtype or arr.shape != (1,):
        raise RequestError(f"{name}: must be {np.dtype(dtype).name} [1], got {arr.dtype} {list(arr.shape)}")
    return arr[0].item()


def _optional_float(inputs: Mapping[str, np.ndarray], name: str, default: float | None = None) -> float | None:
    if name not in inputs:
        return default
    value = _one(inputs, name, np.float32)
    return float(value)


#: the longest ``sampler`` input read (the names are a few characters)
MAX_SAMPLER_NAME = 64


def _sampler(inputs: Mapping[str, np.ndarray]) -> str | None:
    if "sampler" not in inputs:
        return None
    arr = inputs["sampler"]
    if arr.dtype != np.object_ or arr.shape != (1,) or not isinstance(arr[0], bytes):
        raise RequestError(f"sampler: must be BYTES [1], got {arr.dtype} {list(arr.shape)}")
    if len(arr[0]) > MAX_SAMPLER_NAME:  # the error would echo it whole (a 200,000-byte name, a 200 kB reply)
        raise RequestError(f"sampler: {len(arr[0])} bytes is no sampler name (at most {MAX_SAMPLER_NAME}); "
                           f"choose one of: {', '.join(SCHEDULERS.names)}")
    try:
        return arr[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("sampler: not UTF-8 text") from None


def _name_input(message: str) -> str:
    """SampleRequest names its arguments (``n``, ``classes``); name the request inputs instead:
    the argument a message starts with, ``n=`` anywhere in it (``must hold n=2 ids``) and the
    chunking advice (``choose n so that n % 6 is 0``) -- not a quoted value or a ``-n`` flag."""
    match = re.match(r"(n|classes)(?=[\s=:])", message)
    if match is not None:
        message = _INPUT_OF_ARGUMENT[match.group(1)] + message[match.end():]
    images = _INPUT_OF_ARGUMENT["n"]
    message = re.sub(r"(?<![\w'\"-])n=", f"{images}=", message)
    return message.replace("choose n so that n %", f"choose {images} so that {images} %")
