"""End to end on a real Triton server: the digits bundle -> `ddpm-export triton --unet-backend python`
-> the `tritonserver` of the nvidia-pytriton wheel on free 127.0.0.1 ports -> tritonclient over
HTTP and gRPC. Served images equal ``Pipeline.sample`` with the same arguments (max abs <= 1e-5),
concurrent clients each get their own images, a bad request gets an error naming the input and
the server keeps serving, and the server is always stopped (LocalServer's context manager)."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the export needs torch")
httpclient = pytest.importorskip("tritonclient.http", reason="needs the serve extra (tritonclient)")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs the serve extra (tritonclient)")
from tritonclient.utils import InferenceServerException  # noqa: E402

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.errors import BadInputError  # noqa: E402
from ddpm_export.runtime import Pipeline, make_bundle  # noqa: E402
from ddpm_export.serve.local_server import LocalServer, find_tritonserver, stub_numpy_site  # noqa: E402

from runtime_exports import exported  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.slow]  # a real server: CI runs it, -m 'not slow' skips it
ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle([exported("digits", tmp_path_factory)], tmp_path_factory.mktemp("digits") / "bundle")


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    install, site = find_tritonserver(), stub_numpy_site(ROOT)
    assert install is not None and site is not None  # the triton marker skips otherwise (conftest.py)
    work = tmp_path_factory.mktemp("triton")
    result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(work / "repo"),
                                       "--unet-backend", "python", "--instances", "4",
                                       "--max-queue-delay-us", "20000",  # calls of concurrent requests surely meet
                                       "--max-image-steps", "16000"])  # test_a_request_its_client_gave_up_on: at it
    assert result.exit_code == 0, result.output
    # the stubs import numpy<2 (see local_server) and this checkout's ddpm_export, as installed
    with LocalServer(install, work / "repo", work, pythonpath=[*site, ROOT]) as running:
        yield running


@pytest.fixture(scope="module")
def pipe(bundle: Path) -> Pipeline:
    return Pipeline.from_bundle(bundle)


def inputs(module: Any, **values: np.ndarray) -> list[Any]:
    """tritonclient InferInputs (``module`` is tritonclient.http or .grpc) from arrays."""
    dtypes = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(np.object_): "BYTES"}
    out = []
    for name, array in values.items():
        item = module.InferInput(name, list(array.shape), dtypes[array.dtype])
        item.set_data_from_numpy(array)
        out.append(item)
    return out


def request(seed: int, n: int, steps: int, *, sampler: str | None = None, eta: float | None = None,
            guidance: float | None = None, classes: list[int] | None = None) -> dict[str, np.ndarray]:
    values = {"seed": np.array([seed], np.int64), "num_images": np.array([n], np.int64),
              "steps": np.array([steps], np.int64)}
    if sampler is not None:
        values["sampler"] = np.array([sampler.encode()], np.object_)
    if eta is not None:
        values["eta"] = np.array([eta], np.float32)
    if guidance is not None:
        values["guidance_scale"] = np.array([guidance], np.float32)
    if classes is not None:
        values["class_labels"] = np.array(classes, np.int64)
    return values


def infer(server: LocalServer, protocol: str, values: dict[str, np.ndarray]) -> np.ndarray:
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    try:
        return client.infer("sampler", inputs(module, **values)).as_numpy("images")
    finally:
        client.close()


CASES = {  # exactly representable eta / guidance, so float32 on the wire changes nothing
    "default-sampler-classes": (dict(seed=3, n=4, steps=5), dict()),  # the model's default (UniPC)
    "ddim-eta-guided-two-chunks": (dict(seed=11, n=5, steps=4, sampler="ddim", eta=0.5, guidance=1.5,
                                        classes=[3, 1, 4, 1, 5]),
                                   dict(sampler="ddim", eta=0.5, guidance_scale=1.5, classes=[3, 1, 4, 1, 5])),
    "ddpm": (dict(seed=2**40, n=3, steps=6, sampler="ddpm"), dict(sampler="ddpm")),
    "dpm-solver++": (dict(seed=5, n=3, steps=6, sampler="dpm-solver++"), dict(sampler="dpm-solver++")),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(CASES))
def test_served_images_equal_pipeline_sample(server: LocalServer, pipe: Pipeline, protocol: str, case: str) -> None:
    args, extra = CASES[case]
    got = infer(server, protocol, request(**args))
    want = pipe.sample(args["n"], steps=args["steps"], seed=args["seed"], progress=False, **extra)
    assert got.shape == want.shape == (args["n"], 1, 16, 16)
    assert np.abs(got - want).max() <= TOL


def unet_counts(server: LocalServer) -> tuple[int, int]:
    """(BLS calls the unet answered, batched executions it ran), from Triton's statistics."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_clients_each_get_their_own_images(server: LocalServer, pipe: Pipeline) -> None:
    """8 requests from 4 threads: their step calls are merged into shared unet batches (fewer
    executions than calls) and every client still gets exactly its own Pipeline.sample images."""
    jobs = [("http" if seed % 2 else "grpc", seed) for seed in range(8)]
    calls0, executions0 = unet_counts(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: infer(server, job[0], request(job[1], 2, 5)), jobs))
    deadline = time.monotonic() + 10  # Triton updates its statistics after the responses: 38 of 40 seen once
    while True:
        calls, executions = (a - b for a, b in zip(unet_counts(server), (calls0, executions0)))
        if calls >= 8 * 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert calls == 8 * 5 and executions < calls
    for (_, seed), got in zip(jobs, results):
        assert np.abs(got - pipe.sample(2, steps=5, seed=seed, progress=False)).max() <= TOL
    assert len({r.tobytes() for r in results}) == len(jobs)


def test_the_unet_refuses_a_bad_call_naming_the_input(server: LocalServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        values = {"x_t": np.zeros((2, 1, 16, 16), np.float32), "t": np.array([[5], [1000]], np.int64),
                  "class_labels": np.zeros((2, 1), np.int64)}
        with pytest.raises(InferenceServerException, match=r"t: values must be in \[0, 1000\)"):
            client.infer("unet", inputs(httpclient, **values))
        values["t"] = np.array([[5], [999]], np.int64)
        assert client.infer("unet", inputs(httpclient, **values)).as_numpy("model_output").shape == (2, 1, 16, 16)
    finally:
        client.close()


@pytest.mark.parametrize(("values", "message"), [
    (request(-1, 2, 3), "seed must be a non-negative int"),
    (request(0, 2, 3, classes=[1, 10]), "class_labels: id 10 is outside [0, 10)"),
    (request(0, 2, 3, sampler="euler"), "sampler='euler' is not valid"),
    (request(0, 17, 1000, sampler="ddim"), "num_images x steps: 17 x 1000 = 17000 image-steps, more than the "
                                           "server's max_image_steps_per_request 16000"),
    ({"seed": np.array([0], np.int64), "num_images": np.array([2], np.int64)}, "steps"),  # Triton's own check
])
def test_a_bad_request_gets_an_error_naming_the_input_and_the_server_keeps_serving(
        server: LocalServer, pipe: Pipeline, values: dict[str, np.ndarray], message: str) -> None:
    for protocol in ("http", "grpc"):
        with pytest.raises(InferenceServerException) as e:
            infer(server, protocol, values)
        assert message in str(e.value)
    assert server.alive()
    assert np.abs(infer(server, "http", request(5, 2, 3)) - pipe.sample(2, steps=3, seed=5, progress=False)).max() <= TOL


def test_a_request_its_client_gave_up_on_is_dropped(server: LocalServer) -> None:
    """A gRPC deadline cancels the request: the sampler stops before its next unet call instead of
    running all 1000 steps (counted in Triton's statistics, not timed)."""
    calls0, _ = unet_counts(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("sampler", inputs(grpcclient, **request(0, 16, 1000, sampler="ddim")), client_timeout=0.5)
    finally:
        client.close()
    seen, settled = -1, 0
    deadline = time.monotonic() + 60  # until the count stops moving (the job was dropped) or would have finished
    while settled < 5 and time.monotonic() < deadline:
        calls = unet_counts(server)[0] - calls0
        settled, seen = (settled + 1, seen) if calls == seen else (0, calls)
        time.sleep(0.2)
    assert 0 < seen < 1000, seen


def test_a_repository_written_before_the_image_steps_cap_still_serves(server: LocalServer, pipe: Pipeline,
                                                                      tmp_path: Path) -> None:
    """A sampler config without max_image_steps_per_request (written before it) loads and serves
    as before (no cap), rather than failing to load."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(server.repository, repo)
    config = repo / "sampler" / "config.pbtxt"
    text = config.read_text()
    stripped = re.sub(r',\s*\{\s*key: "max_image_steps_per_request"\s*value \{[^}]*\}\s*\}', "", text)
    assert "max_image_steps_per_request" in text and "max_image_steps_per_request" not in stripped
    config.write_text(stripped)
    with LocalServer(find_tritonserver(), repo, tmp_path / "work", pythonpath=[*stub_numpy_site(ROOT), ROOT]) as old:
        got = infer(old, "http", request(5, 2, 3))
    assert np.abs(got - pipe.sample(2, steps=3, seed=5, progress=False)).max() <= TOL


def _stub_threads(server: LocalServer) -> dict[str, list[int]]:
    """The thread counts of the server's Python-backend stubs, by model (a stub's argv[1] is its model.py)."""
    import os

    counts: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getsid(int(proc.name)) != server.process.pid:  # type: ignore[union-attr]
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if len(argv) > 1 and argv[1].endswith(b"/1/model.py"):
                counts.setdefault(Path(argv[1].decode()).parts[-3], []).append(len(list((proc / "task").iterdir())))
        except OSError:  # a process that ended meanwhile
            continue
    return counts


def test_ddpm_export_threads_sets_the_served_unets_threads(bundle: Path, tmp_path: Path) -> None:
    """`ddpm-export --threads N triton` was ignored: the python unet's ONNX Runtime session took
    its default, one thread per physical core. Its stub now runs at least N - 1 threads (the
    intra-op pool's workers) more than a sampler's stub (the same stub, no session); N is past
    this machine's logical CPUs, more than the default makes. No request runs on them."""
    import os

    threads = (os.cpu_count() or 1) + 2
    result = CliRunner().invoke(main, ["--threads", str(threads), "triton", "--bundle", str(bundle), "-o",
                                       str(tmp_path / "repo"), "--unet-backend", "python", "--instances", "1"])
    assert result.exit_code == 0, result.output
    with LocalServer(find_tritonserver(), tmp_path / "repo", tmp_path / "work",
                     pythonpath=[*stub_numpy_site(ROOT), ROOT]) as threaded:
        counts = _stub_threads(threaded)
    assert len(counts["unet"]) == len(counts["sampler"]) == 1, counts
    assert counts["unet"][0] - counts["sampler"][0] >= threads - 1, counts


def _server_script(repo: Path, work: Path, pythonpath: list[Path]) -> str:
    return (f"import time\nfrom ddpm_export.serve.local_server import LocalServer, find_tritonserver\n"
            f"with LocalServer(find_tritonserver(), {str(repo)!r}, {str(work)!r}, "
            f"pythonpath={[str(p) for p in pythonpath]!r}) as s:\n"
            f"    print(s.process.pid, flush=True)\n    time.sleep(600)\n")


def test_the_server_stops_when_its_owner_is_killed(server: LocalServer, tmp_path: Path) -> None:
    """SIGTERM to the Python that runs LocalServer (a `timeout`, a CI kill) never reaches its
    __exit__; the server, in its own session, gets SIGTERM from the kernel instead (PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", _server_script(server.repository, tmp_path / "work",
                                                                    [*stub_numpy_site(ROOT), ROOT])],
                             stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())  # printed once the models are ready
        owner.send_signal(signal.SIGTERM)
        owner.wait(30)
        deadline = time.monotonic() + 30  # Triton unloads its models, stops its stubs and exits
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and \
                not open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        owner.kill()


def test_a_stub_that_garbles_numpy_2_arrays_fails_to_load_saying_why(server: LocalServer, tmp_path: Path) -> None:
    """Without numpy<2 on its path the stub reads every element as the first: the models refuse to
    load with that reason, instead of loading and answering every request wrongly."""
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip(f"this Python has numpy {np.__version__}: the stub reads its arrays right")
    bare = LocalServer(find_tritonserver(), server.repository, tmp_path / "work", pythonpath=[ROOT])
    with pytest.raises(RuntimeError, match=r"garbles the arrays of numpy 2.*came back as \[1\.0, 1\.0, 1\.0, 1\.0\]"):
        with bare:
            pass
    assert not bare.alive()


def test_a_second_server_on_a_running_servers_work_folder_is_refused(server: LocalServer, pipe: Pipeline) -> None:
    """It rewrote the backend files the running server had loaded (that one crashed: signal 11)."""
    second = LocalServer(find_tritonserver(), server.repository, server.work, pythonpath=[*stub_numpy_site(ROOT), ROOT])
    with pytest.raises(BadInputError, match=rf"work {re.escape(str(server.work))}: another LocalServer is running "
                                            r"from this folder"):
        second.start()
    assert not second.alive()
    values = {"seed": np.array([3], np.int64), "num_images": np.array([2], np.int64), "steps": np.array([2], np.int64)}
    np.testing.assert_allclose(infer(server, "http", values), pipe.sample(2, steps=2, seed=3), atol=TOL)


def test_a_proxy_in_the_environment_does_not_keep_the_server_from_being_ready(server: LocalServer,
                                                                              tmp_path: Path) -> None:
    """With http_proxy set (a corporate shell), the readiness poll of 127.0.0.1 went to the proxy,
    which cannot reach it: a server that was up was reported "not ready after 60 s". The poll now
    connects directly. A process of its own: urllib keeps the proxies of its first request."""
    import os
    import subprocess
    import sys

    script = (f"from ddpm_export.serve.local_server import LocalServer, find_tritonserver\n"
              f"s = LocalServer(find_tritonserver(), {str(server.repository)!r}, {str(tmp_path / 'work')!r}, "
              f"pythonpath={[str(p) for p in [*stub_numpy_site(ROOT), ROOT]]!r})\n"
              f"s.start()\ntry:\n    s.wait_ready(timeout=30)\n    print('ready')\nfinally:\n    s.stop()\n")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy")}
    env["http_proxy"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # a closed port: any proxy fails alike
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ready", run.stderr[-2000:]


def _shm_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*")}


def test_an_open_http_client_does_not_get_the_server_killed(server: LocalServer, tmp_path: Path) -> None:
    """Triton waited 30 s for open HTTP connections, stop() 10 s: the server was SIGKILLed and its
    Python backend's shared-memory regions stayed in /dev/shm. It now gives up waiting after
    EXIT_TIMEOUT_S and exits by itself (status 1: 'Exit timeout expired'), leaving none. Shown by
    its exit status and log, not timed: had it waited longer than stop()'s grace, stop() would
    have killed it (status -9), and the log names the timeout it waited with."""
    import tritonclient.http as httpclient

    from ddpm_export.serve.local_server import EXIT_TIMEOUT_S

    before = _shm_regions()
    other = LocalServer(find_tritonserver(), server.repository, tmp_path / "work",
                        pythonpath=[*stub_numpy_site(ROOT), ROOT])
    with other:
        client = httpclient.InferenceServerClient(other.http_url)
        assert client.is_server_ready()  # its connection stays open (never closed)
    log = other.log_path.read_text()
    assert other.process is not None and other.process.returncode == 1, other.log_tail()  # gave up, not killed
    assert f"Timeout {EXIT_TIMEOUT_S}: Found 1 HTTP service connections" in log and "Exit timeout expired" in log
    assert _shm_regions() <= before
    other.start()  # the work folder's lock was released with the server: it serves again
    other.stop()


#: a Python model whose first instance kills its tritonserver (a crash) once both instances have
#: written down their stub's pid and shared-memory region (the stub's argv[2])
CRASHING_MODEL = """
import os
import signal
import time
from pathlib import Path

RECORDS = Path({records!r})


class TritonPythonModel:
    def initialize(self, args):
        server = os.getppid()
        region = open("/proc/self/cmdline").read().split("\\0")[2]
        (RECORDS / f"{{os.getpid()}}").write_text(region)
        if not args["model_instance_name"].endswith("_0"):
            return
        deadline = time.monotonic() + 30
        while len(list(RECORDS.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        if open(f"/proc/{{server}}/comm").read().strip() == "tritonserver":
            os.kill(server, signal.SIGKILL)
"""
CRASHING_CONFIG = """name: "crash"
backend: "python"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 2 }]
"""


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_server_that_dies_on_its_own_leaves_no_stub_and_no_shared_memory(tmp_path: Path) -> None:
    """A tritonserver that crashed (here killed by its own model) left its Python-backend stubs
    running (they ignore SIGTERM) and their regions in /dev/shm: stop() saw a dead server and did
    nothing. The server's process group is now ended and its regions removed."""
    import os
    import signal

    records = tmp_path / "records"
    records.mkdir()
    (tmp_path / "repo" / "crash" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "crash" / "config.pbtxt").write_text(CRASHING_CONFIG)
    (tmp_path / "repo" / "crash" / "1" / "model.py").write_text(CRASHING_MODEL.format(records=str(records)))
    crashed = LocalServer(find_tritonserver(), tmp_path / "repo", tmp_path / "work",
                          pythonpath=[*stub_numpy_site(ROOT), ROOT])
    stubs: dict[int, str] = {}
    try:
        with pytest.raises(RuntimeError, match="tritonserver exited with -9"):
            with crashed:
                pass
        stubs = {int(p.name): p.read_text() for p in records.iterdir()}
        assert len(stubs) == 2 and not crashed.alive()
        assert [pid for pid in stubs if _running(pid)] == []
        assert [region for region in stubs.values() if Path("/dev/shm", region).exists()] == []
    finally:  # what the server left, whatever the outcome
        stubs = stubs or {int(p.name): p.read_text() for p in records.iterdir()}
        for pid, region in stubs.items():
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
            Path("/dev/shm", region).unlink(missing_ok=True)


def test_local_server_refuses_missing_pieces_and_a_work_folder_in_the_repository(server: LocalServer,
                                                                                  tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"install: no tritonserver was found .* nvidia-pytriton"):
        LocalServer(None, server.repository, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pythonpath: None \(stub_numpy_site found no numpy<2"):
        LocalServer(find_tritonserver(), server.repository, tmp_path, pythonpath=None)  # type: ignore[arg-type]
    for work, where in ((server.repository / "work", "inside the"), (server.repository, "the")):
        with pytest.raises(ValueError, match=f"is {where} repository .*: Triton would take its folders for models"):
            LocalServer(find_tritonserver(), server.repository, work)
