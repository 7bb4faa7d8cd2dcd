"""``ddpm-export inspect``'s report: one JSON-ready dict and its text tables."""

from __future__ import annotations

import dataclasses
from typing import Any

from ddpm_export.analysis.blocks import BlockTable
from ddpm_export.analysis.erf import ErfResult
from ddpm_export.analysis.profile import CATEGORIES, Profile
from ddpm_export.analysis.trt_layers import LayerProfile
from ddpm_export.analysis.whatif import WhatIf
from ddpm_export.console import count

#: blocks listed by name in the profile; the rest are summed
TOP_BLOCKS = 12

__all__ = ["add_erf", "add_profile", "add_trt_profile", "build_report", "format_erf", "format_profile", "format_tables",
           "format_trt_profile"]


def build_report(model: str, weights: str, model_params: int, table: BlockTable, base: WhatIf,
                 variants: list[WhatIf]) -> dict[str, Any]:
    """The static analysis as plain JSON types. ``total_flops`` is per image (batch 1)."""
    return {
        "model": model, "weights": weights, "batch": table.batch,
        "total_params": model_params, "block_params": table.total_params,
        "total_flops": table.total_flops, "flop_counter_flops": table.flop_counter_flops,
        "theoretical_rf": table.rf, "theoretical_rf_formula": table.rf_formula,
        "blocks": [dataclasses.asdict(r) for r in table.rows],
        "what_if": [dataclasses.asdict(w) for w in (base, *variants)],
        "seconds": {},
    }


def add_erf(report: dict[str, Any], erf: ErfResult, timesteps: list[int], samples: int, weights: str) -> None:
    """The ERF's figures; ``weights`` says which weights it was measured with (see ``inspect``)."""
    report.update(erf_weights=weights, erf_radius=erf.radius, erf_diameter=erf.diameter,
                  erf_half_mass_radius=erf.half_mass_radius, erf_ratio=erf.ratio,
                  visible_rf=erf.visible_rf, erf_ratio_visible=erf.ratio_visible,
                  erf_timesteps=timesteps, erf_samples=samples, erf_size=int(erf.map.shape[0]))


def add_profile(report: dict[str, Any], profile: Profile) -> None:
    report["profile"] = {"runs": profile.runs, "batch": profile.batch, "threads": profile.threads,
                         "total_us": profile.total_us, "by_category_us": profile.by_category,
                         "by_block_us": profile.by_block, "by_op_us": profile.by_op}


def add_trt_profile(report: dict[str, Any], profile: LayerProfile, engine: str) -> None:
    report["tensorrt_profile"] = {"engine": engine, "runs": profile.runs, "batch": profile.batch,
                                  "total_us": profile.total_us, "unplaced_us": profile.unplaced_us,
                                  "by_category_us": profile.by_category, "by_block_us": profile.by_block,
                                  "by_layer_us": profile.by_layer}


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _fmt_bytes(n: int) -> str:
    if n == 0:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _block_lines(report: dict[str, Any]) -> list[str]:
    rows = []
    for b in report["blocks"]:
        res = "-" if b["resolution"] is None else f"{b['resolution']}x{b['resolution']}"
        rf = "-" if b["rf"] is None else f"{b['rf']:g}" + ("" if b["rf"] == b["rf_formula"] else f" ({b['rf_formula']:g})")
        rows.append([b["name"], b["kind"], "-" if b["level"] is None else str(b["level"]), res,
                     f"{b['in_channels']}->{b['out_channels']}", _fmt_int(b["params"]),
                     f"{b['flops'] / 1e6:,.1f}", rf, str(b["attention_tokens"] or "-"), _fmt_bytes(b["score_bytes"])])
    header = ["block", "kind", "level", "res", "channels", "params", "MFLOPs", "RF",
              "attn tokens", f"scores @B={report['batch']}"]
    return _table(header, rows, right={2, 3, 5, 6, 7, 8, 9})


def _totals_lines(report: dict[str, Any]) -> list[str]:
    params_ok = "agrees" if report["total_params"] == report["block_params"] else "DIFFERS"
    flops_ok = "agrees" if report["total_flops"] == report["flop_counter_flops"] else "DIFFERS"
    lines = [f"parameters {report['total_params']:,} (model) = {report['block_params']:,} (sum of blocks): {params_ok}",
             f"FLOPs per image {report['total_flops']:,} (sum of blocks) vs {report['flop_counter_flops']:,} "
             f"(torch FlopCounterMode): {flops_ok}",
             f"theoretical receptive field of the output: {report['theoretical_rf']:g} px, worst-aligned position "
             f"({report['theoretical_rf_formula']:g} by the formula with upsampling dividing the jump; "
             f"convolutions only: attention and norms make it global)"]
    return lines


def _whatif_lines(report: dict[str, Any]) -> list[str]:
    base = report["what_if"][0]
    rows, invalid = [], []
    for w in report["what_if"]:
        if w["error"] is not None:  # the reason below the table: in a column it pushed every figure aside
            rows.append([w["change"], "-", "-", "-", "-", "invalid"])
            invalid.append(f"{w['change']}: invalid: {w['error']}")
            continue
        rows.append([w["change"], _fmt_int(w["params"]), f"{w['params'] / base['params']:.2f}x",
                     f"{w['flops'] / 1e6:,.1f}", f"{w['flops'] / base['flops']:.2f}x", _fmt_bytes(w["score_bytes"])])
    header = ["what if", "params", "", "MFLOPs", "", f"scores @B={report['batch']}"]
    return [*_table(header, rows, right={1, 2, 3, 4, 5}), *invalid]


def format_profile(report: dict[str, Any]) -> str:
    """The profile section: share of kernel time per op category and per block."""
    p = report["profile"]
    total = p["total_us"] or 1.0
    head = (f"ONNX Runtime CPU profile: {count(p['runs'], 'run')} at batch {p['batch']}, "
            f"{count(p['threads'], 'thread')}, "
            f"{total / p['runs'] / 1e3:.2f} ms of kernel time per run")
    return "\n".join([head, *_share_lines(p["by_category_us"], p["by_block_us"], total)])


def format_trt_profile(report: dict[str, Any]) -> str:
    """The TensorRT section, in the shape of :func:`format_profile`, with the slowest layers."""
    p = report["tensorrt_profile"]
    total = p["total_us"] or 1.0
    head = (f"TensorRT per-layer profile of {p['engine']}: {count(p['runs'], 'run')} at batch {p['batch']}, "
            f"{total / p['runs'] / 1e3:.3f} ms of layer time per run"
            + (f" ({p['unplaced_us'] / total:.1%} in layers naming no node of the model)" if p["unplaced_us"] else ""))
    layers = sorted(p["by_layer_us"].items(), key=lambda kv: -kv[1])[:TOP_BLOCKS]
    rows = [[name if len(name) <= 90 else name[:87] + "...", f"{us / total:6.1%}"] for name, us in layers]
    return "\n".join([head, *_share_lines(p["by_category_us"], p["by_block_us"], total), "",
                      *_table(["layer (slowest)", "share"], rows, right={1})])


def _share_lines(by_category: dict[str, float], by_block: dict[str, float], total: float) -> list[str]:
    """Share of ``total`` per op category, then per block (the top :data:`TOP_BLOCKS`, the rest summed)."""
    lines = _table(["op category", "share"], [[c, f"{by_category[c] / total:6.1%}"] for c in CATEGORIES], right={1})
    ranked = sorted(by_block.items(), key=lambda kv: -kv[1])
    rows = [[k, f"{v / total:6.1%}"] for k, v in ranked[:TOP_BLOCKS]]
    if len(ranked) > TOP_BLOCKS:
        rest = sum(v for _, v in ranked[TOP_BLOCKS:])
        rows.append([f"({len(ranked) - TOP_BLOCKS} more blocks)", f"{rest / total:6.1%}"])
    return [*lines, "", *_table(["block", "share"], rows, right={1})]


def format_tables(report: dict[str, Any]) -> str:
    """Block table, totals and what-if table."""
    lines = [f"{report['model']}: {report['total_params']:,} parameters, "
             f"{report['total_flops'] / 1e9:.3f} GFLOPs per image", ""]
    return "\n".join(lines + _block_lines(report) + [""] + _totals_lines(report) + [""] + _whatif_lines(report))


def format_erf(report: dict[str, Any]) -> str:
    """The effective receptive field in one sentence."""
    timesteps = count(len(report["erf_timesteps"]), "timestep")
    return (f"effective receptive field (weights: {report['erf_weights']}; {timesteps} "
            f"x {count(report['erf_samples'], 'input')} of {report['erf_size']}x{report['erf_size']}): 95% of the "
            f"gradient mass within the {report['erf_diameter']}x{report['erf_diameter']} px window around the centre "
            f"pixel (r95 = {report['erf_radius']}, half the mass within r50 = {report['erf_half_mass_radius']}; a "
            f"window may reach past the image border); ratio to the theoretical RF {report['erf_ratio']:.3f}, to the "
            f"widest window that still touches the image, or the RF if smaller ({report['visible_rf']:g} px) "
            f"{report['erf_ratio_visible']:.3f}")
