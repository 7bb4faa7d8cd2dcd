"""The reference U-Net (``ddpm_export.nn``): every switch of UNetConfig on and off, on small configs.

For each switch: the output has shape [B, out_channels, H, W] and is finite, gradients reach
every parameter, and the output depends on t and (for conditional models) on cond. Then the
initialisation (``zero_init``), numerics (float64 vs float32, batch independence, determinism),
the parameter counts (a hand formula, and diffusers' ``UNet2DModel`` for ddpm-cifar10) and the
attention kernel (against ``F.scaled_dot_product_attention`` and a float64 reference).
"""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ddpm_export.config import UNetConfig  # noqa: E402
from ddpm_export.nn.attention import (  # noqa: E402
    Attention, AttentionBlock, decomposed_attention, use_attention_kernel,
)
from ddpm_export.nn.blocks import ASPP, ResBlock  # noqa: E402
from ddpm_export.nn.checkpoint import build_model  # noqa: E402
from ddpm_export.nn.conditioning import AttentionConditioning  # noqa: E402

B = 2
#: a small two-level network: 8 x 8 -> 4 x 4, channels 8 and 16, attention at 4 x 4 and in the middle
SMALL = dict(base_channels=8, channel_mult=(1, 2), sample_size=8, num_groups=4, num_res_blocks=1,
             attention_resolutions=(4,), dropout=0.0, zero_init=False)
NUM_CLASSES = 5
CONTEXT_DIM = 6
CONTEXT_LEN = 3


# name -> overrides of SMALL; together they turn every switch of UNetConfig on and off.
VARIANTS: dict[str, dict] = {
    "default": {},
    "norm-batch": dict(norm="batch"),
    "norm-layer": dict(norm="layer"),
    "time-learned": dict(time_embedding="learned"),
    "time-hybrid": dict(time_embedding="hybrid"),
    "time-sin-cos-ddpm": dict(flip_sin_to_cos=False, freq_shift=1.0),
    "cond-concat": dict(time_conditioning="concat"),
    "cond-film": dict(time_conditioning="film"),
    "cond-adain": dict(time_conditioning="adain"),
    "cond-attention": dict(time_conditioning="attention"),
    "post": dict(block_order="post"),
    "post-film-batch": dict(block_order="post", time_conditioning="film", norm="batch"),
    "post-concat": dict(block_order="post", time_conditioning="concat"),
    "post-adain-layer": dict(block_order="post", time_conditioning="adain", norm="layer"),
    "post-attention-cond": dict(block_order="post", time_conditioning="attention", num_heads=2),
    "kernel-1": dict(kernel_size=1),
    "kernel-5": dict(kernel_size=5),
    "separable": dict(separable=True),
    "separable-concat-k5": dict(separable=True, time_conditioning="concat", kernel_size=5),
    "dilation-2": dict(dilation=2),
    "aspp": dict(aspp_rates=(1, 2)),
    "squeeze-excitation": dict(squeeze_excitation=True),
    "downsample-avgpool": dict(downsample="avgpool"),
    "downsample-asymmetric": dict(downsample_padding="asymmetric"),
    "heads-2": dict(num_heads=2),
    "head-dim-4": dict(head_dim=4),
    "pos-sinusoidal-2d": dict(positional_encoding="sinusoidal_2d"),
    "pos-relative-bias": dict(positional_encoding="relative_bias", num_heads=2),
    "pos-sinusoidal-2d-context": dict(positional_encoding="sinusoidal_2d", context_dim=CONTEXT_DIM),
    "class-embedding": dict(num_classes=NUM_CLASSES),
    "class-embedding-no-null": dict(num_classes=NUM_CLASSES, null_class=False),
    "class-cross-attention": dict(num_classes=NUM_CLASSES, class_conditioning="cross_attention"),
    "class-cross-attention-no-null": dict(num_classes=NUM_CLASSES, class_conditioning="cross_attention",
                                          null_class=False),
    "context": dict(context_dim=CONTEXT_DIM),
    "context-mid-only": dict(context_dim=CONTEXT_DIM, attention_resolutions=()),
    "no-attention": dict(attention_resolutions=(), mid_attention=False),
    "mid-attention-off": dict(mid_attention=False),
    "mid-attention-no-norm": dict(mid_attention_norm=False),
    "attention-at-8": dict(attention_resolutions=(8,)),
    "attention-at-8-and-4": dict(attention_resolutions=(8, 4), num_res_blocks=2),
    "three-levels": dict(channel_mult=(1, 2, 2), attention_resolutions=(4, 2)),
    "dropout-on": dict(dropout=0.1),
    "zero-init": dict(zero_init=True),
}
#: variants whose gradient test fails because of a known bug



def small_config(**overrides) -> UNetConfig:
    return UNetConfig(**{**SMALL, **overrides})


def make_inputs(cfg: UNetConfig, seed: int = 0, batch: int = B, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(dtype)
    t = torch.tensor([3, 500, 77, 999][:batch])
    return x, t, make_cond(cfg, seed, batch, dtype)


def make_cond(cfg: UNetConfig, seed: int, batch: int = B, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + seed)
    if cfg.cond_kind == "class":
        return torch.randint(0, cfg.num_classes, (batch,), generator=g)
    if cfg.cond_kind == "context":
        return torch.randn(batch, CONTEXT_LEN, cfg.context_dim, generator=g).to(dtype)
    return None


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values (undoing zero init, which blocks gradients by design)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


# --- every switch ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_shape_finite_and_depends_on_t_and_cond(variant):
    cfg = small_config(**VARIANTS[variant])
    model = build_model(cfg).eval()
    if cfg.zero_init:
        randomise(model)  # zero-initialised branches make the output independent of t at init
    x, t, cond = make_inputs(cfg)
    with torch.no_grad():
        out = model(x, t, cond)
        assert out.shape == (B, cfg.out_channels, cfg.sample_size, cfg.sample_size)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        # depends on t
        out_t3 = model(x, torch.tensor([3, 3]), cond)
        out_t500 = model(x, torch.tensor([500, 500]), cond)
        assert (out_t3 - out_t500).abs().max() > 1e-4
        # depends on cond
        if cfg.cond_kind == "class":
            other = (cond + 1) % cfg.num_classes
            assert (model(x, t, other) - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4
            if cfg.null_class:
                null = torch.full((B,), cfg.num_classes)
                assert (model(x, t, null) - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        elif cfg.cond_kind == "context":
            other = make_cond(cfg, seed=7)
            assert (model(x, t, other) - out).abs().amax(dim=(1, 2, 3)).min() > 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_reach_every_parameter(variant):
    cfg = small_config(**{**VARIANTS[variant], "dropout": 0.0})
    model = randomise(build_model(cfg)).train()
    x, t, cond = make_inputs(cfg)
    if cond is not None and cond.is_floating_point():
        cond.requires_grad_(True)
    out = model(x, t, cond)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * weight).sum().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().gt(0).any()]
    assert not dead, f"parameters without gradient: {dead}"
    if cond is not None and cond.is_floating_point():
        assert cond.grad is not None and cond.grad.abs().gt(0).any()


def test_every_switch_is_exercised():
    """VARIANTS turn every Literal / bool switch of UNetConfig to each of its values."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(UNetConfig)
    seen: dict[str, set] = {}
    for overrides in VARIANTS.values():
        cfg = small_config(**overrides)
        for f in dataclasses.fields(cfg):
            seen.setdefault(f.name, set()).add(getattr(cfg, f.name))
    for name, tp in hints.items():
        if typing.get_origin(tp) is typing.Literal:
            assert seen[name] == set(typing.get_args(tp)), name
        elif tp is bool:
            assert seen[name] == {True, False}, name


def test_dropout_is_active_in_train_mode_only():
    cfg = small_config(dropout=0.5)
    model = build_model(cfg)
    x, t, _ = make_inputs(cfg)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x, t), model(x, t))
        model.eval()
        assert torch.equal(model(x, t), model(x, t))


def test_cond_is_required_exactly_when_the_model_is_conditional():
    x, t, _ = make_inputs(small_config())
    with torch.no_grad():
        with pytest.raises(ValueError, match="unconditional"):
            build_model(small_config())(x, t, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="class ids"):
            build_model(small_config(num_classes=NUM_CLASSES))(x, t)
        with pytest.raises(ValueError, match=f"context \\[B, L, {CONTEXT_DIM}\\]"):
            build_model(small_config(context_dim=CONTEXT_DIM))(x, t)


@pytest.mark.parametrize("null_class", [True, False])
def test_null_class_row(null_class):
    cfg = small_config(num_classes=NUM_CLASSES, null_class=null_class)
    model = build_model(cfg).eval()
    assert model.class_embedding.table.weight.shape[0] == NUM_CLASSES + int(null_class)
    x, t, _ = make_inputs(cfg)
    null = torch.full((B,), NUM_CLASSES)
    with torch.no_grad():
        if null_class:
            assert torch.isfinite(model(x, t, null)).all()
        else:
            with pytest.raises(IndexError):
                model(x, t, null)


@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("separable", [False, True])
def test_block_conv_geometry(kernel_size, dilation, separable):
    cfg = small_config(kernel_size=kernel_size, dilation=dilation, separable=separable)
    block = build_model(cfg).down[0].resnets[0]
    convs = [m for m in block.conv1.modules() if isinstance(m, nn.Conv2d)]
    if separable:
        depthwise, pointwise = convs
        assert depthwise.kernel_size == (kernel_size, kernel_size) and depthwise.groups == 8
        assert depthwise.dilation == (dilation, dilation)
        assert pointwise.kernel_size == (1, 1)
    else:
        (conv,) = convs
        assert conv.kernel_size == (kernel_size, kernel_size) and conv.dilation == (dilation, dilation)


@pytest.mark.parametrize("padding", ["symmetric", "asymmetric"])
def test_downsample_padding(padding):
    """symmetric: pad 1 all round; asymmetric: TF 'SAME' (pad right and bottom by 1, like diffusers' padding=0)."""
    cfg = small_config(downsample_padding=padding)
    down = build_model(cfg).down[0].resample
    conv = down.op
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (1, 1, 1, 1) if padding == "symmetric" else (0, 1, 0, 1))
    ref = F.conv2d(padded, conv.weight, conv.bias, stride=2)
    with torch.no_grad():
        torch.testing.assert_close(down(x), ref, rtol=0, atol=1e-6)


def test_downsample_avgpool_is_2x2_mean():
    down = build_model(small_config(downsample="avgpool")).down[0].resample
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = x.reshape(1, 8, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(down(x), ref, rtol=0, atol=1e-6)


def test_attention_placement():
    """Attention sits after every res block at attention_resolutions, and in the middle when asked."""
    model = build_model(small_config(attention_resolutions=(8, 4), num_res_blocks=2))
    assert [len(level.attentions) for level in model.down] == [2, 2]
    assert [len(level.attentions) for level in model.up] == [3, 3]
    model = build_model(small_config(attention_resolutions=(8,)))
    assert [len(level.attentions) for level in model.down] == [1, 0]
    assert [len(level.attentions) for level in model.up] == [0, 2]
    assert isinstance(model.mid_attention, AttentionBlock)
    model = build_model(small_config(attention_resolutions=(), mid_attention=False))
    assert model.mid_attention is None
    assert not any(isinstance(m, AttentionBlock) for m in model.modules())
    model = build_model(small_config(mid_attention_norm=False))
    assert isinstance(model.mid_attention.norm, nn.Identity)
    assert not isinstance(model.up[0].attentions[0].norm, nn.Identity)


@pytest.mark.parametrize("overrides,heads", [({}, 1), (dict(num_heads=2), 2), (dict(head_dim=4), None)])
def test_heads(overrides, heads):
    model = build_model(small_config(**overrides))
    for block in (model.down[1].attentions[0], model.mid_attention):
        channels = block.attn.to_q.in_features
        assert block.attn.heads == (heads if heads is not None else channels // 4)


# --- zero init -------------------------------------------------------------------------------

def _zero_init_models():
    for overrides in (dict(block_order="pre", context_dim=CONTEXT_DIM, aspp_rates=(1,)),
                      dict(block_order="post", num_classes=NUM_CLASSES, class_conditioning="cross_attention"),
                      dict(separable=True, time_conditioning="concat"),
                      dict(block_order="post", norm="batch", squeeze_excitation=True)):
        yield build_model(small_config(**overrides, zero_init=True))


def test_zero_init_zeroes_the_last_layer_of_every_branch():
    for model in _zero_init_models():
        blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
        assert blocks
        for block in blocks:
            last = block.conv2 if block.norm2 is None else block.norm2
            if isinstance(last, nn.Sequential):
                last = last[-1]
            assert all(torch.count_nonzero(p) == 0 for p in last.parameters())
            assert torch.count_nonzero(block.conv1.weight if isinstance(block.conv1, nn.Conv2d)
                                       else block.conv1[0].weight) > 0
        for block in (m for m in model.modules() if isinstance(m, AttentionBlock)):
            for attn in (block.attn, block.cross):
                if attn is not None:
                    assert torch.count_nonzero(attn.to_out.weight) == 0
                    assert torch.count_nonzero(attn.to_out.bias) == 0
                    assert torch.count_nonzero(attn.to_q.weight) > 0
        for aspp in (m for m in model.modules() if isinstance(m, ASPP)):
            assert all(torch.count_nonzero(p) == 0 for p in aspp.proj.parameters())


def test_zero_init_zeroes_every_attention_to_out():
    model = build_model(small_config(time_conditioning="attention", zero_init=True))
    conditionings = [m for m in model.modules() if isinstance(m, AttentionConditioning)]
    assert conditionings
    outs = {name: m.to_out for name, m in model.named_modules() if isinstance(m, Attention)}
    assert len(outs) > len(conditionings)
    nonzero = [name for name, to_out in outs.items()
               if torch.count_nonzero(to_out.weight) or torch.count_nonzero(to_out.bias)]
    assert not nonzero, f"to_out not zero-initialised: {nonzero}"


def test_zero_init_off_leaves_branches_random():
    model = build_model(small_config(zero_init=False, aspp_rates=(1,)))
    for block in (m for m in model.modules() if isinstance(m, ResBlock)):
        assert torch.count_nonzero(block.conv2.weight) > 0
    for block in (m for m in model.modules() if isinstance(m, AttentionBlock)):
        assert torch.count_nonzero(block.attn.to_out.weight) > 0
    assert torch.count_nonzero(model.aspp.proj.weight) > 0


def test_zero_init_res_block_and_attention_block_are_the_identity():
    cfg = small_config(zero_init=True, context_dim=CONTEXT_DIM)
    torch.manual_seed(0)
    block = ResBlock(cfg, 16, 16, 32).eval()
    attn = AttentionBlock(cfg, 16, 4, CONTEXT_DIM).eval()
    x = torch.randn(B, 16, 4, 4)
    emb = torch.randn(B, 32)
    context = torch.randn(B, CONTEXT_LEN, CONTEXT_DIM)
    with torch.no_grad():
        assert torch.equal(block(x, emb), x)
        assert torch.equal(attn(x, context), x)
        # post order adds after the skip and then applies SiLU: the zero branch leaves silu(x)
        post = ResBlock(small_config(zero_init=True, block_order="post"), 16, 16, 32).eval()
        assert torch.equal(post(x, emb), F.silu(x))
        # zero_init=False: not the identity
        assert not torch.equal(ResBlock(small_config(zero_init=False), 16, 16, 32)(x, emb), x)


# --- numerics --------------------------------------------------------------------------------

NUMERIC_VARIANTS = ["default", "norm-layer", "cond-film", "cond-attention", "pos-sinusoidal-2d",
                    "pos-relative-bias", "class-cross-attention", "context", "time-learned", "aspp"]


@pytest.mark.parametrize("variant", NUMERIC_VARIANTS + [
    "norm-batch"])
def test_float64_agrees_with_float32(variant):
    """Norms, softmax and the time embedding compute in float32 by design, so float64 agrees to ~1e-5."""
    cfg = small_config(**VARIANTS[variant])
    model32 = randomise(build_model(cfg), seed=3).eval()
    model64 = copy.deepcopy(model32).double()
    x, t, cond = make_inputs(cfg)
    cond64 = cond.double() if cond is not None and cond.is_floating_point() else cond
    with torch.no_grad():
        out32 = model32(x, t, cond)
        out64 = model64(x.double(), t, cond64)
    assert out64.dtype == torch.float64
    scale = out64.abs().max().item()
    assert (out32.double() - out64).abs().max().item() <= 1e-4 * max(scale, 1.0)


@pytest.mark.parametrize("variant", ["default", "norm-layer", "post", "cond-adain", "norm-batch"])
def test_bfloat16_model_runs_and_tracks_float32(variant):
    """Export in reduced precision: norms and softmax compute in float32, the rest in bf16."""
    cfg = small_config(**VARIANTS[variant])
    model32 = randomise(build_model(cfg), seed=3).eval()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    x, t, cond = make_inputs(cfg)
    with torch.no_grad():
        out32 = model32(x, t, cond)
        out16 = model16(x.to(torch.bfloat16), t, cond)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    assert (out16.float() - out32).abs().max() <= 0.05 * out32.abs().max()


@pytest.mark.parametrize("variant", ["default", "norm-layer", "norm-batch", "post", "class-embedding",
                                     "class-cross-attention", "context", "cond-attention", "aspp",
                                     "squeeze-excitation"])
def test_batch_independence_in_eval(variant):
    """Sample i of a batch equals that sample run alone (eval mode; batch norm uses running stats)."""
    cfg = small_config(**VARIANTS[variant])
    model = randomise(build_model(cfg), seed=1).eval()
    x, t, cond = make_inputs(cfg, batch=3)
    with torch.no_grad():
        out = model(x, t, cond)
        for i in range(3):
            single = model(x[i:i + 1], t[i:i + 1], None if cond is None else cond[i:i + 1])
            scale = out[i].abs().max().item()
            torch.testing.assert_close(single, out[i:i + 1], rtol=1e-5, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("variant", ["default", "norm-batch", "dropout-on", "cond-attention"])
def test_eval_is_deterministic(variant):
    cfg = small_config(**VARIANTS[variant])
    x, t, cond = make_inputs(cfg)
    with torch.no_grad():
        model = build_model(cfg, seed=4).eval()
        first = model(x, t, cond)
        assert torch.equal(model(x, t, cond), first)
        assert torch.equal(build_model(cfg, seed=4).eval()(x, t, cond), first)
        assert not torch.equal(randomise(build_model(cfg, seed=5)).eval()(x, t, cond), first)


def test_build_model_seed_is_local():
    """build_model(seed) gives the same weights every time and leaves the global RNG alone."""
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(small_config(), seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_model(small_config(), seed=7)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


# --- parameter counts ------------------------------------------------------------------------

def _conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def _linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def expected_parameter_count(cfg: UNetConfig) -> int:
    """Hand count of Ho et al.'s U-Net (group norm, additive time conditioning, pre-activation blocks).

    Written from the architecture (diffusers UNet2DModel's layout), not from the code under test.
    """
    emb = 4 * cfg.base_channels
    gn = lambda c: 2 * c  # noqa: E731 - weight and bias
    def res(cin, cout):
        return (gn(cin) + _conv(3, cin, cout) + _linear(emb, cout) + gn(cout) + _conv(3, cout, cout)
                + (_conv(1, cin, cout) if cin != cout else 0))
    attn = lambda c: gn(c) + 4 * _linear(c, c)  # noqa: E731 - norm, q, k, v, out
    chans = [cfg.base_channels * m for m in cfg.channel_mult]
    sizes = [cfg.sample_size // 2 ** i for i in range(len(chans))]
    n = _linear(cfg.base_channels, emb) + _linear(emb, emb) + _conv(3, cfg.in_channels, chans[0])
    skips, ch = [chans[0]], chans[0]
    for i, (c, s) in enumerate(zip(chans, sizes)):
        for _ in range(cfg.num_res_blocks):
            n += res(ch, c) + (attn(c) if s in cfg.attention_resolutions else 0)
            ch = c
            skips.append(ch)
        if i < len(chans) - 1:
            n += _conv(3, ch, ch)
            skips.append(ch)
    n += 2 * res(ch, ch) + (attn(ch) if cfg.mid_attention else 0)
    for i in reversed(range(len(chans))):
        c, s = chans[i], sizes[i]
        for _ in range(cfg.num_res_blocks + 1):
            n += res(ch + skips.pop(), c) + (attn(c) if s in cfg.attention_resolutions else 0)
            ch = c
        if i > 0:
            n += _conv(3, ch, ch)
    return n + gn(ch) + _conv(3, ch, cfg.out_channels)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tiny_parameter_count():
    from ddpm_export import load_model

    model = load_model("tiny")
    assert expected_parameter_count(model.config) == 177_427
    assert _count(model) == 177_427


@pytest.mark.parametrize("overrides", [{}, dict(num_res_blocks=2, attention_resolutions=(8, 4)),
                                       dict(channel_mult=(1, 2, 3), sample_size=16, mid_attention=False)])
def test_parameter_count_matches_hand_formula(overrides):
    cfg = small_config(**overrides)
    assert _count(build_model(cfg)) == expected_parameter_count(cfg)


def test_ddpm_cifar10_parameter_count_equals_diffusers():
    """35,746,307: diffusers' google/ddpm-cifar10-32 built from its config with random weights."""
    diffusers = pytest.importorskip("diffusers")
    from ddpm_export import load_model

    model = load_model("ddpm-cifar10")
    cfg, ours = model.config, _count(model)
    ref = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32)
    assert _count(ref) == 35_746_307
    assert expected_parameter_count(cfg) == 35_746_307
    assert ours == 35_746_307
    assert abs(ours - 35.7e6) / 35.7e6 < 0.005


# --- attention kernel ------------------------------------------------------------------------

def _qkv(n: int = 10, m: int = 7, d: int = 8, heads: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, heads, n, d, generator=g)
    k = torch.randn(B, heads, m, d, generator=g)
    v = torch.randn(B, heads, m, d, generator=g)
    bias = torch.randn(heads, n, m, generator=g)
    return q, k, v, bias


def _reference_attention(q, k, v, bias=None):
    """softmax(q k^T / sqrt(d) + bias) v in float64."""
    q, k, v = q.double(), k.double(), v.double()
    w = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        w = w + bias.double()
    return torch.softmax(w, dim=-1) @ v


@pytest.mark.parametrize("n,m", [(16, 16), (10, 7), (16, 1)])
def test_decomposed_attention_equals_sdpa(n, m):
    q, k, v, _ = _qkv(n, m)
    out = decomposed_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), _reference_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_decomposed_attention_adds_the_bias():
    q, k, v, bias = _qkv()
    out = decomposed_attention(q, k, v, bias)
    torch.testing.assert_close(out.double(), _reference_attention(q, k, v, bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), rtol=1e-5, atol=1e-5)
    assert (out - decomposed_attention(q, k, v)).abs().max() > 1e-3


def test_relative_position_bias_indexing():
    """bias[h, i, j] = table[h, (dy + S - 1) * (2S - 1) + (dx + S - 1)] with (dy, dx) = pos_i - pos_j."""
    cfg = small_config(positional_encoding="relative_bias", num_heads=2)
    block = build_model(cfg).mid_attention
    size = 4
    table = block.rel_bias.table.detach()
    bias = block.rel_bias().detach()
    assert bias.shape == (2, size * size, size * size)
    for i in range(size * size):
        for j in range(size * size):
            dy, dx = i // size - j // size, i % size - j % size
            idx = (dy + size - 1) * (2 * size - 1) + (dx + size - 1)
            assert torch.equal(bias[:, i, j], table[:, idx])


def test_attention_block_applies_the_relative_bias():
    """The block's output equals a manual computation: x + to_out(softmax(q k^T/sqrt(d) + bias) v)."""
    cfg = small_config(positional_encoding="relative_bias", num_heads=2, zero_init=False)
    block = randomise(build_model(cfg).mid_attention, seed=2).eval()
    x = torch.randn(B, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    attn = block.attn
    with torch.no_grad():
        tokens = block.norm(x).reshape(B, 16, 16).transpose(1, 2)
        split = lambda a: a.reshape(B, 16, 2, 8).transpose(1, 2)  # noqa: E731
        q, k, v = split(attn.to_q(tokens)), split(attn.to_k(tokens)), split(attn.to_v(tokens))
        o = _reference_attention(q, k, v, block.rel_bias()).float().transpose(1, 2).reshape(B, 16, 16)
        ref = x + attn.to_out(o).transpose(1, 2).reshape(B, 16, 4, 4)
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


def test_use_attention_kernel_swaps_and_restores():
    cfg = small_config(positional_encoding="relative_bias", num_heads=2, context_dim=CONTEXT_DIM,
                       time_conditioning="attention")
    model = randomise(build_model(cfg)).eval()
    x, t, cond = make_inputs(cfg)
    calls = []

    def sdpa(q, k, v, bias):
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def zeros(q, k, v, bias):
        calls.append("zeros")
        return torch.zeros_like(q)

    n_attention = sum(isinstance(m, Attention) for m in model.modules())
    with torch.no_grad():
        ref = model(x, t, cond)
        assert all(m.kernel is decomposed_attention for m in model.modules() if isinstance(m, Attention))
        with use_attention_kernel(model, sdpa):
            out = model(x, t, cond)
        assert len(calls) == n_attention
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        with use_attention_kernel(model, zeros):
            assert not torch.allclose(model(x, t, cond), ref, atol=1e-3)
            with use_attention_kernel(model, sdpa):  # nested: the innermost wins
                calls.clear()
                model(x, t, cond)
                assert "zeros" not in calls and len(calls) == n_attention
        with pytest.raises(RuntimeError, match="boom"):
            with use_attention_kernel(model, zeros):
                raise RuntimeError("boom")
        assert all(m.kernel is decomposed_attention for m in model.modules() if isinstance(m, Attention))
        other = randomise(build_model(cfg)).eval()  # per module: another model keeps its kernel
        with use_attention_kernel(other, zeros):
            assert torch.equal(model(x, t, cond), ref)
        calls.clear()
        assert torch.equal(model(x, t, cond), ref)
        assert not calls
