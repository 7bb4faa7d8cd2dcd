"""ONNX Runtime profile of an exported model: every kernel's time lands in a category and a block."""

from __future__ import annotations

import pytest

from ddpm_export import load_model
from ddpm_export.analysis.blocks import iter_blocks
from ddpm_export.analysis.profile import CATEGORIES, GLUE, LAYOUT, profile_onnxruntime


@pytest.mark.parametrize("name", ["tiny", "kitchen-sink"])
def test_profile_attributes_every_kernel(name):
    unet = load_model(name)
    prof = profile_onnxruntime(unet, batch=2, runs=2)
    assert prof.total_us > 0 and set(prof.by_category) == set(CATEGORIES)
    assert sum(prof.by_category.values()) == pytest.approx(prof.total_us)
    assert sum(prof.by_block.values()) == pytest.approx(prof.total_us)
    assert sum(prof.by_op.values()) == pytest.approx(prof.total_us)
    blocks = {n for n, _ in iter_blocks(unet)}
    assert set(prof.by_block) <= blocks | {GLUE, LAYOUT}
    # the U-Net's own ops (skip concatenation, casts) are a small part; convs and attention are named
    assert prof.by_block.get(GLUE, 0.0) < 0.5 * prof.total_us
    # ONNX Runtime's NCHWc reorders (no module scope) are layout time, not the U-Net's glue
    assert prof.by_op.get("ReorderInput", 0.0) > 0 and prof.by_block[LAYOUT] == pytest.approx(
        prof.by_category["layout"]) == pytest.approx(prof.by_op["ReorderInput"] + prof.by_op.get("ReorderOutput", 0.0))
    assert prof.by_category["conv"] > 0 and prof.by_category["attention"] > 0
    assert prof.by_category["normalization"] > 0
    assert any(b.startswith("up.") for b in prof.by_block) and "conv_in" in prof.by_block


def test_profile_runs_the_rewritten_graph_and_counts_its_deconvolutions_as_conv():
    """inspect profiles what an fp32 export for ONNX Runtime contains: the upsampling conv is a
    ConvTranspose there (the exact rewrites), and its time is conv time of an up block."""
    unet = load_model("tiny")
    prof = profile_onnxruntime(unet, batch=1, runs=1)
    assert prof.by_op.get("ConvTranspose", 0.0) > 0 and "Resize" not in prof.by_op
    assert prof.by_category["conv"] >= prof.by_op["ConvTranspose"] + prof.by_op.get("Conv", 0.0) > 0


def test_one_slow_call_does_not_dominate_the_shares():
    """Kernel times were summed over the calls: one call slowed by another process (here 10x) put
    its blocks far ahead. Each node's median over the calls, times the calls, is what counts now."""
    from ddpm_export.analysis.profile import _summarise

    def node(name, op, ts, dur):
        return {"cat": "Node", "name": f"/unet/unet.{name}/unet.{name}.x/{op}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}

    events = [{"name": "model_run", "ts": 0, "dur": 10}]  # the warm-up call, not counted
    for run, slow in enumerate((1, 1, 10)):
        start = 100 * (run + 1)
        events += [node("conv_in", "Conv", start, 5 * slow), node("conv_out", "Conv", start + 10, 5.0)]
    prof = _summarise(events, {}, ["conv_in", "conv_out"], runs=3, batch=1, threads=1)
    assert prof.by_block == {"conv_in": 15.0, "conv_out": 15.0}  # a sum would read 60 against 15
    assert prof.total_us == 30.0 and prof.by_category["conv"] == 30.0 and prof.by_op == {"Conv": 30.0}
