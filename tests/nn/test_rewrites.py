"""Exact rewrites (``ddpm_export.nn.rewrites``): each rewritten module computes what the module
computes without it, on random weights (nothing zero-initialised), to float32 rounding.

The oracle is the plain module itself (nearest upsampling + conv; four projections + softmax),
run in float64 where a bound must be tight.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import ddpm_export  # noqa: E402
from ddpm_export.config import UNetConfig  # noqa: E402
from ddpm_export.errors import BadInputError  # noqa: E402
from ddpm_export.nn.attention import Attention, AttentionBlock  # noqa: E402
from ddpm_export.nn.blocks import Upsample  # noqa: E402
from ddpm_export.nn.rewrites import can_fold, fold_attention, upsample_deconv, use_rewrites  # noqa: E402
from ddpm_export.nn.subpixel import SubpixelUpsample  # noqa: E402

#: float32 rounding of a few hundred-term sums of O(1) values; measured 1e-6 .. 3e-6
FP32_ATOL = 2e-5


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


@pytest.mark.parametrize("channels,size,batch", [(4, 1, 1), (8, 5, 2), (16, 8, 3)])
def test_upsample_deconv_equals_nearest_then_conv(channels, size, batch):
    up = _randomise(Upsample(channels), seed=channels).double()
    x = torch.randn(batch, channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = up(x)
        deconv = upsample_deconv(up.conv)
        out = F.conv_transpose2d(x, deconv.weight, deconv.bias, stride=2, padding=1)
    assert out.shape == ref.shape == (batch, channels, 2 * size, 2 * size)
    assert float((out - ref).abs().max()) < 1e-12  # an identity: float64 rounding only


def test_upsample_deconv_taps_on_a_one_hot_kernel():
    """Independent check of the tap table: a kernel that only reads the pixel below (w[+1, 0])."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 2, 1] = 1.0  # out(y, x) = up(y + 1, x)
    weight = upsample_deconv(conv).weight.detach()
    # per axis y: taps [w1, w0 + w1, w-1 + w0, w-1] = [1, 1, 0, 0]; along x only w0 = 1: [0, 1, 1, 0]
    expected = torch.outer(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert torch.equal(weight[0, 0], expected)


@pytest.mark.parametrize("channels,size,batch,bias", [(4, 1, 1, True), (8, 5, 2, True), (16, 8, 3, True),
                                                      (6, 4, 2, False)])
def test_upsample_subpixel_equals_nearest_then_conv(channels, size, batch, bias):
    conv = _randomise(torch.nn.Conv2d(channels, channels + 1, 3, padding=1, bias=bias), seed=channels).double()
    x = torch.randn(batch, channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        out = SubpixelUpsample(conv)(x)
    assert out.shape == ref.shape == (batch, channels + 1, 2 * size, 2 * size)
    assert float((out - ref).abs().max()) < 1e-12  # an identity: float64 rounding only


def test_upsample_subpixel_taps_on_a_one_hot_kernel():
    """Independent check of the phase table: a kernel that only reads the pixel below (w[+1, 0]).

    Output row 2i + a reads upsampled row 2i + a + 1 = input row i + a: the second of the two rows
    phase a reads (i - 1, i for a = 0; i, i + 1 for a = 1). Column j reads input column j: the
    second column for phase b = 0 (j - 1, j), the first for b = 1 (j, j + 1)."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 2, 1] = 1.0
    phases = [p.weight.detach()[0, 0] for p in SubpixelUpsample(conv).phases]  # (a, b) = 00, 01, 10, 11
    rows, cols = torch.tensor([0.0, 1.0]), {0: torch.tensor([0.0, 1.0]), 1: torch.tensor([1.0, 0.0])}
    for index, got in enumerate(phases):
        assert torch.equal(got, torch.outer(rows, cols[index % 2])), index


def test_upsample_subpixel_refuses_another_conv():
    with pytest.raises(ValueError, match="3 x 3 conv with padding 1"):
        SubpixelUpsample(torch.nn.Conv2d(4, 4, 3, padding=0))


def _attention_case(bias: bool, extra: bool, channels: int = 16, tokens: int = 9, batch: int = 2):
    attn = _randomise(Attention(channels, heads=1), seed=3)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(batch, tokens, channels, generator=gen)
    kwargs = {}
    if bias:
        kwargs["bias"] = torch.randn(1, tokens, tokens, generator=gen)
    if extra:
        kwargs["qk_extra"] = torch.randn(tokens, channels, generator=gen)
    return attn, x, kwargs


@pytest.mark.parametrize("bias,extra", [(False, False), (True, False), (False, True), (True, True)])
def test_folded_attention_equals_four_projections(bias, extra):
    attn, x, kwargs = _attention_case(bias, extra)
    with torch.no_grad():
        ref = attn(x, **kwargs)
        with use_rewrites(attn, ("attention-fold",)) as n:
            out = attn(x, **kwargs)
    assert n == 1
    assert attn.fold_qk is None and attn.fold_vo is None  # undone on exit
    assert set(attn.state_dict()) == {f"{p}.{w}" for p in ("to_q", "to_k", "to_v", "to_out") for w in ("weight", "bias")}
    assert float((out - ref).abs().max()) < FP32_ATOL


def _softmax64(q, k, v, bias=None):
    """Attention entirely in float64 (the model's kernel takes its softmax in float32)."""
    w = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(w if bias is None else w + bias, dim=-1) @ v


def test_folded_attention_in_float64_is_an_identity():
    attn, x, kwargs = _attention_case(True, True)
    attn, x = attn.double(), x.double()
    attn.kernel = _softmax64
    kwargs = {k: v.double() for k, v in kwargs.items()}
    with torch.no_grad():
        ref = attn(x, **kwargs)
        attn.fold_qk, attn.fold_vo = fold_attention(attn)
        out = attn(x, **kwargs)
    assert float((out - ref).abs().max()) < 1e-12


def test_folded_weights_are_the_stated_products():
    attn = _randomise(Attention(6, heads=1), seed=9)
    qk, vo = fold_attention(attn)
    wq, bq, wk = attn.to_q.weight.detach(), attn.to_q.bias.detach(), attn.to_k.weight.detach()
    wv, bv, wo, bo = (attn.to_v.weight.detach(), attn.to_v.bias.detach(), attn.to_out.weight.detach(),
                      attn.to_out.bias.detach())
    torch.testing.assert_close(qk.weight, wk.T @ wq)
    torch.testing.assert_close(qk.bias, wk.T @ bq)
    torch.testing.assert_close(vo.weight, wo @ wv)
    torch.testing.assert_close(vo.bias, wo @ bv + bo)
    assert not qk.weight.requires_grad and qk.weight.dtype == wq.dtype


def test_only_single_head_self_attention_is_folded():
    assert can_fold(Attention(8, heads=1))
    assert not can_fold(Attention(8, heads=2))
    assert not can_fold(Attention(8, heads=1, context_dim=5))
    with pytest.raises(ValueError, match="single-head self-attention"):
        fold_attention(Attention(8, heads=2))
    cfg = UNetConfig(base_channels=8, channel_mult=(1,), sample_size=4, num_groups=4, num_res_blocks=1,
                     attention_resolutions=(4,), context_dim=5, zero_init=False)
    block = _randomise(AttentionBlock(cfg, 8, 4, context_dim=5), seed=2)
    x, ctx = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 5)
    with torch.no_grad():
        ref = block(x, ctx)
        with use_rewrites(block, ("attention-fold",)) as n:
            assert block.attn.fold_qk is not None and block.cross.fold_qk is None
            out = block(x, ctx)
    assert n == 1
    assert float((out - ref).abs().max()) < FP32_ATOL


@pytest.mark.parametrize("upsampling", ["upsample-deconv", "upsample-subpixel"])
def test_a_whole_unet_with_an_upsampling_rewrite_and_the_fold_matches(upsampling):
    unet = _randomise(ddpm_export.load_model("tiny"), seed=11)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 3, 16, 16, generator=gen), torch.tensor([0, 500, 999])
    with torch.no_grad():
        ref = unet(x, t)
        with use_rewrites(unet, (upsampling, "attention-fold")) as n:
            assert all(m.rewrite is not None for m in unet.modules() if isinstance(m, Upsample))
            out = unet(x, t)
        again = unet(x, t)
    n_up = sum(isinstance(m, Upsample) for m in unet.modules())
    n_attn = sum(isinstance(m, Attention) for m in unet.modules())
    assert n == n_up + n_attn and n_up >= 1 and n_attn >= 1
    assert float((out - ref).abs().max()) < FP32_ATOL * float(ref.abs().max())
    assert torch.equal(again, ref)  # the model is itself again after the block


def test_unknown_rewrite_lists_the_choices():
    with pytest.raises(BadInputError, match="'winograd' are not valid; choose from: upsample-deconv, "
                                            "upsample-subpixel, attention-fold"):
        with use_rewrites(Upsample(4), ("winograd",)):
            pass


def test_two_upsampling_rewrites_are_refused():
    up = Upsample(4)
    with pytest.raises(BadInputError, match="upsample-deconv and upsample-subpixel both rewrite the upsampling conv"):
        with use_rewrites(up, ("upsample-deconv", "upsample-subpixel")):
            pass
    assert up.rewrite is None
