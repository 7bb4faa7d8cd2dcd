"""The sampler model's request parsing (``ddpm_export.serve.requests``), without a server or torch:
a good request becomes the SampleRequest ``Pipeline.sample`` would build from the same arguments,
and every bad one is refused with a message that starts with the request input's name."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_export.config import UNetConfig
from ddpm_export.diffusion import DiffusionConfig
from ddpm_export.presets import MODELS_DIR
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.runtime import ModelInfo, SampleRequest
from ddpm_export.serve import RequestError, parse_request

DIGITS = MODELS_DIR / "digits"


@pytest.fixture(scope="module")
def info() -> ModelInfo:
    """The digits model's metadata: 1x16x16, 10 classes + null class, max_batch 8."""
    unet = UNetConfig.load(DIGITS / "config.json")
    return ModelInfo(unet=unet, diffusion=DiffusionConfig.load(DIGITS / "diffusion.json"),
                     spec=ExportSpec.from_config(unet, max_batch=8), precision="fp32", attention="decomposed",
                     source_sha256="0" * 64, metadata={})


def request(**overrides: object) -> dict[str, np.ndarray]:
    base = {"seed": np.array([7], np.int64), "num_images": np.array([5], np.int64),
            "steps": np.array([4], np.int64)}
    base.update({k: v for k, v in overrides.items() if v is not None})  # type: ignore[misc]
    return {k: v for k, v in base.items() if not (isinstance(v, str) and v == "drop")}  # type: ignore[comparison-overlap]


def test_a_full_request_equals_the_pipeline_arguments(info: ModelInfo) -> None:
    got = parse_request(info, request(sampler=np.array([b"ddim"], np.object_), eta=np.array([0.5], np.float32),
                                      guidance_scale=np.array([1.5], np.float32),
                                      class_labels=np.array([3, 1, 4, 1, 5], np.int64)), max_images=64)
    want = SampleRequest(info, 5, steps=4, sampler="ddim", seed=7, eta=0.5, guidance_scale=1.5,
                         classes=[3, 1, 4, 1, 5], context=None, x_T=None)
    assert (got.n, got.seed, got.config, got.guidance_scale, got.chunks) == (
        want.n, want.seed, want.config, want.guidance_scale, want.chunks)
    assert got.chunks == [slice(0, 4), slice(4, 5)]  # guided: max_batch // 2 images per U-Net call
    np.testing.assert_array_equal(got.cond, want.cond)


def test_absent_optional_inputs_take_the_model_defaults(info: ModelInfo) -> None:
    got = parse_request(info, request(), max_images=64)
    assert got.config == info.diffusion.replace(num_inference_steps=4)
    assert got.guidance_scale == 1.0
    np.testing.assert_array_equal(got.cond, np.arange(5) % 10)


@pytest.mark.parametrize(("inputs", "starts"), [
    (dict(seed=np.array([-1], np.int64)), "seed must be a non-negative int"),
    (dict(num_images=np.array([0], np.int64)), "num_images must be an int >= 1"),
    (dict(num_images=np.array([65], np.int64)), "num_images: at most 64 per request"),
    (dict(steps=np.array([0], np.int64)), "steps must be an int in [1, 1000]"),
    (dict(steps=np.array([4, 5], np.int64)), "steps: must be int64 [1], got int64 [2]"),
    (dict(sampler=np.array([b"euler"], np.object_)), "sampler='euler' is not valid"),
    (dict(sampler=np.array([b"\xff"], np.object_)), "sampler: not UTF-8"),
    (dict(sampler=np.array([b"x" * 200_000], np.object_)), "sampler: 200000 bytes is no sampler name (at most 64)"),
    (dict(sampler=np.array([b"ddpm"], np.object_), eta=np.array([0.5], np.float32)), "eta applies to the DDIM"),
    (dict(sampler=np.array([b"ddim"], np.object_), eta=np.array([2.0], np.float32)), "eta must be a float in [0, 1]"),
    (dict(guidance_scale=np.array([np.inf], np.float32)), "guidance_scale must be a finite float"),
    (dict(class_labels=np.array([1, 2], np.int64)), "class_labels must hold num_images=5 ids"),
    (dict(class_labels=np.array([0, 1, 2, 3, 10], np.int64)), "class_labels: id 10 is outside [0, 10)"),
    (dict(class_labels=np.array([0, 1, 2, 3, 4], np.int32)), "class_labels: must be int64"),
    (dict(context=np.zeros((5, 2, 3), np.float32)), "context: not an input of this model"),
    (dict(steps="drop"), "steps: missing"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_requests_name_the_input(info: ModelInfo, inputs: dict, starts: str) -> None:
    with pytest.raises(RequestError) as e:
        parse_request(info, request(**inputs), max_images=64)
    assert str(e.value).startswith(starts), str(e.value)


def test_a_chunk_below_min_batch_names_num_images(info: ModelInfo) -> None:
    spec = info.spec.replace(min_batch=2)
    with pytest.raises(RequestError, match=r"^num_images=9: the last chunk would run a batch of 1.*choose "
                                           r"num_images so that num_images % 8 is 0 or at least 2$"):
        parse_request(ModelInfo(info.unet, info.diffusion, spec, "fp32", "decomposed", "0" * 64, {}),
                      request(num_images=np.array([9], np.int64)), max_images=64)


def test_num_images_times_steps_is_capped_naming_both_and_the_limit(info: ModelInfo) -> None:
    """1024 images x 1000 steps held a sampler instance for hours (an HTTP client cannot cancel
    it): num_images x steps above max_image_steps is refused; at it, it passes."""
    ddim = np.array([b"ddim"], np.object_)  # the default (UniPC) takes fewer than T steps
    big = request(num_images=np.array([1024], np.int64), steps=np.array([1000], np.int64), sampler=ddim)
    with pytest.raises(RequestError, match=r"^num_images x steps: 1024 x 1000 = 1024000 image-steps, more than the "
                                           r"server's max_image_steps_per_request 16384; ask for fewer"):
        parse_request(info, big, max_images=1024, max_image_steps=16384)
    at = request(num_images=np.array([16], np.int64), steps=np.array([1000], np.int64), sampler=ddim)
    assert parse_request(info, at, max_images=1024, max_image_steps=16000).n == 16
    with pytest.raises(RequestError, match=r"^num_images x steps: 16 x 1000 = 16000 image-steps, .* 15999;"):
        parse_request(info, at, max_images=1024, max_image_steps=15999)
    # a bad steps is named as such, not as too much work
    with pytest.raises(RequestError, match=r"^steps must be an int in \[1, 1000\]"):
        parse_request(info, request(steps=np.array([10**9], np.int64)), max_images=64, max_image_steps=100)


def test_without_max_image_steps_there_is_no_cap(info: ModelInfo) -> None:
    """A repository written before the cap has no max_image_steps_per_request: served as before."""
    big = request(num_images=np.array([1024], np.int64), steps=np.array([1000], np.int64),
                  sampler=np.array([b"ddim"], np.object_))
    assert parse_request(info, big, max_images=1024).n * 1000 == 1024000


def test_only_the_argument_n_is_renamed_not_values_or_flags() -> None:
    from ddpm_export.serve.requests import _name_input

    assert _name_input("n=3: too many") == "num_images=3: too many"
    assert _name_input("classes must hold n=2 ids, got 3") == "class_labels must hold num_images=2 ids, got 3"
    for message in ("sampler='x n y' is not valid", "-n 5 is too many", "a plan n. done", "sampler 'n=2' unknown"):
        assert _name_input(message) == message
