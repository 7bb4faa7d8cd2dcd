"""ExportSpec (``ddpm_export.contract.spec``): the one description of a model's graph interface.

Torch-free: names, dynamic axes, shapes, TensorRT profiles, validation batches, sample inputs,
the runtime input checks (each refusal names the input), the JSON round trip and refused ranges.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError
from ddpm_export.contract.spec import ExportSpec, batch_range

SMALL = dict(base_channels=16, channel_mult=(1, 2), sample_size=8, num_groups=8, num_res_blocks=1,
             attention_resolutions=(4,))
UNCOND = UNetConfig(**SMALL)
CLASS = UNetConfig(**SMALL, num_classes=5)                       # 6 rows: 5 classes + the null class
CLASS_NO_NULL = UNetConfig(**SMALL, num_classes=5, null_class=False)
CONTEXT = UNetConfig(**SMALL, context_dim=12, in_channels=1, out_channels=2)


@pytest.fixture(params=["uncond", "class", "context"])
def spec(request) -> ExportSpec:
    cfg = {"uncond": UNCOND, "class": CLASS, "context": CONTEXT}[request.param]
    return ExportSpec.from_config(cfg, min_batch=1, opt_batch=4, max_batch=16)


# --- names, axes, shapes --------------------------------------------------------------------
def test_unconditional_interface():
    s = ExportSpec.from_config(UNCOND)
    assert s.input_names == ["x_t", "t"] and s.output_names == ["model_output"]
    assert s.dynamic_axes == {"x_t": {0: "batch"}, "t": {0: "batch"}, "model_output": {0: "batch"}}
    assert s.input_shapes(3) == {"x_t": (3, 3, 8, 8), "t": (3,)}
    assert s.output_shape(3) == (3, 3, 8, 8)
    assert (s.cond_kind, s.num_class_rows, s.context_dim, s.num_train_timesteps) == ("none", 0, 0, 1000)


def test_class_interface_counts_the_null_row():
    s = ExportSpec.from_config(CLASS)
    assert s.input_names == ["x_t", "t", "class_labels"]
    assert s.dynamic_axes["class_labels"] == {0: "batch"}
    assert s.input_shapes(2)["class_labels"] == (2,)
    assert (s.cond_kind, s.num_class_rows) == ("class", 6)
    assert ExportSpec.from_config(CLASS_NO_NULL).num_class_rows == 5


def test_context_interface_has_a_dynamic_length():
    s = ExportSpec.from_config(CONTEXT)
    assert s.input_names == ["x_t", "t", "context"]
    assert s.dynamic_axes["context"] == {0: "batch", 1: "context_length"}
    assert s.input_shapes(2) == {"x_t": (2, 1, 8, 8), "t": (2,), "context": (2, s.opt_context, 12)}
    assert s.input_shapes(2, context_length=5)["context"] == (2, 5, 12)
    assert s.output_shape(2) == (2, 2, 8, 8)


def test_profiles_are_min_opt_max_per_input(spec):
    prof = spec.profiles()
    assert list(prof) == spec.input_names
    for name, (lo, mid, hi) in prof.items():
        assert (lo[0], mid[0], hi[0]) == (1, 4, 16), name
    assert prof["x_t"][2] == (16, spec.in_channels, 8, 8)
    if spec.cond_kind == "context":
        lo, mid, hi = prof["context"]
        assert (lo, mid, hi) == ((1, spec.min_context, 12), (4, spec.opt_context, 12), (16, spec.max_context, 12))


@pytest.mark.parametrize("lo, opt, hi", [(1, 4, 16), (1, 2, 4), (1, 3, 5), (2, 3, 5), (1, 4, 7), (3, 3, 9),
                                         (1, 1, 16), (1, 16, 16), (4, 4, 4), (1, 1, 2), (1, 2, 3)])
def test_validation_batches_cover_min_opt_max_and_an_interior(lo, opt, hi):
    s = ExportSpec.from_config(UNCOND, min_batch=lo, opt_batch=opt, max_batch=hi)
    batches = s.validation_batches()
    assert batches == sorted(set(batches))
    assert {lo, opt, hi} <= set(batches) and all(lo <= b <= hi for b in batches)
    if hi - lo >= 2:  # there is an interior batch: one of them must be strictly inside
        assert any(lo < b < hi for b in batches), batches


# --- sample inputs ----------------------------------------------------------------------------
def test_sample_inputs_dtypes_shapes_and_ranges(spec):
    feeds = spec.sample_inputs(64, seed=3)
    assert list(feeds) == spec.input_names
    assert feeds["x_t"].dtype == np.float32 and feeds["t"].dtype == np.int64
    assert {k: v.shape for k, v in feeds.items()} == spec.input_shapes(64)
    assert feeds["t"].min() >= 0 and feeds["t"].max() < spec.num_train_timesteps
    assert len(np.unique(feeds["t"])) > 32  # spread over [0, T), not one value
    assert abs(float(feeds["x_t"].mean())) < 0.1 and abs(float(feeds["x_t"].std()) - 1) < 0.1
    if spec.cond_kind == "class":
        ids = feeds["class_labels"]
        assert ids.dtype == np.int64 and set(ids.tolist()) == set(range(spec.num_class_rows))  # incl. the null row
    if spec.cond_kind == "context":
        assert feeds["context"].dtype == np.float32
    spec.check_inputs(spec.sample_inputs(spec.max_batch))


def test_sample_inputs_are_deterministic_per_seed(spec):
    a, b, c = spec.sample_inputs(4, seed=7), spec.sample_inputs(4, seed=7), spec.sample_inputs(4, seed=8)
    for name in spec.input_names:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["x_t"], c["x_t"])


def test_sample_inputs_at_every_validation_batch_and_context_length_pass_the_checks(spec):
    for batch in spec.validation_batches():
        spec.check_inputs(spec.sample_inputs(batch, seed=batch))
    if spec.cond_kind == "context":
        for length in (spec.min_context, spec.max_context):
            feeds = spec.sample_inputs(2, context_length=length)
            assert feeds["context"].shape == (2, length, 12)
            spec.check_inputs(feeds)


# --- runtime input checks -------------------------------------------------------------------
def _refused(spec: ExportSpec, feeds: dict, *needles: str) -> str:
    with pytest.raises(ValueError) as info:
        spec.check_inputs(feeds)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_check_inputs_refuses_a_missing_input(spec):
    feeds = spec.sample_inputs(2)
    del feeds["t"]
    _refused(spec, feeds, "missing", "'t'")
    if spec.cond_kind != "none":
        feeds = spec.sample_inputs(2)
        cond = spec.input_names[2]
        del feeds[cond]
        _refused(spec, feeds, "missing", repr(cond))


def test_check_inputs_refuses_an_extra_input(spec):
    feeds = spec.sample_inputs(2)
    feeds["guidance"] = np.zeros(2, np.float32)
    _refused(spec, feeds, "unexpected", "'guidance'")
    if spec.cond_kind == "none":  # a conditioning input given to an unconditional model
        feeds = spec.sample_inputs(2)
        feeds["class_labels"] = np.zeros(2, np.int64)
        _refused(spec, feeds, "unexpected", "'class_labels'")


def test_check_inputs_refuses_wrong_dtypes(spec):
    cases = {"x_t": np.float64, "t": np.int32}
    if spec.cond_kind == "class":
        cases["class_labels"] = np.float32
    if spec.cond_kind == "context":
        cases["context"] = np.float16
    for name, dtype in cases.items():
        feeds = spec.sample_inputs(2)
        feeds[name] = feeds[name].astype(dtype)
        _refused(spec, feeds, f"{name}: dtype", np.dtype(dtype).name)


def test_check_inputs_refuses_wrong_shapes(spec):
    feeds = spec.sample_inputs(2)
    feeds["x_t"] = np.zeros((2, spec.in_channels, 4, 4), np.float32)
    _refused(spec, feeds, "x_t: shape", "(2, %d, 4, 4)" % spec.in_channels)
    feeds = spec.sample_inputs(2)
    feeds["x_t"] = np.zeros((2, spec.in_channels + 1, 8, 8), np.float32)
    _refused(spec, feeds, "x_t: shape")
    feeds = spec.sample_inputs(2)
    feeds["t"] = np.zeros(3, np.int64)  # batch disagrees with x_t
    _refused(spec, feeds, "t: shape", "(3,)")
    feeds = spec.sample_inputs(2)
    feeds["t"] = np.zeros((2, 1), np.int64)
    _refused(spec, feeds, "t: shape")
    if spec.cond_kind == "class":
        feeds = spec.sample_inputs(2)
        feeds["class_labels"] = np.zeros((2, 1), np.int64)
        _refused(spec, feeds, "class_labels: shape")
    if spec.cond_kind == "context":
        feeds = spec.sample_inputs(2)
        feeds["context"] = np.zeros((2, 4, 11), np.float32)
        _refused(spec, feeds, "context: shape")


def test_check_inputs_reports_a_wrong_rank_x_t_as_a_shape_error():
    s = ExportSpec.from_config(UNCOND)
    feeds = s.sample_inputs(2)
    feeds["x_t"] = feeds["x_t"][0]  # [C, H, W]: the batch axis forgotten
    _refused(s, feeds, "x_t: shape", "(3, 8, 8)")


def test_check_inputs_refuses_batches_outside_the_range():
    s = ExportSpec.from_config(UNCOND, min_batch=2, opt_batch=4, max_batch=8)
    for batch in (1, 9):
        _refused(s, s.sample_inputs(batch), "x_t", f"batch {batch}", "[2, 8]")
    for batch in (2, 8):
        s.check_inputs(s.sample_inputs(batch))


def test_check_inputs_refuses_timesteps_outside_0_T(spec):
    for bad in (-1, spec.num_train_timesteps):
        feeds = spec.sample_inputs(2)
        feeds["t"][1] = bad
        _refused(spec, feeds, "t: values", f"[0, {spec.num_train_timesteps})")
    feeds = spec.sample_inputs(2)
    feeds["t"][:] = [0, spec.num_train_timesteps - 1]
    spec.check_inputs(feeds)


def test_check_inputs_refuses_class_ids_outside_the_table():
    s = ExportSpec.from_config(CLASS)
    for bad in (-1, 6):
        feeds = s.sample_inputs(2)
        feeds["class_labels"][0] = bad
        _refused(s, feeds, "class_labels", "[0, 6)")
    feeds = s.sample_inputs(2)
    feeds["class_labels"][:] = [0, 5]  # 5 is the null class
    s.check_inputs(feeds)
    s_no_null = ExportSpec.from_config(CLASS_NO_NULL)
    feeds = s_no_null.sample_inputs(2)
    feeds["class_labels"][:] = 5
    _refused(s_no_null, feeds, "class_labels", "[0, 5)")


def test_check_inputs_refuses_context_lengths_outside_the_range():
    s = ExportSpec.from_config(CONTEXT)
    feeds = s.sample_inputs(2, context_length=s.max_context + 1)
    _refused(s, feeds, "context", f"length {s.max_context + 1}")


# --- JSON and refused ranges --------------------------------------------------------------------
def test_json_round_trip(spec):
    assert ExportSpec.from_json(spec.to_json()) == spec
    assert ExportSpec.from_dict(spec.to_dict()) == spec
    assert ExportSpec.from_json(spec.to_json()).profiles() == spec.profiles()


@pytest.mark.parametrize("lo, opt, hi", [(0, 1, 4), (4, 2, 8), (1, 9, 8), (5, 5, 4), (-1, 1, 1)])
def test_invalid_batch_ranges_are_refused(lo, opt, hi):
    with pytest.raises(ConfigError, match="min_batch/opt_batch/max_batch"):
        ExportSpec.from_config(UNCOND, min_batch=lo, opt_batch=opt, max_batch=hi)


def test_inconsistent_specs_are_refused():
    with pytest.raises(ConfigError, match="min_context"):
        ExportSpec(min_context=10, opt_context=8)
    with pytest.raises(ConfigError, match="num_class_rows"):
        ExportSpec(cond_kind="class", num_class_rows=0)
    with pytest.raises(ConfigError, match="context_dim"):
        ExportSpec(cond_kind="context", context_dim=0)
    with pytest.raises(ConfigError, match="cond_kind"):
        ExportSpec(cond_kind="text")
    with pytest.raises(ConfigError, match="unknown field"):
        ExportSpec.from_dict({**ExportSpec().to_dict(), "max_tokens": 3})


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_batch=True), "max_batch=True has the wrong type; expected int"),  # was named opt_batch=True
    (dict(max_batch=2.0), "max_batch=2.0 has the wrong type; expected int"),
    (dict(min_batch=True), "min_batch=True has the wrong type; expected int"),  # was named opt_batch=True
    (dict(max_batch="8"), "max_batch='8' has the wrong type; expected int"),  # was a TypeError traceback
    (dict(opt_batch=True), "opt_batch=True has the wrong type; expected int"),
])
def test_batch_range_names_the_argument_of_the_wrong_type(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        batch_range(**kwargs)


def test_spec_imports_no_torch():
    code = "import sys, ddpm_export.contract.spec, ddpm_export.contract.metadata; assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_batch_range_brings_the_default_opt_batch_into_the_range_and_refuses_a_bad_one():
    """export_onnx and `trt --model` (which checks it before looking for TensorRT) take it from here."""
    assert batch_range() == (1, 4, 16)
    assert batch_range(8, None, 16) == (8, 8, 16) and batch_range(1, None, 2) == (1, 2, 2)
    assert batch_range(2, 3, 5) == (2, 3, 5)
    with pytest.raises(ConfigError, match="min_batch/opt_batch/max_batch: need 1 <= min <= opt <= max, got 8/2/2"):
        batch_range(8, None, 2)
    with pytest.raises(ConfigError, match="max_batch: 5000 is more than 4096"):
        batch_range(1, None, 5000)
