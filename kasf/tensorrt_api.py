"""TensorRT and its CUDA companion (pycuda), optional GPU-only dependencies: what the engine builder and the runtime
share.

Why its own module: kasf-export builds engines and the Lifter runs them; both need the same import with the same
install hint, the same CUDA context, and the same reading of an optimisation profile, and neither should reach
into the other for it. Everything here that needs no GPU is a plain function, tested on the CPU with fakes.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from typing import Any, Callable

INSTALL_HINT = ("TensorRT is not installed: pip install 'kasf[gpu]' (tensorrt, pycuda, onnxruntime-gpu) on a "
                "machine with an NVIDIA GPU and driver")
PYCUDA_HINT = "pycuda is not installed: pip install pycuda (it builds against the CUDA toolkit)"


class TensorRTMissing(RuntimeError):
    """The tensorrt Python package is not installed here."""


class CudaUnavailable(RuntimeError):
    """pycuda is missing, or CUDA cannot start here (no driver, no GPU); the message says which."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTMissing` with the install command."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    return trt


def tensorrt_major(trt: Any) -> int:
    """The major version (8, 10, 11...): the API generation, which decides how networks are built."""
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class CudaSession:
    """pycuda's driver module with the GPU's primary context, the one the CUDA runtime (PyTorch, TensorRT) uses."""

    driver: Any  # pycuda.driver
    context: Any  # the retained primary context of device 0
    gpu_name: str
    compute_capability: tuple[int, int]

    def activate(self) -> "_Pushed":
        """``with session.activate():`` makes the context current on this thread (pycuda's calls need it there)."""
        return _Pushed(self)


class _Pushed:
    def __init__(self, session: CudaSession) -> None:
        self._session = session

    def __enter__(self) -> CudaSession:
        self._session.context.push()
        return self._session

    def __exit__(self, *exc: object) -> None:
        self._session.driver.Context.pop()


_SESSION: CudaSession | None = None


def cuda_session(import_module: Callable[[str], Any] = importlib.import_module) -> CudaSession:
    """The process's one :class:`CudaSession`, started on first use.

    Why the primary context: ``pycuda.autoinit`` makes a context of its own, so buffers it allocates are not those
    of PyTorch or of TensorRT's runtime in the same process; ``pycuda.autoprimaryctx`` retains and pushes the
    primary context instead, shared with them. Starting CUDA fails with pycuda's own errors (``pycuda.driver.Error``
    when cuInit finds no driver or GPU, ``RuntimeError`` when no device is found): each becomes one
    :class:`CudaUnavailable` line. ``import_module`` is a seam for tests.
    """
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    try:
        driver = import_module("pycuda.driver")
    except ImportError as err:
        if importlib.util.find_spec("pycuda") is None:
            raise CudaUnavailable(PYCUDA_HINT) from None
        raise CudaUnavailable(f"pycuda cannot load the CUDA driver library ({err}); is the NVIDIA driver "
                              "installed?") from None
    try:
        primary = import_module("pycuda.autoprimaryctx")
    except ImportError:
        raise CudaUnavailable("this pycuda has no autoprimaryctx (pycuda >= 2021.1 has it): "
                              "pip install -U pycuda") from None
    except Exception as err:  # pycuda.driver.Error, RuntimeError: CUDA itself did not start
        raise CudaUnavailable(f"CUDA cannot start here ({type(err).__name__}: {err}); a TensorRT engine needs an "
                              "NVIDIA GPU and driver") from None
    device = primary.context.get_device()
    _SESSION = CudaSession(driver=driver, context=primary.context, gpu_name=str(device.name()),
                           compute_capability=tuple(device.compute_capability()))
    return _SESSION


def cuda_arch(compute_capability: tuple[int, int]) -> str:
    """(8, 7) -> '87', the spelling of CMAKE_CUDA_ARCHITECTURES and of nvcc's sm_XX."""
    return f"{compute_capability[0]}{compute_capability[1]}"


def profile_batch_range(profile_shapes: Any) -> tuple[int, int, int]:
    """(min, opt, max) batch of an input from ``engine.get_tensor_profile_shape(name, 0)`` ([min, opt, max] shapes)."""
    low, opt, high = (int(shape[0]) for shape in profile_shapes)
    return low, opt, high


def plan_batches(count: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """Cut ``count`` windows into runs an engine whose profile allows batches ``low..high`` accepts.

    Returns ``(start, stop, size)`` per run: windows[start:stop] go in a batch of ``size`` >= stop - start; the
    difference is padding (copies of the last window, whose outputs are dropped). Runs are ``high`` long; only the
    last may be shorter, padded up to ``low`` when it falls below it (a fixed-batch engine has low == high).
    """
    if not 1 <= low <= high:
        raise ValueError(f"an optimisation profile needs 1 <= min <= max, got min {low}, max {high}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    plan = []
    for start in range(0, count, high):
        stop = min(start + high, count)
        plan.append((start, stop, max(stop - start, low)))
    return plan


def timing_cache_name(gpu_name: str, compute_capability: tuple[int, int], tensorrt_version: str) -> str:
    """File name of the timing cache for one (GPU, compute capability, TensorRT version).

    Why keyed: TensorRT refuses a cache made on another GPU or version (``set_timing_cache`` returns False), so a
    single shared file would be rebuilt and overwritten by each machine in turn.
    """
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    version = re.sub(r"[^0-9.]+", "", tensorrt_version) or "unknown"
    return f"{gpu}-sm{cuda_arch(compute_capability)}-trt{version}.timing.cache"
