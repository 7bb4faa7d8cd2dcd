"""Run a real ``tritonserver`` on this machine from the ``nvidia-pytriton`` wheel (CPU build).

The wheel ships the server binary (``pytriton/tritonserver/bin/tritonserver``), the Python
backend (``.../backends/python/``), one Python-backend stub per Python version
(``.../python_backend_stubs/3.X/triton_python_backend_stub``) and its shared libraries
(``nvidia_pytriton.libs/``). :func:`find_tritonserver` locates them without importing
``pytriton`` (whose own Python API is not needed); :class:`LocalServer` assembles a backend folder
(the Python backend plus this Python's stub) and runs ``tritonserver --model-repository R
--backend-directory B`` on 127.0.0.1. That build has no ONNX Runtime, TensorRT or OpenVINO
backend: serve repositories generated with ``--unet-backend python``.

The stub links ``libpython3.X.so.1.0``; ``LD_LIBRARY_PATH`` puts this interpreter's library folder
first, so the stub runs this Python with its site-packages (numpy, onnxruntime, ddpm-export).
The stub's interpreter ignores ``PYTHONPATH``, but its ``sys.path`` starts with the working
directory, so :class:`LocalServer` runs the server in a folder of links to the ``pythonpath``
folders' entries (first wins): that is how a test serves this checkout's ``ddpm_export``.

That stub (Triton 2.51) is built with a pybind11 that reads numpy 1's array descriptors: under
numpy 2, ``Tensor.as_numpy()`` reads every element as the first, ``Tensor(name, array)`` sends
no data, and a BYTES input aborts the stub process -- which is why pytriton itself requires
``numpy<2``. When this Python has numpy 2, give the server
a folder with ``numpy<2`` first on its path (``pip install --target DIR --no-deps "numpy<2"``;
``./dev`` makes ``.triton-site/``); :func:`stub_numpy_site` finds it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import functools
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, Sequence

from ddpm_export.errors import BadInputError

__all__ = ["SITE_FOLDER", "LocalServer", "TritonInstall", "find_tritonserver", "free_ports", "stub_numpy_site"]

#: where ``./dev`` installs numpy<2 for the server's Python-backend stubs (under the checkout).
SITE_FOLDER = ".triton-site"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: seconds Triton waits for open client connections when it stops (its default, 30 s, outlasted
#: stop()'s grace: an HTTP client left open got the server SIGKILLed, its models not unloaded and
#: the Python backend's shared-memory regions left in /dev/shm)
EXIT_TIMEOUT_S = 5
#: the shared-memory files of the Python backend (one per model instance and stub)
SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"
#: the folders of ``work`` that :class:`LocalServer` rewrites on every start: the backend folder
#: and the server's working directory
BACKENDS_FOLDER, CWD_FOLDER = "backends", "cwd"


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    """Paths inside an installed ``nvidia-pytriton`` wheel."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_tritonserver() -> TritonInstall | None:
    """The ``nvidia-pytriton`` server files for this Python version, or None when not installed."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(binary=root / "bin" / "tritonserver", python_backend=root / "backends" / "python",
                            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
                            libs=root.parent.parent / "nvidia_pytriton.libs")
    paths = (install.binary, install.python_backend / "libtriton_python.so", install.stub)
    return install if all(p.exists() for p in paths) else None


def stub_numpy_site(root: str | Path) -> list[Path] | None:
    """The ``pythonpath`` entries that give the stubs numpy<2: ``[]`` when this Python's numpy is
    1.x, ``[root/.triton-site]`` when that folder holds numpy 1.x, else None (no usable numpy)."""
    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        return []
    site = Path(root) / SITE_FOLDER
    versions = sorted(site.glob("numpy-1.*.dist-info"))
    return [site] if versions and (site / "numpy").is_dir() else None


def _numpy_version() -> str:
    import numpy

    return str(numpy.__version__)


def _terminate_with_parent(prctl: Any, parent: int) -> None:
    """In the server's process before it runs (Linux): SIGTERM when the thread of ``parent`` that
    started it dies (``prctl(PR_SET_PDEATHSIG)``), so that Triton unloads its models and stops its
    stubs even when ``parent`` is killed before it could stop the server; at once if it already
    died. ``prctl`` is resolved in the parent: no ``dlopen`` between fork and exec."""
    if prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _shm_name(tag: str) -> str:
    """The prefix of the shared-memory files of the server started with ``tag`` (Triton's Python
    backend names them ``<prefix><uuid>``)."""
    return f"{Path(SHM_PREFIX).name}ddpm-{tag}-"


def _remove_shm_regions(tag: str) -> None:
    """Remove the Python backend's shared-memory files of the server started with ``tag`` (only its
    own: other servers' files have other prefixes)."""
    for region in Path(SHM_PREFIX).parent.glob(f"{_shm_name(tag)}*"):
        region.unlink(missing_ok=True)


def _end_group(group: int, grace: float = 5.0) -> None:
    """SIGKILL to what is left of process group ``group`` (stubs whose server has exited: they ignore
    SIGTERM, and their shared memory is removed by name), then wait up to ``grace`` s for it to go."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return  # nothing left
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class LocalServer:
    """``tritonserver`` on 127.0.0.1 serving ``repository``; a context manager that always stops it.

    ``work`` is a scratch folder of one server at a time (outside ``repository``: Triton would take
    its folders for models) for the backend folder (``backends/``), the working directory (``cwd/``,
    both rewritten on every start, so the repository may not be in them) and the server log
    (``server.log``); a running server holds a lock on it (``work/.lock``), and a second one
    started there is refused (it rewrote the backend files the first had loaded: that one
    crashed).
    ``pythonpath``: folders whose packages the stubs import before site-packages (see the module
    doc). The server runs in its own session (a Ctrl-C in a terminal reaches this process, which
    stops it) and, on Linux, gets SIGTERM when the thread that started it dies, so a ``kill``,
    ``timeout`` or closed terminal that ends this process without ``stop()`` stops it too (start
    it from a thread that lives as long as the server: from a worker thread it stops when that
    thread ends). Triton waits :data:`EXIT_TIMEOUT_S` for open client connections when it stops,
    less than ``stop``'s grace, so that it exits by itself (after an HTTP client that stayed
    connected, without unloading its models: ``stop`` then ends the stubs and removes their
    shared memory).
    """

    def __init__(self, install: TritonInstall, repository: str | Path, work: str | Path, *,
                 pythonpath: Sequence[str | Path] = ()) -> None:
        self.repository = Path(repository).resolve()
        self.work = Path(work).resolve()
        for what, path in (("repository", self.repository), ("work", self.work)):
            if not str(path).isascii() or any(c.isspace() for c in str(path)):
                # the Python backend's stub is started through a shell and parses its arguments with
                # std::stol: a space split the path (a 60 s hang), non-ASCII failed its encoding
                raise BadInputError(f"{what} {path}: Triton's Python backend cannot run from a path with spaces or "
                                    f"non-ASCII characters; use a plain path")
        if install is None:
            raise BadInputError("install: no tritonserver was found (find_tritonserver() returned None): pip install "
                                "--no-deps nvidia-pytriton==0.7.0 (./dev does)")
        if pythonpath is None:
            raise BadInputError(f"pythonpath: None (stub_numpy_site found no numpy<2 for this Python's numpy "
                                f"{_numpy_version()}): make one with `pip install --target DIR --no-deps 'numpy<2'` "
                                f"(./dev makes {SITE_FOLDER}/ in the checkout) and pass [DIR]")
        if self.work == self.repository or self.repository in self.work.parents:
            raise BadInputError(f"work {self.work} is {'the' if self.work == self.repository else 'inside the'} "
                                f"repository {self.repository}: Triton would take its folders for models; "
                                f"choose a work folder outside it")
        for scratch in (self.work / BACKENDS_FOLDER, self.work / CWD_FOLDER):
            if scratch == self.repository or scratch in self.repository.parents:
                raise BadInputError(f"repository {self.repository} is in {scratch}, which LocalServer empties and "
                                    f"refills on every start (it would be deleted); choose another work folder")
        self.install = install
        self.pythonpath = [Path(p).resolve() for p in pythonpath]
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.process: subprocess.Popen[bytes] | None = None
        self._group: int | None = None  # the server's process group (it and its stubs) until reaped
        self._shm_tag = ""  # names this start's shared-memory files
        self._log: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.work / "server.log"

    def backend_directory(self) -> Path:
        """``work/backends/python/``: the Python backend's files plus this Python's stub."""
        folder = self.work / BACKENDS_FOLDER / "python"
        folder.mkdir(parents=True, exist_ok=True)
        for item in [*(i for i in self.install.python_backend.iterdir() if i.is_file()), self.install.stub]:
            tmp = folder / f".{item.name}.tmp-{os.getpid()}"
            shutil.copy2(item, tmp)
            os.replace(tmp, folder / item.name)  # a file a process still runs is not rewritten in place
        return folder.parent

    def working_directory(self) -> Path:
        """``work/cwd/``, made afresh: a link to every entry of the ``pythonpath`` folders, then of
        this virtual environment's site-packages if it runs in one (the stub runs the base
        interpreter, which knows nothing of the venv); the first entry of a name wins."""
        folder = self.work / CWD_FOLDER
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)  # links of an earlier run (another checkout's ddpm_export) must not win
        folder.mkdir(parents=True, exist_ok=True)
        venv = sys.prefix != sys.base_prefix
        site = [Path(p) for p in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))] if venv else []
        for root in [*self.pythonpath, *site]:
            for item in sorted(root.iterdir()):
                link = folder / item.name
                if not item.name.startswith(".") and not link.exists() and not link.is_symlink():
                    link.symlink_to(item)
        return folder

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(self.install.libs),
                                                              env.get("LD_LIBRARY_PATH")) if p)
        return env

    def start(self) -> None:
        self._lock_work()
        try:
            self._start()
        except BaseException:
            self._unlock_work()
            raise

    def _lock_work(self) -> None:
        """Hold ``work/.lock``, or refuse: another server runs from this work folder."""
        self.work.mkdir(parents=True, exist_ok=True)
        lock = open(self.work / ".lock", "wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise BadInputError(f"work {self.work}: another LocalServer is running from this folder (it holds "
                                f"{self.work / '.lock'}); give each server its own work folder") from None
        self._lock = lock

    def _unlock_work(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def _start(self) -> None:
        command = [str(self.install.binary), "--model-repository", str(self.repository),
                   "--backend-directory", str(self.backend_directory()),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                   "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                   "--exit-on-error", "true", "--disable-auto-complete-config",
                   "--exit-timeout-secs", str(EXIT_TIMEOUT_S)]
        self._shm_tag = secrets.token_hex(6)  # its files are found by name even after a crash
        command += ["--backend-config", f"python,shm-region-prefix-name={_shm_name(self._shm_tag)}"]
        die_with_us = None
        if sys.platform == "linux":
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            die_with_us = functools.partial(_terminate_with_parent, prctl, os.getpid())
        self._log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                            env=self.environment(), cwd=self.working_directory(),
                                            start_new_session=True, preexec_fn=die_with_us)
            self._group = self.process.pid  # its own session: the group of the server and its stubs
        except BaseException:
            self._log.close()
            self._log = None
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/v2/health/ready`` until every model is loaded; raise with the log's tail otherwise.
        The poll never goes through a proxy (``http_proxy`` in the environment): none reaches this
        machine's 127.0.0.1."""
        deadline = time.monotonic() + timeout
        assert self.process is not None, "start() first"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reap()
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with direct.open(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        """Whether the server runs; one found dead has its stubs ended and its shared memory removed."""
        if self.process is None:
            return False
        if self.process.poll() is None:
            return True
        self._reap()
        return False

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (Triton unloads its models and exits, after at most :data:`EXIT_TIMEOUT_S` for open
        connections), SIGKILL to the process group after ``grace`` s; then, whether it was stopped
        or had exited on its own (a crash, a bad repository), its stubs are ended and its Python
        backend's shared-memory files removed (a server that gave up waiting for a client's open
        connection, or crashed, exits without unloading its models)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)  # the server and its stub processes, which it started
                self.process.wait()
        self._reap()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._unlock_work()

    def _reap(self) -> None:
        """After the server exited: end what is left of its process group (stubs outlive a server that
        crashed) and remove the shared-memory files of its prefix; once per start."""
        if self._group is None:
            return
        _end_group(self._group)
        _remove_shm_regions(self._shm_tag)
        self._group = None

    def __enter__(self) -> "LocalServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
