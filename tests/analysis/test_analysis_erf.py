"""The effective receptive field: exact on a single 3x3 conv, the 95% radius on known maps, and
sane on a U-Net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_export import load_model
from ddpm_export.analysis.blocks import block_table
from ddpm_export.analysis.erf import ErfResult, default_timesteps, erf_radius, gradient_map, measure_erf
from ddpm_export.errors import BadInputError, NonFiniteOutputError


@pytest.mark.parametrize("init", ["ones", "random"])
def test_erf_of_a_single_3x3_conv_is_its_3x3_support(init):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    if init == "ones":
        nn.init.ones_(conv.weight)
    grad_map = gradient_map(conv, torch.randn(3, 2, 16, 16))
    support = np.zeros((16, 16), dtype=bool)
    support[7:10, 7:10] = True  # the centre output pixel (8, 8) reads rows and columns 7..9
    assert np.array_equal(grad_map > 0, support)
    if init == "ones":  # d/dx of a sum of 4 channels of ones-weights: 4 everywhere in the support, per channel 2
        np.testing.assert_array_equal(grad_map[support], 4 * 2)
    result = ErfResult(grad_map, (8, 8), erf_radius(grad_map, (8, 8)), theoretical_rf=3)
    assert (result.radius, result.diameter, result.ratio) == (1, 3, 1.0)


def test_erf_radius_on_known_maps():
    delta = np.zeros((9, 9))
    delta[4, 4] = 1
    assert erf_radius(delta, (4, 4)) == 0
    flat = np.ones((9, 9))  # windows of half-width r hold (2r+1)^2 / 81: 95% needs the whole map
    assert erf_radius(flat, (4, 4)) == 4
    ring = np.zeros((9, 9))
    ring[4, 4], ring[4, 6] = 1, 19  # 19/20 = 95% sits 2 columns away
    assert erf_radius(ring, (4, 4)) == 2
    with pytest.raises(BadInputError, match="zero everywhere"):
        erf_radius(np.zeros((3, 3)), (1, 1))
    nan = np.ones((3, 3))
    nan[0, 0] = np.nan  # a model whose output is NaN: a non-finite output (exit 1), not "does not depend"
    with pytest.raises(NonFiniteOutputError, match="NaN or infinity"):
        erf_radius(nan, (1, 1))


def test_visible_rf_is_bounded_by_the_image():
    result = ErfResult(np.ones((16, 16)), (8, 8), radius=5, theoretical_rf=61)
    assert result.visible_rf == 17 and result.ratio == pytest.approx(11 / 61)
    assert result.ratio_visible == pytest.approx(11 / 17)


def test_default_timesteps_span_the_schedule():
    assert default_timesteps(1000) == [0, 333, 666, 999]


def test_unet_erf_is_measured_and_bounded():
    torch.manual_seed(0)
    model = load_model("tiny")
    rf = block_table(model.config).rf
    result = measure_erf(model, rf, timesteps=[10, 900], samples=2)
    assert result.map.shape == (16, 16) and np.all(result.map >= 0) and result.map[8, 8] > 0
    assert 1 <= result.radius <= 8 and 0 < result.ratio_visible <= 1
    # deterministic for a seed
    again = measure_erf(model, rf, timesteps=[10, 900], samples=2)
    np.testing.assert_array_equal(result.map, again.map)


def test_erf_on_a_larger_input_and_its_limits():
    torch.manual_seed(0)
    model = load_model("tiny")
    result = measure_erf(model, 61, timesteps=[500], samples=1, size=32)
    assert result.map.shape == (32, 32) and result.centre == (16, 16) and result.visible_rf == 33
    assert 0 <= result.half_mass_radius <= result.radius
    with pytest.raises(BadInputError, match="divisible"):
        measure_erf(model, 61, size=31)
    with pytest.raises(BadInputError, match="relative_bias"):
        measure_erf(load_model("kitchen-sink"), 320, size=32)


@pytest.mark.parametrize("change", [{"time_conditioning": "adain"}, {"num_groups": 16}])
def test_an_erf_size_whose_last_level_is_1x1_is_refused_where_its_norms_would_see_one_value(change):
    """tiny has two levels: at --erf-size 2 the last is 1x1, and an instance norm (AdaIN) or a group
    of one channel normalizes a single value (torch raised ValueError, a traceback, exit 1): refused
    like the config refuses that sample size. A norm over more values still runs there."""
    import dataclasses

    from ddpm_export.nn.weights import build_model

    cfg = dataclasses.replace(load_model("tiny").config, **change)
    with pytest.raises(BadInputError, match=r"--erf-size 2: the model cannot run at this size \("):
        measure_erf(build_model(cfg).eval(), 61, timesteps=[500], samples=1, size=2)
    assert measure_erf(load_model("tiny"), 61, timesteps=[500], samples=1, size=2).map.shape == (2, 2)
