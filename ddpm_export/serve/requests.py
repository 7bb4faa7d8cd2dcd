"""A sampler request's tensors -> a validated :class:`~ddpm_export.runtime.SampleRequest` (torch-free).

Kept apart from the Triton model so it is tested without a server. Every error is a
:class:`RequestError` whose message starts with the request input it is about (``num_images: ...``),
which the sampler model returns to the client as a Triton error.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from ddpm_export.runtime.info import ModelInfo
from ddpm_export.runtime.pipeline import SampleRequest
from ddpm_export.serve.configs import OPTIONAL_INPUTS, REQUIRED_INPUTS

__all__ = ["RequestError", "parse_request"]

#: SampleRequest's argument names that differ from the request inputs.
_INPUT_OF_ARGUMENT = {"n": "num_images", "classes": "class_labels"}


class RequestError(ValueError):
    """A bad sampler request; the message names the input."""


def parse_request(info: ModelInfo, inputs: Mapping[str, np.ndarray], *, max_images: int) -> SampleRequest:
    """Validate the request tensors (name -> array, as Triton delivers them) against the model.

    ``seed``, ``num_images``, ``steps``: int64 ``[1]``; ``sampler``: bytes ``[1]`` (``ddim`` or
    ``ddpm``); ``eta``, ``guidance_scale``: float32 ``[1]``; ``class_labels``: int64 ``[n]``;
    ``context``: float32 ``[n, L, D]``. Absent optional inputs take the model's defaults.
    ``num_images`` is capped at ``max_images`` so that one request cannot exhaust the server.
    """
    allowed = (*REQUIRED_INPUTS, *OPTIONAL_INPUTS, *_cond_inputs(info))
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
    classes = inputs.get("class_labels")
    if classes is not None and (classes.dtype != np.int64 or classes.ndim != 1):
        raise RequestError(f"class_labels: must be int64 [num_images], got {classes.dtype} {list(classes.shape)}")
    try:
        return SampleRequest(
            info, n, steps=_one(inputs, "steps", np.int64), sampler=_sampler(inputs),
            seed=_one(inputs, "seed", np.int64), eta=_optional_float(inputs, "eta"),
            guidance_scale=_optional_float(inputs, "guidance_scale", 1.0), classes=classes,
            context=inputs.get("context"), x_T=None)
    except ValueError as e:
        raise RequestError(_name_input(str(e))) from e


def _cond_inputs(info: ModelInfo) -> tuple[str, ...]:
    return {"none": (), "class": ("class_labels",), "context": ("context",)}[info.spec.cond_kind]


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


def _sampler(inputs: Mapping[str, np.ndarray]) -> str | None:
    if "sampler" not in inputs:
        return None
    arr = inputs["sampler"]
    if arr.dtype != np.object_ or arr.shape != (1,) or not isinstance(arr[0], bytes):
        raise RequestError(f"sampler: must be BYTES [1], got {arr.dtype} {list(arr.shape)}")
    try:
        return arr[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("sampler: not UTF-8 text") from None


def _name_input(message: str) -> str:
    """SampleRequest names its arguments (``n``, ``classes``); name the request inputs instead."""
    match = re.match(r"(n|classes)(?=[\s=:])", message)
    if match is None:
        return message
    return _INPUT_OF_ARGUMENT[match.group(1)] + message[match.end():]
