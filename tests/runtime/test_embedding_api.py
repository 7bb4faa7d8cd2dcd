"""What an app that embeds the sampler relies on beyond sampling: the engines' own failures as
documented errors (and a one-line CLI error, exit 2), the caller's ONNX Runtime options used as
given, options checked by value (providers, device, numpy integers), and OpenVINO's per-batch
compiled models bounded. Real exports of ``tiny``; the broken files are real ONNX edits of it."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="the exports need torch")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.errors import (BadInputError, EngineError, MissingDependencyError, WrongTypeError,  # noqa: E402
                                describe, exit_status)
from ddpm_export.runtime import Pipeline, SampleRequest  # noqa: E402

from runtime_exports import exported  # noqa: E402

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install 'ddpm-export[openvino]')")


@pytest.fixture(scope="module")
def batch1_only(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` with a last Reshape to batch 1: it loads and checks, then fails at any other batch."""
    model = onnx.load(str(tiny_onnx))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["pre_out" if name == out else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 3, 16, 16], np.int64), "batch1_shape"))
    model.graph.node.append(helper.make_node("Reshape", ["pre_out", "batch1_shape"], [out]))
    path = tmp_path_factory.mktemp("broken") / "batch1.onnx"
    onnx.save(model, str(path))
    return path


def test_an_engine_failure_in_a_call_is_an_engine_error(batch1_only: Path, tmp_path: Path) -> None:
    pipe = Pipeline.from_onnx(batch1_only)
    assert pipe.sample(1, steps=2, progress=False).shape == (1, 3, 16, 16)
    with pytest.raises(EngineError, match=r"batch1.onnx: ONNX Runtime failed on a model call at batch 2 \(.*"
                                          r"cannot be reshaped"):
        pipe.sample(2, steps=2, progress=False)
    result = CliRunner().invoke(main, ["sample", "--onnx", str(batch1_only), "-n", "2", "--steps", "2",
                                       "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "Error: " in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # was exit 1 with ONNX Runtime's traceback


def test_an_engine_failure_keeps_onnx_runtimes_reason(tiny_onnx: Path, tmp_path: Path) -> None:
    """A real run error whose reason follows the C++ source location: the reason is kept (it was
    cut at 300 characters after the node's name twice over and the function's signature)."""
    model = onnx.load(str(tiny_onnx))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["pre_out" if name == out else name for name in node.output]
    model.graph.initializer.extend([numpy_helper.from_array(np.array([1 << 30, 1, 1, 1, 1], np.int64), "huge"),
                                    numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    name = "/up_blocks.1/resnets.2/conv_shortcut/Expand"  # 3 TiB of float32: refused at once
    model.graph.node.extend([helper.make_node("Expand", ["pre_out", "huge"], ["many"], name=name),
                             helper.make_node("ReduceMax", ["many", "axis0"], [out], keepdims=0)])
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError) as raised:
        Pipeline.from_onnx(path).sample(1, steps=2, progress=False)
    assert str(raised.value).startswith(f"{path}: ONNX Runtime failed on a model call at batch 1 (Expand node "
                                        f"'{name}': Failed to allocate memory for requested buffer of size "), raised.value
    assert "onnxruntime::" not in str(raised.value) and "Status Message" not in str(raised.value)


@needs_openvino
def test_openvino_names_an_operator_it_cannot_convert(tiny_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    next(node for node in model.graph.node if node.op_type == "Conv").op_type = "BogusConv"
    path = tmp_path / "bogus.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BadInputError, match=r"bogus.onnx: OpenVINO cannot read this file \(No conversion rule found "
                                            r"for operations: BogusConv"):
        Pipeline.from_onnx(path, backend="openvino")
    result = CliRunner().invoke(main, ["sample", "--onnx", str(path), "--backend", "openvino", "-o",
                                       str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "Traceback" not in result.output  # was a traceback, exit 1


@needs_openvino
def test_openvino_keeps_a_bounded_number_of_compiled_batch_sizes(tiny_onnx: Path) -> None:
    from ddpm_export.runtime.openvino_backend import MAX_COMPILED

    pipe = Pipeline.from_onnx(tiny_onnx, backend="openvino", threads=1, inference_precision="f32")
    first = pipe.sample(3, steps=2, seed=4, progress=False)
    for n in range(1, 9):
        pipe.sample(n, steps=1, progress=False)
        assert len(pipe.backend._compiled) <= MAX_COMPILED
        assert len(pipe.backend._local.requests) <= MAX_COMPILED
        # a request keeps its compiled model alive: this thread holds none the cache has dropped
        live = {id(c) for c in pipe.backend._compiled.values()}
        assert all(id(owner) in live for owner, _ in pipe.backend._local.requests.values())
    assert (3, None) not in pipe.backend._compiled  # dropped by the later sizes; compiled again on use, same result
    np.testing.assert_array_equal(pipe.sample(3, steps=2, seed=4, progress=False), first)


def _counting_compiles(backend: Any, hold: dict[int, threading.Event] | None = None) -> list[int]:
    """The batch sizes ``backend`` compiles from now on, in order; a size in ``hold`` waits for its
    event before compiling (the real OpenVINO compile, instrumented, not replaced)."""
    sizes: list[int] = []
    compile_size = backend._compile

    def counted(shape: tuple[int, int | None]) -> Any:
        sizes.append(shape[0])
        if hold is not None and shape[0] in hold:
            assert hold[shape[0]].wait(120)
        return compile_size(shape)

    backend._compile = counted
    return sizes


@needs_openvino
def test_openvino_threads_at_many_sizes_compile_each_once(tiny_onnx: Path) -> None:
    """Six threads, six sizes (more than MAX_COMPILED): each size is compiled once, by the thread
    that needs it (was 27 compiles for 6 sizes: a size another thread pushed out of the cache was
    compiled again at the next step), and each thread's images are the serial ones."""
    pipe = Pipeline.from_onnx(tiny_onnx, backend="openvino", threads=1, inference_precision="f32")
    sizes = [1, 2, 3, 5, 6, 7]  # opt_batch 4 is compiled at load
    serial = {n: Pipeline.from_onnx(tiny_onnx, backend="openvino", threads=1, inference_precision="f32")
              .sample(n, steps=5, seed=n, progress=False) for n in sizes}
    compiles = _counting_compiles(pipe.backend)
    start = threading.Barrier(len(sizes))

    def run(n: int) -> np.ndarray:
        start.wait()
        return pipe.sample(n, steps=5, seed=n, progress=False)

    with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
        got = dict(zip(sizes, pool.map(run, sizes)))
    assert sorted(compiles) == sizes
    for n in sizes:
        np.testing.assert_array_equal(got[n], serial[n])


@needs_openvino
def test_openvino_calls_go_on_while_another_size_compiles(tiny_onnx: Path) -> None:
    """A call at a compiled size does not wait for another thread's compilation (which held the
    lock every call takes: a 0.3 s stall per new size); a second thread asking for the size under
    compilation waits for it instead of compiling it again."""
    pipe = Pipeline.from_onnx(tiny_onnx, backend="openvino", threads=1, inference_precision="f32")
    release = threading.Event()
    compiles = _counting_compiles(pipe.backend, hold={7: release})
    x = pipe.info.spec.sample_inputs(7, seed=0)
    args = list(x.values()) + [None] * (3 - len(x))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(pipe.backend, *args) for _ in range(2)]  # both at batch 7: one compiles
        while not compiles:
            time.sleep(0.01)
        compiled_size = pipe.sample(pipe.info.spec.opt_batch, steps=2, progress=False)  # not blocked
        assert not any(f.done() for f in waiting)
        release.set()
        out = [f.result(timeout=120) for f in waiting]
    assert compiles == [7] and compiled_size.shape[0] == pipe.info.spec.opt_batch
    np.testing.assert_array_equal(out[0], out[1])


def test_a_callback_reports_every_step_and_can_stop_a_request() -> None:
    """callback(done, total) after every step over all chunks (digits, max_batch 16: 20 images are
    two chunks); an exception it raises stops sampling and reaches the caller, and the Pipeline
    then samples as before."""
    from ddpm_export.presets import shipped_onnx

    pipe = Pipeline.from_onnx(shipped_onnx("digits"), threads=1)
    seen: list[tuple[int, int]] = []
    first = pipe.sample(20, steps=3, seed=5, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]

    class Deadline(Exception):
        pass

    def stop_at_2(done: int, total: int) -> None:
        if done == 2:
            raise Deadline

    with pytest.raises(Deadline):
        pipe.sample(20, steps=3, seed=5, callback=stop_at_2)
    np.testing.assert_array_equal(pipe.sample(20, steps=3, seed=5), first)
    with pytest.raises(WrongTypeError, match=r"callback must be a function of \(done, total\) or None, got 3"):
        pipe.sample(1, callback=3)



@needs_openvino
def test_openvino_close_during_another_threads_compile(tiny_onnx: Path) -> None:
    """close() while a call at a new size waited to compile crashed that call with Python's
    "'NoneType' object has no attribute 'clone'"; one whose compile was under way put its model back
    into the closed backend's cache. Now the first is the closed backend's BadInputError and the
    second finishes its call without keeping the model."""
    for compiled_first in (False, True):
        pipe = Pipeline.from_onnx(tiny_onnx, backend="openvino", threads=1, inference_precision="f32")
        backend, started, release = pipe.backend, threading.Event(), threading.Event()
        compile_shape = backend._compile

        def held(shape: tuple[int, int | None], first: bool = compiled_first) -> Any:
            compiled = compile_shape(shape) if first else None
            started.set()
            assert release.wait(120)
            return compiled if first else compile_shape(shape)

        backend._compile = held
        x = pipe.info.spec.sample_inputs(3, seed=0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(backend, *x.values(), *[None] * (3 - len(x)))
            assert started.wait(120)
            pipe.close()
            release.set()
            if compiled_first:
                assert call.result(timeout=120).shape == (3, 3, 16, 16)
            else:
                with pytest.raises(BadInputError, match="this OpenVINO backend is closed; load the file again"):
                    call.result(timeout=120)
        assert backend._compiled == {}  # nothing compiled is kept by a closed backend

def test_run_checks_its_request_progress_and_callback_as_sample_does() -> None:
    """Pipeline.run (what the Triton sampler calls with a parsed request) took progress="no" as
    True (a bar was drawn), failed on callback=3 after the first model call with Python's "'int'
    object is not callable", and on a request that is no SampleRequest with an AttributeError."""
    from ddpm_export.presets import shipped_onnx
    from ddpm_export.runtime import SampleRequest

    pipe = Pipeline.from_onnx(shipped_onnx("digits"), threads=1)
    req = SampleRequest(pipe.info, 2, steps=2, sampler=None, seed=3, eta=None, guidance_scale=1.0, classes=None,
                        context=None, x_T=None)
    calls = _counting_calls(pipe)
    with pytest.raises(WrongTypeError, match=r"progress must be True or False, got 'no'"):
        pipe.run(req, progress="no")
    with pytest.raises(WrongTypeError, match=r"callback must be a function of \(done, total\) or None, got 3"):
        pipe.run(req, callback=3)
    with pytest.raises(WrongTypeError, match=r"req must be a SampleRequest \(or call Pipeline.sample\), got dict"):
        pipe.run({"n": 2})
    assert calls == []  # refused before any model call
    np.testing.assert_array_equal(pipe.run(req, progress=np.bool_(False)), pipe.sample(2, steps=2, seed=3))


def _counting_calls(pipe: Pipeline) -> list[int]:
    """The batch sizes of ``pipe``'s model calls from now on (the real backend, instrumented)."""
    sizes: list[int] = []
    backend = pipe.backend

    def counted(x_t: np.ndarray, t: np.ndarray, cond: Any) -> np.ndarray:
        sizes.append(x_t.shape[0])
        return backend(x_t, t, cond)

    pipe.backend = counted
    return sizes


def test_the_readmes_way_to_pil_holds_for_grayscale_and_rgb(tiny_onnx: Path) -> None:
    """The README said to_uint8's [N, H, W, C] is "what PIL takes": Image.fromarray refuses the
    shipped digits model's [H, W, 1]; the README's [H, W] slice is an "L" image of the same
    pixels, and an RGB image goes as it is."""
    from PIL import Image

    from ddpm_export.images import to_uint8
    from ddpm_export.presets import shipped_onnx

    gray = to_uint8(Pipeline.from_onnx(shipped_onnx("digits"), threads=1).sample(2, steps=2))
    image = Image.fromarray(gray[1, :, :, 0])
    assert image.mode == "L" and image.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(image), gray[1, :, :, 0])
    rgb = to_uint8(Pipeline.from_onnx(tiny_onnx).sample(2, steps=2))
    image = Image.fromarray(rgb[1])
    assert image.mode == "RGB" and image.getpixel((5, 3)) == tuple(rgb[1, 3, 5])


def test_the_callers_session_options_keep_their_threads(tiny_onnx: Path) -> None:
    mine = ort.SessionOptions()
    mine.intra_op_num_threads, mine.inter_op_num_threads = 3, 2
    pipe = Pipeline.from_onnx(tiny_onnx, session_options=mine)  # tiny's default would be 1 thread
    used = pipe.backend.session.get_session_options()
    assert (used.intra_op_num_threads, used.inter_op_num_threads) == (3, 2)
    assert (mine.intra_op_num_threads, mine.inter_op_num_threads) == (3, 2)  # was rewritten to (1, 1)
    pipe = Pipeline.from_onnx(tiny_onnx, session_options=mine, threads=np.int64(2))  # threads given: applied
    assert pipe.backend.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(WrongTypeError, match=r"session_options must be an onnxruntime.SessionOptions, got str"):
        Pipeline.from_onnx(tiny_onnx, session_options="x")


@pytest.mark.parametrize(("providers", "error", "match"), [
    ("CPUExecutionProvider", WrongTypeError, r"providers must be a non-empty list of execution provider names"),
    ([], WrongTypeError, r"providers must be a non-empty list"),
    ([("CPUExecutionProvider", "x")], WrongTypeError, r"each is a name or a \(name, options dict\) pair"),
    (["BogusProvider"], BadInputError, r"'BogusProvider' is not an ONNX Runtime execution provider; available here: "),
])
def test_providers_are_checked_before_onnx_runtime_falls_back(tiny_onnx: Path, providers, error, match) -> None:
    with pytest.raises(error, match=match):
        Pipeline.from_onnx(tiny_onnx, providers=providers)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_a_provider_this_onnxruntime_lacks_is_named(tiny_onnx: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"providers: CUDAExecutionProvider is not in this onnxruntime "
                                                     r"package .* needs onnxruntime-gpu"):
        Pipeline.from_onnx(tiny_onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    pipe = Pipeline.from_onnx(tiny_onnx, providers=[("CPUExecutionProvider", {})])
    assert pipe.backend.session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(device=1), r"device=1 applies to the GPU backends, not 'onnxruntime'"),
    (dict(device=-1), r"device must be a CUDA device index \(an int >= 0\), got -1"),
    (dict(device="x"), r"device must be a CUDA device index"),
    (dict(backend="openvino", device=2), r"device=2 applies to the GPU backends, not 'openvino'"),
])
def test_device_is_refused_where_nothing_uses_it(tiny_onnx: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        Pipeline.from_onnx(tiny_onnx, **kwargs)


def test_from_onnx_says_where_the_tensorrt_backend_runs(tiny_onnx: Path) -> None:
    """backend='tensorrt' (a name of from_onnx's BackendName) was "not valid; choose one of" the
    other four, where `sample --onnx` says it runs a bundle's engine."""
    with pytest.raises(BadInputError, match=r"^backend='tensorrt' runs a bundle's engine: Pipeline.from_bundle\("
                                            r"folder, backend='tensorrt'\); from_onnx runs 'onnxruntime', 'openvino', "
                                            r"'ort-cuda', 'ort-tensorrt'$"):
        Pipeline.from_onnx(tiny_onnx, backend="tensorrt")


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_a_pipeline_closes_the_backend_it_opened(tiny_onnx: Path, tmp_path: Path, backend: str) -> None:
    """Pipeline had no close(): an app reloading Pipeline.from_bundle(..., backend='tensorrt') leaked
    the engine's CUDA stream and device buffers per reload. close() releases the opened backend,
    once; sampling after it is a BadInputError, not a crash inside the engine."""
    from ddpm_export.runtime import make_bundle

    shutil.copy(tiny_onnx, tmp_path / "tiny.onnx")
    make_bundle([tmp_path / "tiny.onnx"], tmp_path / "b")
    with Pipeline.from_bundle(tmp_path / "b", backend=backend) as pipe:
        first = pipe.sample(2, steps=2, progress=False)
    assert first.shape == (2, 3, 16, 16) and np.isfinite(first).all()
    pipe.close()  # a second close does nothing
    with pytest.raises(BadInputError, match=r"b/tiny.onnx: this Pipeline is closed; load it again to sample"):
        pipe.sample(2, steps=2, progress=False)
    with pytest.raises(BadInputError, match="this Pipeline is closed"):
        pipe.run(SampleRequest(pipe.info, 2, steps=2, sampler=None, seed=0, eta=None, guidance_scale=1.0,
                               classes=None, context=None, x_T=None))
    x, t = np.zeros((2, 3, 16, 16), np.float32), np.zeros(2, np.int64)
    with pytest.raises(BadInputError, match=f"this {'ONNX Runtime' if backend == 'onnxruntime' else 'OpenVINO'} "
                                            f"backend is closed; load the file again"):
        pipe.backend(x, t, None)
    again = Pipeline.from_onnx(tmp_path / "tiny.onnx", backend=backend)
    np.testing.assert_array_equal(again.sample(2, steps=2, progress=False), first)  # the file is as it was
    again.close()


def test_a_pipeline_leaves_a_backend_it_was_given_open(tiny_onnx: Path) -> None:
    owner = Pipeline.from_onnx(tiny_onnx)
    with Pipeline(owner.backend, owner.info) as borrowed:
        borrowed.sample(1, steps=1, progress=False)
    assert owner.sample(1, steps=1, progress=False).shape == (1, 3, 16, 16)  # the backend is still its owner's


def test_numpy_integers_are_accepted_wherever_ints_are(tiny_onnx: Path) -> None:
    pipe = Pipeline.from_onnx(tiny_onnx, threads=np.int64(1))
    a = pipe.sample(np.int64(2), steps=np.int64(2), sampler="ddim", eta=np.int64(1), seed=np.int64(0), progress=False)
    b = pipe.sample(2, steps=2, sampler="ddim", eta=1.0, seed=0, progress=False)
    np.testing.assert_array_equal(a, b)


def test_one_class_id_may_be_a_zero_dimensional_array(tmp_path_factory: pytest.TempPathFactory) -> None:
    pipe = Pipeline.from_onnx(exported("digits", tmp_path_factory))
    np.testing.assert_array_equal(pipe.sample(2, steps=2, classes=np.array(3), progress=False),
                                  pipe.sample(2, steps=2, classes=3, progress=False))


def test_a_bundle_model_may_be_named_by_a_path(tiny_onnx: Path, tmp_path: Path) -> None:
    from ddpm_export.runtime import make_bundle

    shutil.copy(tiny_onnx, tmp_path / "tiny.onnx")
    make_bundle([tmp_path / "tiny.onnx"], tmp_path / "b")
    assert Pipeline.from_bundle(tmp_path / "b", onnx=Path("tiny.onnx")).info.spec.sample_size == 16
    with pytest.raises(WrongTypeError, match=r"onnx must be the name of one of the bundle's ONNX files, got int"):
        Pipeline.from_bundle(tmp_path / "b", onnx=3)


def test_a_missing_onnxruntime_says_what_to_install() -> None:
    error = ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    assert describe(error) == ("this needs ONNX Runtime, a dependency of ddpm-export that is not installed here: "
                               "pip install onnxruntime (or onnxruntime-gpu)")
    assert exit_status(error) == 2


def test_a_missing_onnxruntime_is_a_missing_dependency_in_the_library_too() -> None:
    """A half-done swap to onnxruntime-gpu (onnxruntime absent: blocked in sys.modules, in a child
    process) was a raw ModuleNotFoundError from Pipeline.from_onnx; OpenVINO still runs."""
    import subprocess
    import sys

    from ddpm_export.presets import shipped_onnx

    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from ddpm_export.errors import MissingDependencyError\n"
            "from ddpm_export.runtime import Pipeline\n"
            f"try:\n    Pipeline.from_onnx({str(shipped_onnx('digits'))!r})\n"
            "except MissingDependencyError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == ("refused: this needs ONNX Runtime, a dependency of ddpm-export that is not "
                                   "installed here: pip install onnxruntime (or onnxruntime-gpu)"), proc.stderr


@pytest.mark.parametrize("kwargs", [dict(threads=True), dict(threads=2.0), dict(threads="2")])
def test_a_thread_count_of_the_wrong_type_is_a_type_error(kwargs: dict) -> None:
    from ddpm_export.presets import shipped_onnx

    with pytest.raises(WrongTypeError, match=r"threads must be an int in \[1, 1024\], got "):
        Pipeline.from_onnx(shipped_onnx("digits"), **kwargs)
    with pytest.raises(BadInputError, match=r"threads must be an int in \[1, 1024\], got 0") as caught:
        Pipeline.from_onnx(shipped_onnx("digits"), threads=0)
    assert not isinstance(caught.value, TypeError)


@pytest.mark.parametrize("kwargs", [dict(n="1"), dict(n=True), dict(seed="0"), dict(steps="2"), dict(steps=1.0),
                                    dict(guidance_scale="1.5"), dict(classes="3"), dict(classes=[1, True]),
                                    dict(sampler=3), dict(sampler=[])])
def test_an_argument_of_the_wrong_type_is_a_type_error(kwargs: dict) -> None:
    """n="1", seed="0", steps="2", ... raised BadInputError (a ValueError only), x_T=list and
    progress="no" WrongTypeError (also a TypeError): `except TypeError` caught only some."""
    from ddpm_export.presets import shipped_onnx

    pipe = Pipeline.from_onnx(shipped_onnx("digits"), threads=1)
    args = {"n": 1, "steps": 1, **kwargs}
    with pytest.raises(WrongTypeError) as caught:
        pipe.sample(args.pop("n"), progress=False, **args)
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, BadInputError)  # ValueError too


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(seed=-1), dict(steps=1001), dict(guidance_scale=float("nan")),
                                    dict(classes=[[1]])])
def test_an_argument_of_the_right_type_but_a_bad_value_is_a_value_error_only(kwargs: dict) -> None:
    from ddpm_export.presets import shipped_onnx

    pipe = Pipeline.from_onnx(shipped_onnx("digits"), threads=1)
    args = {"n": 1, "steps": 1, **kwargs}
    with pytest.raises(BadInputError) as caught:
        pipe.sample(args.pop("n"), progress=False, **args)
    assert not isinstance(caught.value, TypeError)
