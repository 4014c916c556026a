"""TensorRT, an optional GPU-only dependency: importing it with the install command, and its API generation.

Why its own module: kasf-export builds engines and the Lifter runs them; both need the same import and the same
hint when TensorRT is missing, and neither should reach into the other for it.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = ("TensorRT is not installed: pip install 'kasf[gpu]' (tensorrt, pycuda, onnxruntime-gpu) on a "
                "machine with an NVIDIA GPU and driver")


class TensorRTMissing(RuntimeError):
    """The tensorrt Python package is not installed here."""


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
