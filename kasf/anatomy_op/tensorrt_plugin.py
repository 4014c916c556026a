"""Build and register the TensorRT plugin of the kasf::AnatomyFeatures node (cpp_ext/tensorrt/anatomy_plugin.cpp).

Why at run time rather than in setup.py: TensorRT is an optional, GPU-only dependency whose headers and libraries
live in many places (a system install, a tarball, the pip wheels), usually not where the Python package is built.
:func:`load_plugin` compiles the plugin library with nvcc on first use (cached), loads it into the process and
registers its creator with TensorRT's plugin registry; call it before parsing an ONNX model exported with
``--anatomy-op plugin`` or deserialising an engine built from one.

Environment: ``TENSORRT_ROOT`` (a TensorRT install with include/ and lib/), or ``TENSORRT_INCLUDE_DIR`` and
``TENSORRT_LIB_DIR``; ``KASF_CACHE`` (default ~/.cache/kasf) for the built library.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

PLUGIN_NAME = "AnatomyFeatures"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
# The repository's cpp_ext/ (editable install, checkout), else the copy that setup.py puts in an installed kasf.
_PACKAGE = Path(__file__).resolve().parents[1]  # the kasf folder
_REPO_SOURCES = _PACKAGE.parent / "cpp_ext"
SOURCES = _REPO_SOURCES if (_REPO_SOURCES / "tensorrt").is_dir() else _PACKAGE / "cpp_ext_src"
_loaded: dict[str, ctypes.CDLL] = {}


class TensorRTPluginError(RuntimeError):
    """The TensorRT plugin cannot be built or registered here (the message says what is missing)."""


def find_tensorrt_include() -> Path | None:
    """The directory holding NvInferRuntime.h, or None."""
    candidates = [os.environ.get("TENSORRT_INCLUDE_DIR", "")]
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(os.path.join(os.environ["TENSORRT_ROOT"], "include"))
    candidates += ["/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                   "/usr/local/TensorRT/include", "/opt/tensorrt/include"]
    for directory in candidates:
        if directory and (Path(directory) / "NvInferRuntime.h").exists():
            return Path(directory)
    return None


def find_tensorrt_lib() -> Path | None:
    """The directory holding libnvinfer.so (system install, TENSORRT_ROOT, or the tensorrt_libs pip wheel)."""
    candidates = [os.environ.get("TENSORRT_LIB_DIR", "")]
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(os.path.join(os.environ["TENSORRT_ROOT"], "lib"))
    try:
        import tensorrt_libs  # the pip wheels ship the libraries (no headers) here

        candidates.append(str(Path(tensorrt_libs.__file__).parent))
    except ImportError:
        pass
    candidates += ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/TensorRT/lib"]
    for directory in candidates:
        if directory and any(Path(directory).glob("libnvinfer.so*")):
            return Path(directory)
    return None


def missing() -> str | None:
    """What this machine lacks to build the plugin, or None when nvcc, headers and libnvinfer are all there."""
    lacks = []
    if shutil.which("nvcc") is None:
        lacks.append("nvcc (the CUDA toolkit)")
    if find_tensorrt_include() is None:
        lacks.append("TensorRT headers (NvInferRuntime.h; set TENSORRT_ROOT or TENSORRT_INCLUDE_DIR)")
    if find_tensorrt_lib() is None:
        lacks.append("libnvinfer.so (set TENSORRT_ROOT or TENSORRT_LIB_DIR, or pip install tensorrt)")
    return "; ".join(lacks) or None


def build_plugin(output: Path | None = None, arch: str | None = None) -> Path:
    """Compile cpp_ext/tensorrt/anatomy_plugin.cpp and the CUDA kernels into a shared library; returns its path."""
    lacks = missing()
    if lacks:
        raise TensorRTPluginError(f"cannot build the TensorRT AnatomyFeatures plugin: missing {lacks}")
    include, lib = find_tensorrt_include(), find_tensorrt_lib()
    cache = Path(os.environ.get("KASF_CACHE", Path.home() / ".cache" / "kasf"))
    output = output or cache / "tensorrt" / "libkasf_tensorrt_plugin.so"
    output.parent.mkdir(parents=True, exist_ok=True)
    nvinfer = sorted(lib.glob("libnvinfer.so*"), key=lambda p: len(p.name))[0]  # type: ignore[union-attr]
    command = ["nvcc", "-shared", "-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden",
               f"-I{include}", f"-I{SOURCES}",
               str(SOURCES / "tensorrt" / "anatomy_plugin.cpp"), str(SOURCES / "anatomy_cuda_kernels.cu"),
               str(nvinfer), f"-Xlinker=-rpath,{lib}", "-o", str(output)]
    if arch:
        command[1:1] = [f"-arch={arch}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise TensorRTPluginError(f"nvcc failed to build the TensorRT plugin:\n{' '.join(command)}\n{result.stderr}")
    return output


def load_plugin(path: str | Path | None = None) -> Path:
    """Load (building if needed) the plugin library and register AnatomyFeatures v1 with TensorRT's registry.

    Imports tensorrt first so that this library binds to the same libnvinfer (and so the same registry) as the
    Python bindings that will build or deserialise the engine.
    """
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTPluginError("the TensorRT plugin needs the tensorrt Python package: pip install tensorrt "
                                  "(and a CUDA GPU)") from err
    return register_plugin(trt, path)


def register_plugin(trt: Any, library: str | Path | None = None) -> Path:
    """Register AnatomyFeatures v1 with the registry of an imported ``tensorrt`` module; returns the library used.

    ``library``: a prebuilt plugin library; None builds (or reuses the cached build of) cpp_ext/tensorrt. Safe to
    call more than once.
    """
    path = Path(library) if library else build_plugin()
    key = str(path.resolve())
    if key not in _loaded:
        if not path.exists():
            raise TensorRTPluginError(f"TensorRT plugin library not found: {path}")
        handle = ctypes.CDLL(key, mode=ctypes.RTLD_GLOBAL)
        handle.kasf_register_tensorrt_plugins.restype = ctypes.c_int
        if handle.kasf_register_tensorrt_plugins() != 1:
            raise TensorRTPluginError(f"{path}: TensorRT refused to register the {PLUGIN_NAME} creator")
        _loaded[key] = handle
    if trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise TensorRTPluginError(f"{PLUGIN_NAME} v{PLUGIN_VERSION} is not in the tensorrt module's plugin registry "
                                  f"after loading {path}: the library bound to another libnvinfer")
    return path
