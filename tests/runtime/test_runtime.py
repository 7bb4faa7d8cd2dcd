"""The torch-free runtime (``ddpm_export.runtime``) on real ONNX exports of ``tiny`` and
``kitchen-sink`` (class-conditional, 10 classes + null): torch-free import and sampling, equality
with a TorchBackend run of the same loop, determinism, chunking, 8-thread concurrency, and the
input checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the exports and the reference side need torch")
pytest.importorskip("onnx")

from ddpm_export import load_model  # noqa: E402
from ddpm_export.diffusion import make_scheduler, sample  # noqa: E402
from ddpm_export.runtime import (  # noqa: E402
    MetadataError, ModelInfo, OnnxRuntimeBackend, Pipeline, chunk_seed, read_info,
)
from ddpm_export.torch_backend import TorchBackend  # noqa: E402

from concurrency import assert_threads_match_sequential  # noqa: E402
from runtime_exports import MAX_BATCH, exported  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {preset: exported(preset, tmp_path_factory) for preset in ("tiny", "kitchen-sink")}


@pytest.fixture(scope="module")
def tiny(onnx_files: dict[str, Path]) -> Pipeline:
    return Pipeline.from_onnx(onnx_files["tiny"])


@pytest.fixture(scope="module")
def sink(onnx_files: dict[str, Path]) -> Pipeline:
    return Pipeline.from_onnx(onnx_files["kitchen-sink"])


# --- torch-free ---------------------------------------------------------------------------
TORCH_FREE = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ("torch", "onnx"):
                raise ImportError(f"{top} is blocked in this test (importing {name})")
            return None

    sys.meta_path.insert(0, Block())
    from ddpm_export.runtime import Pipeline, make_bundle

    pipe = Pipeline.from_onnx(sys.argv[1])
    x = pipe.sample(2, steps=3, progress=False)
    assert x.shape == (2, 3, 16, 16) and x.dtype.name == "float32", x.shape
    make_bundle([sys.argv[1]], sys.argv[2])
    y = Pipeline.from_bundle(sys.argv[2]).sample(2, steps=3, progress=False)
    assert (x == y).all()
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
    assert not leaked, leaked
    assert "torch" not in sys.modules
    print("torch-free ok")
""")


def test_runtime_samples_and_bundles_without_torch_or_onnx(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(onnx_files["tiny"]), str(tmp_path / "b")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch-free ok" in result.stdout


# --- metadata ----------------------------------------------------------------------------
def test_pipeline_reads_everything_from_the_metadata(tiny: Pipeline, sink: Pipeline) -> None:
    assert tiny.info.unet == load_model("tiny").config
    assert tiny.info.precision == "fp32" and tiny.info.spec.max_batch == MAX_BATCH
    assert tiny.info.diffusion.sampler == "ddim" and tiny.info.diffusion.num_inference_steps == 50
    assert tiny.image_shape == (3, 16, 16)
    assert tiny.info.num_classes is None and tiny.info.null_class_id is None
    assert sink.info.num_classes == 10 and sink.info.null_class_id == 10
    assert read_info(tiny.source) == tiny.info


def test_a_file_without_metadata_is_refused(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_files["tiny"]))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(MetadataError, match="not a ddpm-export ONNX file"):
        Pipeline.from_onnx(tmp_path / "bare.onnx")


# --- equality with PyTorch, determinism ---------------------------------------------------
@pytest.mark.parametrize("preset,sampler,steps", [("tiny", "ddim", 5), ("tiny", "ddpm", 10),
                                                  ("kitchen-sink", "ddim", 20)])
def test_samples_equal_a_torch_run_of_the_same_loop(onnx_files: dict[str, Path], preset: str, sampler: str,
                                                    steps: int) -> None:
    pipe = Pipeline.from_onnx(onnx_files[preset])
    n = 3
    kwargs: dict = {}
    loop: dict = {}
    if preset == "kitchen-sink":  # with guidance: the conditional and null halves in one batch
        kwargs = dict(classes=[1, 5, 9], guidance_scale=2.0)
        loop = dict(cond=np.array([1, 5, 9], dtype=np.int64), null_cond=np.full(n, 10, dtype=np.int64),
                    guidance_scale=2.0)
    got = pipe.sample(n, sampler=sampler, steps=steps, seed=7, progress=False, **kwargs)
    scheduler = make_scheduler(pipe.info.diffusion.replace(num_inference_steps=steps), sampler)
    want = sample(TorchBackend(load_model(preset)), scheduler, (n, 3, 16, 16), seed=7, **loop)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4


def test_one_chunk_is_exactly_one_loop_call(tiny: Pipeline) -> None:
    got = tiny.sample(4, steps=3, seed=11, progress=False)
    want = sample(tiny.backend, make_scheduler(tiny.info.diffusion.replace(num_inference_steps=3)),
                  (4, 3, 16, 16), seed=11)
    np.testing.assert_array_equal(got, want)


def test_same_seed_same_images_other_seed_other_images(tiny: Pipeline) -> None:
    a = tiny.sample(2, steps=4, seed=3, eta=1.0, progress=False)
    np.testing.assert_array_equal(a, tiny.sample(2, steps=4, seed=3, eta=1.0, progress=False))
    assert not np.array_equal(a, tiny.sample(2, steps=4, seed=4, eta=1.0, progress=False))
    assert a.min() >= -1 and a.max() <= 1


def test_x_T_is_used_as_given(tiny: Pipeline) -> None:
    x_T = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    got = tiny.sample(2, steps=2, x_T=x_T, progress=False)
    want = sample(tiny.backend, make_scheduler(tiny.info.diffusion.replace(num_inference_steps=2)),
                  (2, 3, 16, 16), seed=0, x_T=x_T)
    np.testing.assert_array_equal(got, want)


# --- chunking --------------------------------------------------------------------------------
def test_large_n_runs_in_chunks_drawn_as_one_call_per_chunk(tiny: Pipeline) -> None:
    n, steps = 2 * MAX_BATCH + 3, 2
    got = tiny.sample(n, steps=steps, seed=5, progress=False)
    scheduler = make_scheduler(tiny.info.diffusion.replace(num_inference_steps=steps))
    parts = [sample(tiny.backend, scheduler, (b, 3, 16, 16), seed=chunk_seed(5, k))
             for k, b in enumerate([MAX_BATCH, MAX_BATCH, 3])]
    np.testing.assert_array_equal(got, np.concatenate(parts))
    assert chunk_seed(5, 0) == 5 and chunk_seed(5, 1) not in (5, 6) and chunk_seed(5, 1) != chunk_seed(6, 1)


def test_guidance_halves_the_chunk(sink: Pipeline) -> None:
    assert sink.chunk_size(guided=True) == MAX_BATCH // 2 and sink.chunk_size(guided=False) == MAX_BATCH
    n = MAX_BATCH // 2 + 1
    got = sink.sample(n, steps=2, seed=1, guidance_scale=3.0, progress=False)
    scheduler = make_scheduler(sink.info.diffusion.replace(num_inference_steps=2))
    classes = np.arange(n, dtype=np.int64) % 10  # the default: every class in turn
    parts = []
    for k, chunk in enumerate([slice(0, MAX_BATCH // 2), slice(MAX_BATCH // 2, n)]):
        b = chunk.stop - chunk.start
        parts.append(sample(sink.backend, scheduler, (b, 3, 16, 16), seed=chunk_seed(1, k), cond=classes[chunk],
                            null_cond=np.full(b, 10, dtype=np.int64), guidance_scale=3.0))
    np.testing.assert_array_equal(got, np.concatenate(parts))


def test_a_last_chunk_below_min_batch_is_refused(tiny: Pipeline) -> None:
    spec = tiny.info.spec.replace(min_batch=2, opt_batch=4)
    pipe = Pipeline(tiny.backend, dataclasses.replace(tiny.info, spec=spec))
    with pytest.raises(ValueError, match=r"n=9: .*below the exported min_batch 2"):
        pipe.sample(MAX_BATCH + 1, steps=1, progress=False)
    with pytest.raises(ValueError, match="n=1"):
        pipe.sample(1, steps=1, progress=False)
    # min = max = 2: only whole chunks run ("n % 2 is 0 or at least 2" read as if 3 would do)
    two = Pipeline(tiny.backend, dataclasses.replace(tiny.info, spec=tiny.info.spec.replace(min_batch=2, opt_batch=2,
                                                                                           max_batch=2)))
    with pytest.raises(ValueError, match=r"n=3: .*below the exported min_batch 2 \(chunks of 2 images\); "
                                         r"choose n a multiple of 2$"):
        two.sample(3, steps=1, progress=False)


def test_a_batch_range_no_guided_call_fits_is_named_as_such(sink: Pipeline) -> None:
    """min = max = 7: a guided call holds an even number of rows, so every n failed, each time
    advising an n that failed the same way."""
    spec = sink.info.spec.replace(min_batch=7, opt_batch=7, max_batch=7)
    pipe = Pipeline(sink.backend, dataclasses.replace(sink.info, spec=spec))
    for n in (3, 6, 7):
        with pytest.raises(ValueError, match=r"at most 6 within the exported max_batch 7, which is below its "
                                             r"min_batch 7: this file cannot sample with guidance; .*--max-batch 8"):
            pipe.sample(n, steps=1, guidance_scale=1.5, progress=False)


# --- threads ----------------------------------------------------------------------------------
def test_eight_threads_share_one_pipeline_bit_identically(sink: Pipeline) -> None:
    jobs = [dict(seed=s, classes=s % 10, guidance_scale=1.0 + 0.5 * (s % 3), eta=0.5 * (s % 2))
            for s in range(8)]
    assert_threads_match_sequential(sink, jobs, steps=3)


# --- input checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(classes=10), r"classes: id 10 is outside \[0, 10\) \(the null id 10"),
    (dict(classes=-1), r"classes: id -1"),
    (dict(classes=[1, 2, 3]), r"classes must hold n=2 ids"),
    (dict(classes=[1.0, 2.0]), r"classes must be an int or a 1-D sequence of ints"),
    (dict(x_T=np.zeros((2, 3, 8, 8), np.float32)), r"x_T must be float32 of shape \(2, 3, 16, 16\)"),
    (dict(x_T=np.zeros((2, 3, 16, 16), np.float64)), r"x_T must be float32"),
    (dict(sampler="euler"), r"sampler='euler' is not valid; choose one of: 'ddim', 'ddpm'"),
    (dict(steps=0), r"steps must be an int in \[1, 1000\]"),
    (dict(steps=1001), r"steps must be an int in \[1, 1000\]"),
    (dict(sampler="ddpm", eta=0.5), r"eta applies to the DDIM sampler only"),
    (dict(eta=1.5), r"eta must be a float in \[0, 1\]"),
    (dict(seed=-1), r"seed must be a non-negative int"),
    (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite float"),
    (dict(guidance_scale=-1e39), r"guidance_scale=-1e\+39 is out of range: \|scale\| <= 1000 \(classifier-free"),
    (dict(guidance_scale=1e38), r"guidance_scale=1e\+38 is out of range"),  # was NaN: 'check the weights'
    (dict(guidance_scale=10**400), r"guidance_scale=1000000.* is out of range"),  # was an OverflowError
])
def test_bad_arguments_are_refused_by_name(sink: Pipeline, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sink.sample(2, progress=False, **kwargs)


def test_wrong_types_of_progress_and_path_are_refused_by_name(sink: Pipeline) -> None:
    """progress="no" was truthy (a bar was shown); from_onnx(None) was os.fspath's TypeError."""
    with pytest.raises(TypeError, match="progress must be True or False, got 'no'"):
        sink.sample(2, progress="no")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike naming an ONNX file, got NoneType"):
        Pipeline.from_onnx(None)  # type: ignore[arg-type]


def test_arguments_an_unconditional_model_cannot_take(tiny: Pipeline) -> None:
    with pytest.raises(ValueError, match="classes: this model is unconditional"):
        tiny.sample(2, classes=1, progress=False)
    with pytest.raises(ValueError, match=r"guidance_scale=3.0 needs a class-conditional model"):
        tiny.sample(2, guidance_scale=3.0, progress=False)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        tiny.sample(0, progress=False)


def test_checks_run_before_the_backend(tiny: Pipeline) -> None:
    calls = []

    def backend(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        calls.append(t)
        return tiny.backend(x, t, cond)

    pipe = Pipeline(backend, tiny.info)
    with pytest.raises(ValueError, match="x_T"):
        pipe.sample(2, x_T=np.zeros((3, 3, 16, 16), np.float32), progress=False)
    assert not calls


def test_the_progress_bar_is_closed_whatever_stops_sampling(tiny: Pipeline, monkeypatch) -> None:
    """The bar was made before the try that closed it: an error in between (here a Ctrl-C while
    the precision was described) left it open on the terminal; a callback's error closed it."""
    import ddpm_export.runtime.pipeline as pipeline_module
    from tqdm.auto import tqdm

    bars: list = []

    class Recorded(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    def interrupted(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "tqdm", Recorded)
    with pytest.raises(KeyboardInterrupt):
        tiny.sample(2, steps=2, progress=True, callback=stop)
    monkeypatch.setattr(pipeline_module, "describe_precision", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.sample(2, steps=2, progress=True)
    assert len(bars) == 2
    assert not [bar for bar in bars if bar in Recorded._instances]  # close() takes a bar out


def test_backend_feeds_are_checked_against_the_export_spec(sink: Pipeline) -> None:
    backend: OnnxRuntimeBackend = sink.backend  # type: ignore[assignment]
    x = np.zeros((2, 3, 16, 16), np.float32)
    t = np.array([0, 999], np.int64)
    assert backend(x, t, np.array([3, 10], np.int64)).shape == (2, 3, 16, 16)  # the null id is a valid row
    with pytest.raises(ValueError, match=r"class_labels: ids must be in \[0, 11\)"):
        backend(x, t, np.array([3, 11], np.int64))
    with pytest.raises(ValueError, match=r"x_t: dtype float64"):
        backend(x.astype(np.float64), t, np.array([3, 4], np.int64))
    with pytest.raises(ValueError, match=r"batch 9 is outside the exported range \[1, 8\]"):
        backend(np.zeros((9, 3, 16, 16), np.float32), np.zeros(9, np.int64), np.zeros(9, np.int64))
    with pytest.raises(ValueError, match=r"t: values must be in \[0, 1000\)"):
        backend(x, np.array([0, 1000], np.int64), np.array([3, 4], np.int64))
    with pytest.raises(ValueError, match="cond: this model is conditioned on class"):
        backend(x, t, None)


def test_model_info_round_trips_the_metadata(tiny: Pipeline) -> None:
    again = ModelInfo.from_metadata(tiny.info.metadata, source="again")
    assert again == tiny.info
    broken = dict(tiny.info.metadata, **{"ddpm_export.unet_config": '{"base_channels": -1}'})
    with pytest.raises(MetadataError, match="base_channels"):
        ModelInfo.from_metadata(broken, source="broken")


def test_a_context_of_nan_or_a_list_is_refused_before_any_model_call(tmp_path: Path) -> None:
    """A NaN context reached the model and failed as a non-finite output ("check the weights",
    exit 1); a list raised BadInputError where x_T's list raises WrongTypeError (a TypeError)."""
    from ddpm_export.errors import WrongTypeError
    from ddpm_export.export.onnx import export_onnx

    from export_helpers import save_test_checkpoint

    path = export_onnx(save_test_checkpoint("context", tmp_path), tmp_path / "ctx.onnx", max_batch=2,
                       validate=False, log=lambda s: None).path
    pipe = Pipeline.from_onnx(path, threads=1)
    spec = pipe.info.spec
    context = np.zeros((1, spec.opt_context, spec.context_dim), np.float32)
    assert pipe.sample(1, steps=1, context=context, progress=False).shape[0] == 1
    for bad in (np.nan, np.inf):
        poisoned = context.copy()
        poisoned[0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"context holds 1 NaN or infinite values"):
            pipe.sample(1, steps=1, context=poisoned, progress=False)
    with pytest.raises(WrongTypeError, match=r"context must be a float32 array \[n, L, 12\], got list"):
        pipe.sample(1, steps=1, context=context.tolist(), progress=False)
