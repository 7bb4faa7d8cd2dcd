"""What both checkpoint formats share: file names, a seeded model, strict loading of safetensors
weights (torch). Imported by :mod:`~ddpm_export.nn.checkpoint` (our folders) and
:mod:`~ddpm_export.nn.diffusers_import` (diffusers folders), which do not import each other's
internals."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open

from ddpm_export.config import UNetConfig
from ddpm_export.errors import BadInputError, CheckpointError
from ddpm_export.nn.unet import UNet
from ddpm_export.weights_header import read_header


def build_model(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A freshly initialised UNet; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(cfg)


def meta_model(cfg: UNetConfig) -> UNet:
    """``UNet(cfg)`` on the meta device: its keys and shapes, no memory allocated, so that weights
    that do not fit the config are refused before the model is built (a config.json of 1024 channels
    beside a 2 MB file took 4.7 GB and 12 s to say so)."""
    with torch.device("meta"):
        return UNet(cfg)


def check_state(expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]], source: str,
                against: str = "the config") -> None:
    """Refuse missing keys, unexpected keys and shape mismatches, naming them as the caller does
    (``expected`` and ``given`` map key -> shape; ``against`` names what defines the model)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {few_keys(missing)} expected by {against}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key(s) {few_keys(unexpected)} not in the model {against} "
                              f"describes")
    for key, shape in given.items():
        if tuple(shape) != tuple(expected[key]):
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(shape)}, {against} expects "
                                  f"{tuple(expected[key])}")


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_state_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into ``model`` after :func:`check_state` against the model's own keys."""
    own = model.state_dict()
    check_state(shapes(own), shapes(weights), source)
    for key, value in weights.items():  # load_state_dict would cast silently (e.g. int weights to float)
        if value.is_floating_point() != own[key].is_floating_point():
            raise CheckpointError(f"{source}: key {key!r} has dtype {value.dtype}, the model expects "
                                  f"{own[key].dtype}")
    model.load_state_dict(weights, strict=True)


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The digest of the tensors themselves, whatever file holds them (its metadata, order or
    format): sha256 over the tensors in sorted name order, each as ``name NUL dtype NUL shape NUL``
    (UTF-8; dtype as torch names it without ``torch.``, e.g. ``float32``; shape as comma-separated
    ints, empty for a scalar) followed by its elements' raw bytes, little-endian, C order.
    ``ddpm_export.source_tensors_sha256`` (docs/metadata.md)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{','.join(map(str, t.shape))}\0".encode())
        raw = t.reshape(-1).view(torch.uint8).numpy()
        if sys.byteorder == "big" and t.element_size() > 1:
            raw = raw.reshape(-1, t.element_size())[:, ::-1]
        h.update(raw.tobytes())
    return h.hexdigest()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``; a NaN or infinite weight is a CheckpointError.

    The header is checked first (torch-free), so a truncated or foreign file (e.g. a pickle
    renamed ``.safetensors``) is refused with the file's name before any tensor is read.
    """
    if not path.is_file():  # a folder in its place is not "not found"
        raise CheckpointError(f"{path}: not a regular file" if path.exists() else f"{path} not found")
    try:
        read_header(path)
    except BadInputError as e:
        raise CheckpointError(str(e)) from e
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' SafetensorError derives from Exception only
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value.float()).all():  # as the model's fp32 holds it
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values; the checkpoint is "
                                  f"corrupt (or training diverged) -- use another checkpoint")
    return state


def few_keys(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
