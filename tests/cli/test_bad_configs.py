"""Bad-input corpus, configs: every malformed ``config.json`` / ``diffusion.json`` is refused with
one line naming the file and field (exit 2), nothing written; config parsing fuzzed with
hypothesis (any JSON value either parses into a valid config or raises ConfigError)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.presets import MODELS_DIR

from bad_inputs import expect_failure

TINY = json.loads((MODELS_DIR / "tiny" / "config.json").read_text())

CASES = {
    "not-json": ("{sample_size: 16", "config.json: not valid JSON"),
    "empty-file": ("", "config.json: not valid JSON"),
    "a-list": ("[1, 2]", "expected a JSON object, got list"),
    "unknown-field": (json.dumps({**TINY, "widht": 3}), "unknown field.*widht"),
    "wrong-type": (json.dumps({**TINY, "sample_size": "16"}), "sample_size='16' has the wrong type"),
    "bad-choice": (json.dumps({**TINY, "norm": "instance"}), "norm='instance' is not valid; choose one of"),
    "negative": (json.dumps({**TINY, "base_channels": -16}), "base_channels"),
    "future-version": (json.dumps({**TINY, "version": 99}), "version=99 is not supported"),
    "float-for-int": (json.dumps({**TINY, "num_res_blocks": 1.5}), "num_res_blocks=1.5 has the wrong type"),
    # version malformed: not "upgrade ddpm-export" (no upgrade reads it)
    "version-string": (json.dumps({**TINY, "version": "1"}), r"version='1' is not a UNetConfig version: it must be an "
                                                              r"integer 1..1"),
    # JSON's Infinity literal: NaN outputs (max_period) or constant norms (norm_eps), sampled without a word
    "infinite-float": (json.dumps({**TINY, "max_period": float("inf")}), "max_period=inf must be finite"),
    "nested-too-deep": ("[" * 100_000, "config.json: not valid JSON"),  # a RecursionError traceback
    # JSON keeps the last of two keys silently: an edited value above the old one was ignored
    "duplicate-key": (json.dumps(TINY)[:-1] + ', "sample_size": 32}', "not valid JSON \\(key 'sample_size' is "
                                                                      "given twice\\)"),
    # a 1x1 last level (16 px, 5 levels): AdaIN's instance norm zeroes every feature; batch 1 crashed in export
    "adain-at-1x1": (json.dumps({**TINY, "time_conditioning": "adain", "channel_mult": [1, 2, 2, 2, 2]}),
                     r"time_conditioning: 'adain' normalizes each channel over the feature map, and the last level "
                     r"is 1x1"),
    "one-value-groups-at-1x1": (json.dumps({**TINY, "num_groups": 16, "channel_mult": [1, 1, 1, 1, 1]}),
                                r"num_groups: the last level is 1x1, so each of its group norm groups holds 1 value"),
    # sizes torch cannot take: a TypeError traceback (exit 1) from torch; 10**7 blocks hung; 15000 levels
    # a ValueError traceback printing 2**14999
    "huge-channels": (json.dumps({**TINY, "base_channels": 10 ** 100}), r"base_channels: must be <= 65536, got 1000"),
    "huge-kernel": (json.dumps({**TINY, "kernel_size": 2 ** 70 + 1}), r"kernel_size: must be <= 65536"),
    "huge-class-count": (json.dumps({**TINY, "num_classes": 10 ** 30}), r"num_classes: must be <= 65536"),
    "huge-channel-mult": (json.dumps({**TINY, "channel_mult": [1, 2 ** 40]}),
                          r"channel_mult: every level's channels \(base_channels \* channel_mult\) must be <= 65536"),
    "many-res-blocks": (json.dumps({**TINY, "num_res_blocks": 10 ** 7}), r"num_res_blocks: must be <= 100, got 10000000"),
    "many-levels": (json.dumps({**TINY, "channel_mult": [1] * 15000}), r"channel_mult: 15000 levels halve the image"),
    "huge-learned-table": (json.dumps({**TINY, "time_embedding": "learned", "num_train_timesteps": 10 ** 30}),
                           r"num_train_timesteps: must be <= 100000"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_config_json(tmp_path, name):
    pytest.importorskip("torch")
    text, message = CASES[name]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    expect_failure(["onnx", "--model", folder, "-o", tmp_path / "out.onnx", "--no-validate"], 2, message,
                   watch=[tmp_path])


@pytest.mark.parametrize("text, message", [
    (json.dumps({"num_train_timesteps": 500}),
     r"num_train_timesteps=500 \(from .*diffusion.json\) differs from the model's 1000"),
    ("{not json", "diffusion.json: not valid JSON"),
    (json.dumps({"beta_schedule": "cosine-ish"}), "beta_schedule='cosine-ish' is not valid"),
    # a file's field is named as the file names it, not as the CLI flag (--eta) the user never typed
    (json.dumps({"eta": 3.0}), r"diffusion.json: eta: must be in \[0, 1\], got 3.0"),
    # 2**63 - 1 wrapped in int64 and was exported
    (json.dumps({"steps_offset": 2 ** 63 - 1}), r"steps_offset: must be < num_train_timesteps=1000"),
    (json.dumps({"beta_start": 1e-50}), r"beta_start / beta_end: .* once rounded to float32"),
], ids=["other-T", "not-json", "bad-choice", "file-field-not-flag", "huge-steps-offset", "beta-rounds-to-0"])
def test_bad_diffusion_json(tmp_path, text, message):
    pytest.importorskip("torch")
    folder = tmp_path / "model"
    shutil.copytree(MODELS_DIR / "tiny", folder)
    (folder / "diffusion.json").write_text(text)
    expect_failure(["onnx", "--model", folder, "-o", tmp_path / "out.onnx", "--no-validate"], 2, message,
                   watch=[tmp_path])


def test_folder_without_config(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "model").mkdir()
    expect_failure(["onnx", "--model", tmp_path / "model", "-o", tmp_path / "out.onnx"], 2, "has no config.json",
                   watch=[tmp_path])


def test_unknown_model_name(tmp_path):
    pytest.importorskip("torch")
    expect_failure(["onnx", "--model", "no-such-preset", "-o", tmp_path / "out.onnx"], 2,
                   "unknown model 'no-such-preset'", "presets: ddpm-cifar10, digits, kitchen-sink, tiny",
                   watch=[tmp_path])


# --- fuzzing ---------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls, base", [(UNetConfig, TINY), (DiffusionConfig, {}), (ExportSpec, {})],
                         ids=["UNetConfig", "DiffusionConfig", "ExportSpec"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_config_parsing_fuzzed(cls, base, data):
    """Any JSON object either parses into a config that round-trips, or raises ConfigError
    (exit 2, one line) -- never another exception."""
    keys = st.sampled_from(_fields(cls)) | st.text(max_size=6)
    changes = data.draw(st.dictionaries(keys, JSON_VALUES, max_size=4))
    doc = {**base, **changes}
    try:
        cfg = cls.from_dict(doc, source="fuzz")
    except ConfigError as e:
        assert str(e).startswith("fuzz") and "\n" not in str(e)
        return
    assert cls.from_json(cfg.to_json()) == cfg


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_config_text_fuzzed(text):
    try:
        UNetConfig.from_json(text, source="fuzz.json")
    except ConfigError as e:
        assert str(e).startswith("fuzz.json")
