"""The theoretical receptive field: hand-computed small networks, a brute-force check (the support
of the gradient of one output pixel with all-positive weights) and the presets' U-Nets."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from ddpm_export.analysis.blocks import block_table
from ddpm_export.analysis.receptive_field import receptive_field
from ddpm_export.config import UNetConfig
from ddpm_export.presets import preset_dir


def conv(k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(1, 1, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False)


class SkipSum(nn.Module):
    """out = conv3(x) + conv3(conv3(x)): the longer path decides (RF 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = conv(3), conv(3), conv(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.c(self.b(x))


# (net, exact RF, formula RF, jump), each computed by hand; the formula is
# RF = 1 + sum_j (k_j - 1) d_j prod_{m<j} s_m with an upsampling by 2 counting as stride 1/2
HAND = {
    # conv3: 1 + 2*1 = 3; conv3/s2: + 2*1 = 5 (jump -> 2); conv3: + 2*2 = 9
    "conv3-conv3s2-conv3": (lambda: nn.Sequential(conv(3), conv(3, 2), conv(3)), 9, 9, 2),
    # conv3/s2: 1 + 2 = 3 (jump 2); conv3/s2: + 2*2 = 7 (jump 4); conv3: + 2*4 = 15
    "conv3s2-conv3s2-conv3": (lambda: nn.Sequential(conv(3, 2), conv(3, 2), conv(3)), 15, 15, 4),
    # 5x5 with dilation 2 spans 1 + (5-1)*2 = 9 pixels
    "conv5d2": (lambda: nn.Sequential(conv(5, dilation=2)), 9, 9, 1),
    # avgpool 2/2: 1 + 1*1 = 2 (jump 2); conv3: + 2*2 = 6
    "avgpool2-conv3": (lambda: nn.Sequential(nn.AvgPool2d(2), conv(3)), 6, 6, 2),
    # conv3/s2: 3 (jump 2); nearest 2x: jump 2/2 = 1, RF stays 3; conv3: + 2*1 = 5. Exact: output
    # positions 2m-1..2m+1 read source positions m-1, m (or m, m+1): 2 positions = 3 + 2 = 5 pixels
    "conv3s2-up2-conv3": (lambda: nn.Sequential(conv(3, 2), nn.Upsample(scale_factor=2), conv(3)), 5, 5, 1),
    # two downs then two ups. Formula: 3 -> 7 (jump 4) -> up: jump 2, conv3 + 2*2 = 11 -> up: jump 1,
    # conv3 + 2*1 = 13. Exact: an even position 2p of the last conv reads p-1..p of the middle one
    # (jump 2); with p = 2m those read m-1..m and m..m+1 of the jump-4 level: 3 positions, 7 + 2*4 = 15
    "down2-up2": (lambda: nn.Sequential(conv(3, 2), conv(3, 2), nn.Upsample(scale_factor=2), conv(3),
                                        nn.Upsample(scale_factor=2), conv(3)), 15, 13, 1),
    "skip-sum": (SkipSum, 5, 5, 1),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_receptive_field_of_hand_computed_networks(name):
    make, rf, formula, jump = HAND[name]
    got = receptive_field(make(), torch.zeros(1, 1, 64, 64))
    assert (got.size, got.formula, got.jump) == (Fraction(rf), Fraction(formula), Fraction(jump))


def support_width(net: nn.Module, size: int, pos: tuple[int, int]) -> int:
    """Width (rows) of the input region the output pixel ``pos`` depends on, found by autograd."""
    x = torch.rand(1, 1, size, size, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x)[0, 0, pos[0], pos[1]], x)
    rows = torch.nonzero(grad[0, 0].abs().sum(dim=1) > 0).flatten()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("name", sorted(HAND))
def test_receptive_field_is_the_largest_gradient_support(name):
    """With positive weights nothing cancels, so the support of d out / d x is the true RF of one
    output pixel; after upsampling it depends on the pixel's position, and the RF is its maximum."""
    make, rf, _, _ = HAND[name]
    net = make()
    for p in net.parameters():
        nn.init.uniform_(p, 0.5, 1.0)
    out_size = net(torch.zeros(1, 1, 64, 64)).shape[-1]
    centre = out_size // 2
    widths = [support_width(net, 64, (centre + d, centre + d)) for d in range(8)]
    assert max(widths) == rf, widths


def test_unet_receptive_field_formula_by_hand():
    """ddpm-cifar10: 4 levels, 2 res blocks (2 convs 3x3 each) per level down, 3 up; stride-2 conv
    down, nearest 2x + conv up. Jump j at level i is 2^i; each 3x3 conv adds 2j.
    conv_in 3 | level 0: 4 convs +8 = 11, down +2 = 13 | level 1 (j=2): +16 = 29, down +4 = 33 |
    level 2 (j=4): +32 = 65, down +8 = 73 | level 3 (j=8): +64 = 137 | mid: 4 convs +64 = 201 |
    up 3 (j=8): 6 convs +96 = 297, upsample (j=4) conv +8 = 305 | up 2: 6 convs +48 = 353, conv +4 = 357 |
    up 1 (j=2): +24 = 381, conv +2 = 383 | up 0 (j=1): +12 = 395 | conv_out +2 = 397."""
    table = block_table(preset_config("ddpm-cifar10"))
    rf = {r.name: r.rf_formula for r in table.rows}
    assert table.rf_formula == 397
    assert (rf["conv_in"], rf["down.0.resample"], rf["down.1.resample"], rf["down.2.resample"]) == (3, 13, 33, 73)
    assert (rf["mid_resnets.1"], rf["up.0.resample"], rf["up.1.resample"], rf["up.2.resample"]) == (201, 305, 357, 383)
    assert rf["up.3.resnets.2"] == 395 and rf["time_embedding"] is None
    jumps = {r.name: r.rf_jump for r in table.rows}
    assert (jumps["down.2.resample"], jumps["up.0.resample"], jumps["conv_out"]) == (8, 4, 1)
    exact = {r.name: r.rf for r in table.rows}  # the way down is exact; alignment adds on the way up
    assert all(exact[n] == rf[n] for n in ("conv_in", "down.2.resample", "mid_resnets.1"))
    assert table.rf >= table.rf_formula


def preset_config(name: str) -> UNetConfig:
    return UNetConfig.load(preset_dir(name) / "config.json")


def longest_path_1d(cfg: UNetConfig) -> nn.Sequential:
    """The U-Net's longest convolutional path as a 1-D chain (one channel): conv_in, every block
    conv down and up, the resamplers, the widest ASPP conv, conv_out. Skips are shorter paths."""
    def c(k: int = 3, stride: int = 1, dilation: int = 1, pad: int | None = None) -> nn.Module:
        return nn.Conv1d(1, 1, k, stride=stride, dilation=dilation,
                         padding=dilation * (k - 1) // 2 if pad is None else pad, bias=False)
    block = lambda n: [c(cfg.kernel_size, dilation=cfg.dilation) for _ in range(2 * n)]  # noqa: E731
    layers: list[nn.Module] = [c()]
    levels = len(cfg.channel_mult)
    for i in range(levels):
        layers += block(cfg.num_res_blocks)
        if i < levels - 1:
            if cfg.downsample == "avgpool":
                layers.append(nn.AvgPool1d(2))
            elif cfg.downsample_padding == "asymmetric":
                layers += [nn.ConstantPad1d((0, 1), 0.0), c(stride=2, pad=0)]
            else:
                layers.append(c(stride=2))
    layers += block(2)
    if cfg.aspp_rates:
        layers.append(c(3, dilation=max(cfg.aspp_rates)))
    for i in reversed(range(levels)):
        layers += block(cfg.num_res_blocks + 1)
        if i > 0:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), c()]
    return nn.Sequential(*layers, c())


@pytest.mark.parametrize("name", ["tiny", "kitchen-sink", "digits", "ddpm-cifar10"])
def test_unet_receptive_field_equals_brute_force_on_its_longest_path(name):
    """The tracker on the real U-Net (2-D, every op) against autograd on its longest 1-D path with
    positive weights: the widest gradient support over 16 neighbouring output positions."""
    cfg = preset_config(name)
    chain = longest_path_1d(cfg)
    for p in chain.parameters():
        nn.init.uniform_(p, 0.5, 1.0)
    n = 2048
    widths = []
    for q in range(n // 2, n // 2 + 16):
        x = torch.rand(1, 1, n, requires_grad=True)
        (grad,) = torch.autograd.grad(chain(x)[0, 0, q], x)
        support = torch.nonzero(grad[0, 0]).flatten()
        widths.append(int(support.max() - support.min() + 1))
    assert block_table(cfg).rf == max(widths)
