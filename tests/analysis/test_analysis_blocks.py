"""The per-block table and the what-if costs: parameters add up to the model's, FLOPs equal
torch's FlopCounterMode on a real forward pass, attention sizes and the separable saving by formula."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ddpm_export import load_model
from ddpm_export.analysis.blocks import block_table
from ddpm_export.analysis.flops import FlopHooks, flop_counter_total
from ddpm_export.analysis.inputs import example_inputs
from ddpm_export.analysis.whatif import what_if
from ddpm_export.config import UNetConfig

PRESETS = ["tiny", "kitchen-sink", "digits", "ddpm-cifar10"]


@pytest.mark.parametrize("name", PRESETS)
def test_block_parameters_add_up_to_the_models(name):
    model = load_model(name)
    table = block_table(model.config)
    assert table.total_params == sum(r.params for r in table.rows) == sum(p.numel() for p in model.parameters())
    # every parameter is in exactly one block
    names = [n for n, _ in model.named_parameters()]
    owners = [[r.name for r in table.rows if n.startswith(r.name + ".")] for n in names]
    assert all(len(o) == 1 for o in owners)


@pytest.mark.parametrize("name", ["tiny", "kitchen-sink", "digits"])
def test_flops_equal_flop_counter_mode_on_a_real_forward(name):
    """The table counts on the meta device from layer shapes; FlopCounterMode here counts the aten
    ops of a real CPU forward pass of the loaded model."""
    torch.manual_seed(0)
    model = load_model(name)
    x, t, cond = example_inputs(model.config, 1)
    real = flop_counter_total(lambda: model(x, t, cond))
    table = block_table(model.config)
    assert table.total_flops == real == table.flop_counter_flops


def test_conv_and_linear_flops_by_formula():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(),
                        nn.Linear(8 * 16 * 16, 10))
    with FlopHooks(net) as hooks, torch.no_grad():
        net(torch.zeros(2, 3, 16, 16))
    assert hooks.flops["0"] == 2 * (2 * 8 * 16 * 16) * 3 * 9
    assert hooks.flops["1"] == 2 * (2 * 8 * 16 * 16) * 1 * 9
    assert hooks.flops["3"] == 2 * 2 * (8 * 16 * 16) * 10
    assert sum(hooks.flops.values()) == flop_counter_total(lambda: net(torch.zeros(2, 3, 16, 16)))


def test_attention_tokens_and_score_bytes():
    cfg = load_model("tiny").config  # attention at 8x8 (32 channels, 1 head) and in the bottleneck
    table = block_table(cfg, batch=4)
    attn = [r for r in table.rows if r.kind == "AttentionBlock"]
    assert [r.name for r in attn] == ["down.1.attentions.0", "mid_attention", "up.0.attentions.0", "up.0.attentions.1"]
    for r in attn:  # [B, heads, N, N] float32 with N = 8 * 8
        assert r.attention_tokens == 64 and r.score_bytes == 4 * 4 * 1 * 64 * 64
    assert all(r.score_bytes == 0 for r in table.rows if r.kind != "AttentionBlock")


def test_what_if_separable_saves_what_the_formula_says():
    """Per k x k block conv C_in -> C_out: k^2 C_in C_out + C_out weights and bias, separable
    k^2 C_in + C_in (depthwise) + C_in C_out + C_out (pointwise): saves k^2 C_in C_out - k^2 C_in - C_in C_out - C_in."""
    cfg = load_model("tiny").config
    base, variants = what_if(cfg)
    separable = next(v for v in variants if v.change == "separable on")
    k = cfg.kernel_size
    saving = 0
    for r in block_table(cfg).rows:
        if r.kind == "ResBlock":  # conv1: C_in -> C_out, conv2: C_out -> C_out
            for c_in, c_out in ((r.in_channels, r.out_channels), (r.out_channels, r.out_channels)):
                saving += k * k * c_in * c_out - k * k * c_in - c_in * c_out - c_in
    assert base.params - separable.params == saving


def test_what_if_attention_off_removes_those_blocks():
    cfg = load_model("tiny").config
    base, variants = what_if(cfg)
    off = next(v for v in variants if v.change == "attention at 8x8 off")
    table = block_table(cfg)
    level_attn = [r for r in table.rows if r.kind == "AttentionBlock" and r.name != "mid_attention"]
    assert base.params - off.params == sum(r.params for r in level_attn)
    assert base.flops - off.flops == sum(r.flops for r in level_attn)
    on16 = next(v for v in variants if v.change == "attention at 16x16 on")
    expected = dataclasses.replace(cfg, attention_resolutions=(16, 8))
    assert on16.params == sum(p.numel() for p in load_model_from(expected).parameters())


def test_what_if_reports_an_invalid_variant():
    cfg = UNetConfig(base_channels=24, channel_mult=(1, 2), num_groups=8, num_heads=16, sample_size=16,
                     attention_resolutions=(), mid_attention=False)
    _, variants = what_if(cfg)
    bad = next(v for v in variants if v.change == "attention at 16x16 on")
    assert bad.params is None and "num_heads" in bad.error


def load_model_from(cfg: UNetConfig) -> nn.Module:
    from ddpm_export.nn.checkpoint import build_model

    return build_model(cfg)
