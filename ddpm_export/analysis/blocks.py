"""The per-block table of a U-Net: level, resolution, channels, parameters, FLOPs, theoretical
receptive field and attention cost, from one forward pass at the model's sample size.

The pass runs on the meta device (shapes only, no weights, no arithmetic), so the table of a
35M-parameter model takes well under a second. Blocks partition the model: every parameter
belongs to exactly one row, so the rows add up to the model's parameter count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch
from torch import nn

from ddpm_export.analysis.flops import FlopHooks, flop_counter_total
from ddpm_export.analysis.inputs import example_inputs
from ddpm_export.analysis.receptive_field import RFTracker
from ddpm_export.config import UNetConfig
from ddpm_export.nn.unet import Level, UNet

__all__ = ["BlockRow", "BlockTable", "block_table", "iter_blocks", "meta_model"]


@dataclasses.dataclass(frozen=True)
class BlockRow:
    """One block. ``level`` is None for the embeddings; ``resolution`` is the output's H (= W)
    and ``rf`` its theoretical receptive field in input pixels (None for the embeddings)."""

    name: str
    kind: str                 # the module's class name
    level: int | None
    resolution: int | None
    in_channels: int
    out_channels: int
    params: int
    flops: int                # per image, at the model's sample size
    rf: float | None          # exact: the worst-aligned output position (receptive_field.RF.size)
    rf_formula: float | None  # the design's formula, upsampling dividing the jump
    rf_jump: float | None     # input pixels between neighbouring output positions
    attention_tokens: int     # queries of the block's spatial attention (H*W), 0 without
    score_bytes: int          # float32 score matrices of all its attention calls at the batch


@dataclasses.dataclass(frozen=True)
class BlockTable:
    rows: tuple[BlockRow, ...]
    batch: int
    total_params: int         # sum of the rows (the report checks it against the model's own count)
    total_flops: int          # sum of the rows
    flop_counter_flops: int   # torch.utils.flop_counter.FlopCounterMode on the same pass
    rf: float                 # theoretical RF of the model's output (exact)
    rf_formula: float         # the same by the design's formula


def meta_model(cfg: UNetConfig) -> UNet:
    """The UNet of ``cfg`` on the meta device: every shape, no storage, built in milliseconds."""
    with torch.device("meta"):
        return UNet(cfg).eval()


def iter_blocks(unet: UNet) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every block: the children of the UNet and of its levels,
    with the ModuleLists and Levels that only group them expanded."""
    def expand(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, (nn.ModuleList, Level)):
                yield from expand(full + ".", child)
            else:
                yield full, child
    yield from expand("", unet)


def block_names(unet: UNet) -> tuple[str, ...]:
    """The blocks' qualified names, longest first (a module belongs to the first that prefixes it)."""
    return tuple(sorted((name for name, _ in iter_blocks(unet)), key=len, reverse=True))


def _level(name: str, levels: int) -> int | None:
    head, _, rest = name.partition(".")
    if head in ("time_embedding", "class_embedding"):
        return None
    if head == "down":
        return int(rest.split(".")[0])
    if head == "up":
        return levels - 1 - int(rest.split(".")[0])
    if head in ("mid_resnets", "mid_attention", "aspp"):
        return levels - 1
    return 0  # conv_in, norm_out, conv_out


def _first_tensor(args: Any) -> torch.Tensor:
    return next(a for a in args if isinstance(a, torch.Tensor))


def block_table(cfg: UNetConfig, batch: int = 1) -> BlockTable:
    """The table of the UNet of ``cfg``; attention score bytes are for ``batch`` images."""
    unet = meta_model(cfg)
    seen: dict[str, tuple[torch.Size, torch.Size, Any]] = {}
    tracker = RFTracker()

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if name not in seen:  # a block runs once per forward
                seen[name] = (_first_tensor(args).shape, out.shape, tracker.rf(out))
        return record

    x, t, cond = example_inputs(cfg, 1, device="meta")
    handles = [m.register_forward_hook(hook(n)) for n, m in iter_blocks(unet)]
    try:
        with FlopHooks(unet) as counted, tracker, torch.no_grad():
            out = unet(tracker.mark(x), t, cond)
            model_rf = tracker.rf(out)
    finally:
        for h in handles:
            h.remove()
    counter = flop_counter_total(lambda: unet(x, t, cond))
    assert model_rf is not None
    modules = dict(iter_blocks(unet))
    rows = tuple(_row(name, modules[name], shapes, counted, batch, len(cfg.channel_mult))
                 for name, shapes in seen.items())  # in the order the blocks ran
    return BlockTable(rows, batch, sum(r.params for r in rows), sum(r.flops for r in rows),
                      counter, float(model_rf.size), float(model_rf.formula))


def _row(name: str, module: nn.Module, shapes: tuple[torch.Size, torch.Size, Any], counted: FlopHooks,
         batch: int, levels: int) -> BlockRow:
    shape_in, shape_out, rf = shapes
    inside = lambda key: key == name or key.startswith(name + ".")  # noqa: E731
    calls = [c for key, cs in counted.attention.items() if inside(key) for c in cs]
    spatial = shape_out.numel() // shape_out[0] // shape_out[1] if len(shape_out) == 4 else 0
    return BlockRow(
        name=name, kind=type(module).__name__, level=_level(name, levels),
        resolution=int(shape_out[-1]) if len(shape_out) == 4 else None,
        in_channels=int(shape_in[1] if len(shape_in) == 4 else shape_in[-1]),
        out_channels=int(shape_out[1] if len(shape_out) == 4 else shape_out[-1]),
        params=sum(p.numel() for p in module.parameters()),
        flops=sum(f for key, f in counted.flops.items() if inside(key)),
        rf=None if rf is None else float(rf.size), rf_formula=None if rf is None else float(rf.formula),
        rf_jump=None if rf is None else float(rf.jump),
        attention_tokens=max((c.queries for c in calls if c.queries == spatial), default=0),
        score_bytes=sum(c.score_bytes(batch) for c in calls))
