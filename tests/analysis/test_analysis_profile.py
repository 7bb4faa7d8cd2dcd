"""ONNX Runtime profile of an exported model: every kernel's time lands in a category and a block."""

from __future__ import annotations

import pytest

from ddpm_export import load_model
from ddpm_export.analysis.blocks import iter_blocks
from ddpm_export.analysis.profile import CATEGORIES, GLUE, profile_onnxruntime


@pytest.mark.parametrize("name", ["tiny", "kitchen-sink"])
def test_profile_attributes_every_kernel(name):
    unet = load_model(name)
    prof = profile_onnxruntime(unet, batch=2, runs=2)
    assert prof.total_us > 0 and set(prof.by_category) == set(CATEGORIES)
    assert sum(prof.by_category.values()) == pytest.approx(prof.total_us)
    assert sum(prof.by_block.values()) == pytest.approx(prof.total_us)
    assert sum(prof.by_op.values()) == pytest.approx(prof.total_us)
    blocks = {n for n, _ in iter_blocks(unet)}
    assert set(prof.by_block) <= blocks | {GLUE}
    # the U-Net's own ops (skip concatenation, casts) are a small part; convs and attention are named
    assert prof.by_block.get(GLUE, 0.0) < 0.5 * prof.total_us
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
