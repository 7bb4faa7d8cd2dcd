"""UNetConfig (``ddpm_export.config``, ``ddpm_export.configbase``): JSON round trips and validation.

Torch-free, like the modules under test.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from ddpm_export.config import ConfigError, UNetConfig
from ddpm_export.presets import MODELS_DIR, preset_dir, preset_names

PRESETS = ["ddpm-cifar10", "digits", "kitchen-sink", "tiny"]
#: a small valid config the invalid cases start from (channels 16 and 32, feature sizes 16 and 8)
SMALL = dict(base_channels=16, channel_mult=(1, 2), sample_size=16, num_groups=8, attention_resolutions=(8,))


def _configs():
    yield pytest.param(UNetConfig(), id="defaults")
    for name in PRESETS:
        yield pytest.param(UNetConfig.load(MODELS_DIR / name / "config.json"), id=name)
    yield pytest.param(UNetConfig(**SMALL, num_classes=10, class_conditioning="cross_attention",
                                  null_class=False, aspp_rates=(1, 2, 3), head_dim=8), id="class-cross")
    yield pytest.param(UNetConfig(**SMALL, context_dim=7, freq_shift=1.0, norm_eps=1e-6), id="context")


def test_presets_on_disk():
    assert preset_names() == PRESETS
    for name in PRESETS:
        assert (preset_dir(name) / "config.json").is_file()


@pytest.mark.parametrize("cfg", _configs())
def test_json_round_trip(cfg):
    text = cfg.to_json()
    back = UNetConfig.from_json(text)
    assert back == cfg
    assert back.to_json() == text
    assert isinstance(back.channel_mult, tuple)
    assert isinstance(back.attention_resolutions, tuple)
    assert isinstance(back.aspp_rates, tuple)
    assert json.loads(text)["channel_mult"] == list(cfg.channel_mult)  # written as JSON lists
    compact = UNetConfig.from_json(cfg.to_json(indent=None))
    assert compact == cfg


@pytest.mark.parametrize("cfg", _configs())
def test_dict_round_trip(cfg):
    d = cfg.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(UNetConfig)}
    assert all(not isinstance(v, tuple) for v in d.values())
    back = UNetConfig.from_dict(d)
    assert back == cfg
    for f in dataclasses.fields(UNetConfig):
        assert type(getattr(back, f.name)) is type(getattr(cfg, f.name)), f.name


def test_preset_file_values():
    cfg = UNetConfig.load(MODELS_DIR / "ddpm-cifar10" / "config.json")
    assert cfg.channel_mult == (1, 2, 2, 2) and cfg.level_channels == (128, 256, 256, 256)
    assert cfg.resolutions == (32, 16, 8, 4)
    assert (cfg.flip_sin_to_cos, cfg.freq_shift) == (False, 1.0)  # DDPM: [sin, cos]
    assert cfg.downsample_padding == "asymmetric" and cfg.norm_eps == 1e-6 and cfg.dropout == 0.1
    tiny = UNetConfig.load(MODELS_DIR / "tiny" / "config.json")
    assert tiny.cond_kind == "none" and tiny.level_channels == (16, 32)
    sink = UNetConfig.load(MODELS_DIR / "kitchen-sink" / "config.json")
    assert sink.cond_kind == "class" and sink.num_class_rows == 11
    assert sink.heads_for(32) == 4


def test_missing_version_means_1_and_defaults_fill_in():
    cfg = UNetConfig.from_json('{"base_channels": 64}')
    assert cfg.version == 1 and cfg.base_channels == 64 and cfg == UNetConfig(base_channels=64)


def test_config_is_frozen_and_replace_validates():
    cfg = UNetConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.norm = "batch"  # type: ignore[misc]
    assert cfg.replace(norm="batch").norm == "batch"
    with pytest.raises(ConfigError, match="kernel_size"):
        cfg.replace(kernel_size=2)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# (overrides of SMALL, substrings the message must contain)
INVALID = {
    "bad-norm": (dict(norm="instance"), ["norm='instance'", "'group', 'batch', 'layer'"]),
    "bad-time-conditioning": (dict(time_conditioning="scale_shift"),
                              ["time_conditioning='scale_shift'", "'add', 'concat', 'film', 'adain', 'attention'"]),
    "bad-time-embedding": (dict(time_embedding="fourier"), ["time_embedding", "'sinusoidal', 'learned', 'hybrid'"]),
    "bad-block-order": (dict(block_order="middle"), ["block_order", "'pre', 'post'"]),
    "bad-downsample": (dict(downsample="maxpool"), ["downsample", "'conv', 'avgpool'"]),
    "bad-positional-encoding": (dict(positional_encoding="rope"),
                                ["positional_encoding", "'none', 'sinusoidal_2d', 'relative_bias'"]),
    "bad-class-conditioning": (dict(num_classes=3, class_conditioning="concat"),
                               ["class_conditioning", "'embedding', 'cross_attention'"]),
    "even-kernel": (dict(kernel_size=4), ["kernel_size", "odd", "4"]),
    "groups-not-dividing": (dict(num_groups=3), ["num_groups", "3 must divide", "[16, 32]"]),
    "attention-resolution-not-a-size": (dict(attention_resolutions=(4,)),
                                        ["attention_resolutions", "4 is not a feature-map size", "[16, 8]"]),
    "sample-size-not-divisible": (dict(sample_size=30, channel_mult=(1, 2, 2, 2)),
                                  ["sample_size", "30", "divisible", "8"]),
    "head-dim-not-dividing": (dict(head_dim=5), ["head_dim", "5 must divide"]),
    "head-dim-zero": (dict(head_dim=0), ["head_dim", "must be >= 1, got 0"]),  # '0 must divide the channels'
    "head-dim-negative-without-attention": (dict(head_dim=-2, attention_resolutions=(), mid_attention=False),
                                            ["head_dim", "must be >= 1, got -2"]),  # was accepted, unused
    "num-heads-not-dividing": (dict(num_heads=3), ["num_heads", "3 must divide"]),
    "classes-and-context": (dict(num_classes=10, context_dim=8), ["context_dim", "not both"]),
    "cross-attention-without-attention": (dict(num_classes=10, class_conditioning="cross_attention",
                                               attention_resolutions=(), mid_attention=False),
                                          ["class_conditioning", "needs attention"]),
    "context-without-attention": (dict(context_dim=8, attention_resolutions=(), mid_attention=False),
                                  ["context_dim", "needs attention"]),
    "negative-dropout": (dict(dropout=-0.1), ["dropout", "[0, 1)", "-0.1"]),
    "dropout-one": (dict(dropout=1.0), ["dropout", "[0, 1)"]),
    "zero-classes": (dict(num_classes=0), ["num_classes", ">= 1"]),
    "zero-channels": (dict(base_channels=0), ["base_channels", ">= 1"]),
    "zero-res-blocks": (dict(num_res_blocks=0), ["num_res_blocks", ">= 1"]),
    "empty-channel-mult": (dict(channel_mult=()), ["channel_mult", "at least one level"]),
    "zero-dilation": (dict(dilation=0), ["dilation", ">= 1"]),
    "zero-aspp-rate": (dict(aspp_rates=(1, 0)), ["aspp_rates"]),
    "zero-norm-eps": (dict(norm_eps=0.0), ["norm_eps", "> 0"]),
    "sinusoidal-2d-channels": (dict(base_channels=6, channel_mult=(1,), norm="layer", attention_resolutions=(),
                                    positional_encoding="sinusoidal_2d"),
                               ["positional_encoding", "divisible by 4", "the middle block has 6"]),
    "sinusoidal-2d-attended-level": (dict(base_channels=6, num_groups=3, attention_resolutions=(16,),
                                          mid_attention=False, positional_encoding="sinusoidal_2d"),
                                     ["positional_encoding", "divisible by 4", "level 0 (16x16) has 6"]),
    "str-for-int": (dict(base_channels="16"), ["base_channels='16'", "wrong type", "int"]),
    "float-for-int": (dict(sample_size=16.0), ["sample_size=16.0", "wrong type", "int"]),
    "bool-for-int": (dict(num_res_blocks=True), ["num_res_blocks=True", "wrong type"]),
    "bool-for-float": (dict(dropout=True), ["dropout=True", "wrong type", "float"]),
    "str-for-bool": (dict(mid_attention="yes"), ["mid_attention='yes'", "wrong type", "bool"]),
    "int-for-bool": (dict(zero_init=1), ["zero_init=1", "wrong type", "bool"]),
    "list-for-tuple": (dict(channel_mult=[1, 2]), ["channel_mult=[1, 2]", "wrong type"]),
    "str-in-tuple": (dict(attention_resolutions=("8",)), ["attention_resolutions", "wrong type"]),
    "str-for-optional-int": (dict(num_classes="10"), ["num_classes='10'", "wrong type"]),
    "version-2": (dict(version=2), ["version", "2"]),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_config_is_refused_with_a_message(name):
    overrides, parts = INVALID[name]
    with pytest.raises(ConfigError) as info:
        UNetConfig(**{**SMALL, **overrides})
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_sinusoidal_2d_checks_only_the_attended_levels():
    """Channels 6 and 12 with attention at 8x8 and in the middle (12 channels each): the 6-channel
    level holds no position code, and the config used to be refused for its 6 channels."""
    cfg = UNetConfig(**{**SMALL, "base_channels": 6, "num_groups": 3}, positional_encoding="sinusoidal_2d")
    assert cfg.level_channels == (6, 12)


def test_negative_kernel_size_is_refused():
    with pytest.raises(ConfigError, match="kernel_size"):
        UNetConfig(**SMALL, kernel_size=-1)


def test_freq_shift_that_breaks_the_sinusoid_is_refused():
    with pytest.raises(ConfigError, match="freq_shift"):
        UNetConfig(base_channels=2, channel_mult=(1,), sample_size=8, num_groups=1,
                   attention_resolutions=(), freq_shift=1.0)


def test_unknown_key_in_json_is_refused_with_its_name():
    with pytest.raises(ConfigError) as info:
        UNetConfig.from_json('{"base_channels": 16, "bogus": 1, "attn_res": [8]}', source="my.json")
    message = str(info.value)
    assert "my.json" in message and "unknown field(s) 'attn_res', 'bogus'" in message
    assert "known fields:" in message and "base_channels" in message


@pytest.mark.parametrize("version", [2, 0, "1", True])
def test_unsupported_version_in_json_is_refused(version):
    text = json.dumps({**{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}, "version": version})
    with pytest.raises(ConfigError, match="version"):
        UNetConfig.from_json(text)


def test_future_version_asks_to_upgrade():
    with pytest.raises(ConfigError, match="upgrade ddpm-export"):
        UNetConfig.from_json('{"version": 2}', source="model/config.json")


@pytest.mark.parametrize("text", ['{"base_channels": 16,}', "", "{'norm': 'group'}", '{"norm": "group"'])
def test_malformed_json_is_refused(text):
    with pytest.raises(ConfigError, match="not valid JSON"):
        UNetConfig.from_json(text, source="broken.json")


@pytest.mark.parametrize("text", ["[1, 2]", '"group"', "null", "3"])
def test_json_that_is_not_an_object_is_refused(text):
    with pytest.raises(ConfigError, match="expected a JSON object"):
        UNetConfig.from_json(text)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"norm": "instance"}')
    with pytest.raises(ConfigError, match="norm='instance'"):
        UNetConfig.load(path)
    path.write_text('{"nrom": "group"}')
    with pytest.raises(ConfigError, match=str(path).replace("\\", "\\\\")):
        UNetConfig.load(path)


def test_wrong_type_from_json():
    with pytest.raises(ConfigError, match="base_channels='128' has the wrong type; expected int"):
        UNetConfig.from_json('{"base_channels": "128"}')
    with pytest.raises(ConfigError, match="dropout=true|dropout=True"):
        UNetConfig.from_json('{"dropout": true}')
    with pytest.raises(ConfigError, match="dropout"):
        UNetConfig.from_json('{"dropout": NaN}')


def test_derived_quantities():
    cfg = UNetConfig(**SMALL, num_classes=10, head_dim=8)
    assert cfg.level_channels == (16, 32)
    assert cfg.resolutions == (16, 8)
    assert cfg.time_embed_dim == 16
    assert cfg.cond_kind == "class" and cfg.num_class_rows == 11
    assert cfg.replace(null_class=False).num_class_rows == 10
    assert cfg.heads_for(32) == 4 and UNetConfig(**SMALL, num_heads=2).heads_for(32) == 2
    assert UNetConfig(**SMALL, context_dim=4).cond_kind == "context"
    assert UNetConfig(**SMALL).cond_kind == "none"


def test_num_groups_is_checked_only_where_group_norm_reads_it():
    """AdaIN's instance norm has groups == channels, and batch / layer norm take no group count."""
    for norm in ("batch", "layer"):
        UNetConfig(**{**SMALL, "norm": norm, "time_conditioning": "adain", "num_groups": 5})
    with pytest.raises(ConfigError, match="num_groups: 5 must divide"):
        UNetConfig(**{**SMALL, "norm": "group", "time_conditioning": "adain", "num_groups": 5})


def test_errors_from_a_file_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"num_groups": 7}')
    with pytest.raises(ConfigError, match=f"^{path}: num_groups: 7 must divide"):
        UNetConfig.load(path)
