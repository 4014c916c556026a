"""Start a real Triton Inference Server on this machine, for tests and benchmarks of the Triton lifter.

The server comes out of the ``nvidia-pytriton`` wheel, installed without its Python layer (which pins numpy < 2)::

    pip install --no-deps --target ~/.cache/kasf/pytriton nvidia-pytriton==0.7.0

That folder holds ``pytriton/tritonserver/bin/tritonserver``, its libraries (``nvidia_pytriton.libs/``) and the
Python backend with one stub per Python version. Only the Python backend is in the wheel: the ONNX Runtime and
TensorRT backends come with NVIDIA's containers.

Which Python the Python backend runs: its stub embeds ``libpython3.X`` (found through ``LD_LIBRARY_PATH``) with an
isolated configuration that ignores ``PYTHONPATH``, and takes ``sys.executable`` - hence ``sys.prefix``, a venv's
``pyvenv.cfg`` and its site-packages - from the first ``python3`` on ``PATH``. Left alone it runs the system's
libpython with the system's packages (no numpy: the backend's own utilities fail to import). So the server is
started with this interpreter's folder first on ``PATH`` and its shared libpython first on ``LD_LIBRARY_PATH``: the
stub then runs exactly the Python (and packages) that runs kasf. Mixing one patch release's libpython with
another's standard library breaks ``threading`` (PyTriton's ``RLock._recursion_count`` failure).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ENV_HOME = "KASF_TRITON_HOME"
DEFAULT_HOME = Path.home() / ".cache" / "kasf" / "pytriton"
PYTRITON_PIN = "nvidia-pytriton==0.7.0"


class TritonServerUnavailable(RuntimeError):
    """No runnable tritonserver here; the message says what is missing and how to get it."""


def triton_home(home: str | os.PathLike | None = None) -> Path:
    """Folder of the pip --target install: the argument, else $KASF_TRITON_HOME, else ~/.cache/kasf/pytriton."""
    return Path(home or os.environ.get(ENV_HOME) or DEFAULT_HOME)


def check_install(home: str | os.PathLike | None = None) -> Path:
    """The server binary, after checking everything it needs to serve a Python-backend model here."""
    root = triton_home(home)
    binary = root / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    fetch = f"pip install --no-deps --target {root} {PYTRITON_PIN} (or set {ENV_HOME})"
    if not binary.exists():
        raise TritonServerUnavailable(f"no tritonserver in {root}: {fetch}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = binary.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonServerUnavailable(f"{root} has no Python backend stub for Python {version}")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise TritonServerUnavailable(f"the Python backend stub embeds libpython{version}, but {sys.executable} "
                                      "was built without a shared libpython (use a Python built with "
                                      "--enable-shared, e.g. pyenv's or the distribution's)")
    return binary


def python_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this interpreter first on PATH and its libpython first on LD_LIBRARY_PATH (see module doc)."""
    def prepend(var: str, folder: str) -> None:
        env[var] = os.pathsep.join(p for p in (folder, env.get(var, "")) if p)

    prepend("LD_LIBRARY_PATH", str(sysconfig.get_config_var("LIBDIR")))
    prepend("PATH", str(Path(sys.executable).parent))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalTritonServer:
    """``tritonserver`` on free loopback ports over one model repository; a context manager that always stops it.

    The Python backend folder (backend library, utilities and the stub of this Python) is assembled in a
    temporary folder, so the install itself is never written to.
    """

    def __init__(self, repository: str | os.PathLike, home: str | os.PathLike | None = None,
                 log_path: str | os.PathLike | None = None) -> None:
        self.binary = check_install(home)
        self.repository = Path(repository)
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._workdir: tempfile.TemporaryDirectory | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def model_url(self, model: str, protocol: str = "grpc") -> str:
        """The address ``Lifter.load`` takes: triton://HOST:PORT/MODEL (gRPC) or triton+http://..."""
        if protocol == "grpc":
            return f"triton://{self.grpc_url}/{model}"
        return f"triton+http://{self.http_url}/{model}"

    def _backend_dir(self, workdir: Path) -> Path:
        tree = self.binary.parents[1]
        python = workdir / "backends" / "python"
        python.mkdir(parents=True)
        for item in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(tree / "backends" / "python" / item, python / item)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(tree / "python_backend_stubs" / version / "triton_python_backend_stub", python)
        return workdir / "backends"

    def start(self, timeout_s: float = 60.0) -> "LocalTritonServer":
        """Start the server and return once every model is ready; raises with the log's tail if it never is."""
        self._workdir = tempfile.TemporaryDirectory(prefix="kasf-triton-")
        workdir = Path(self._workdir.name)
        self.log_path = self.log_path or workdir / "tritonserver.log"
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        env = python_environment(dict(os.environ))
        libs = self.binary.parents[3] / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join((env["LD_LIBRARY_PATH"], str(libs)))
        cmd = [str(self.binary), "--model-repository", str(self.repository.resolve()),
               "--backend-directory", str(self._backend_dir(workdir)), "--http-address", "127.0.0.1",
               "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--allow-metrics", "true", "--allow-gpu-metrics", "false",
               "--exit-on-error", "true", "--strict-readiness", "true"]
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"tritonserver exited with status {self.process.returncode}:\n{tail}")
            if self._ready():
                return self
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"tritonserver was not ready after {timeout_s:.0f} s:\n{tail}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> dict[str, float]:
        """Prometheus counters summed over labels, e.g. ``nv_inference_exec_count``, ``nv_inference_request_success``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (and its Python stubs): a crash, as a client would see one."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server and its stubs (SIGTERM, then SIGKILL after ``grace_s``); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            try:  # stubs left behind by a killed server
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._workdir is not None and self.log_path is not None and self.log_path.parent == Path(self._workdir.name):
            self.log_path = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
