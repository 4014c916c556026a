"""The TensorRT plugin library as users build it (cpp_ext/tensorrt/CMakeLists.txt), loaded and questioned without
TensorRT or a GPU: it must load with every symbol resolved and answer the parser's and builder's questions the way
the `--anatomy-op plugin` ONNX node expects.

Needs cmake, nvcc, g++ and TensorRT's headers ($TENSORRT_INCLUDE_DIR, else the copy in ../shared); skips naming
whichever is missing. The build compiles the kernels for one architecture to stay quick; the architecture list is
a CMake parameter and does not change the host code that is tested here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TENSORRT_INCLUDE

PROBE = Path(__file__).resolve().parent / "native" / "tensorrt_plugin_probe.cpp"
CUDA_INCLUDE = Path("/usr/local/cuda/include")
# What the exported ONNX node carries (kasf/anatomy_op/onnx_modes.py): TensorRT's parser looks a plugin up by op_type,
# version "1" and the empty namespace unless the node says otherwise.
NODE_OP_TYPE, NODE_PLUGIN_VERSION, NODE_PLUGIN_NAMESPACE = "AnatomyFeatures", "1", ""


def _missing() -> str | None:
    lacks = [tool for tool in ("cmake", "nvcc", "g++") if shutil.which(tool) is None]
    if not (TENSORRT_INCLUDE / "NvInferRuntime.h").exists():
        lacks.append(f"TensorRT headers (no NvInferRuntime.h in {TENSORRT_INCLUDE}; set TENSORRT_INCLUDE_DIR)")
    if not (CUDA_INCLUDE / "cuda_runtime_api.h").exists():
        lacks.append(f"the CUDA toolkit's headers in {CUDA_INCLUDE}")
    return ", ".join(lacks) or None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"needs {_missing()} to build the TensorRT plugin")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{what} failed:\n{' '.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built the way users build it: kasf's build entry point, which runs the CMake file."""
    from kasf.anatomy_op.tensorrt_plugin import build_plugin

    library = build_plugin(TENSORRT_INCLUDE, "87", output=tmp_path_factory.mktemp("trt-plugin"), jobs=2)
    assert library.name == "libkasf_tensorrt_plugin.so" and library.exists()
    return library


def test_build_is_keyed_and_not_repeated(plugin_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kasf.anatomy_op import tensorrt_plugin

    info = tensorrt_plugin.build_info(plugin_library)
    assert info["tensorrt_version"] == tensorrt_plugin.header_tensorrt_version(TENSORRT_INCLUDE)
    assert info["archs"] == ["87"] and info["source_sha256"] == tensorrt_plugin.source_hash()
    assert info["key"] == tensorrt_plugin.build_key(info["source_sha256"], info["tensorrt_version"], ["87"])
    before = plugin_library.stat().st_mtime_ns
    # The command line, on a library already built: it prints the path and runs no compiler.
    result = subprocess.run([sys.executable, "-m", "kasf.anatomy_op.tensorrt_plugin", "build", "--tensorrt-include",
                             str(TENSORRT_INCLUDE), "--arch", "8.7", "-o", str(plugin_library.parent)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": ""})
    assert result.returncode == 0 and result.stdout.strip() == str(plugin_library), result.stderr
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("rebuilt an up-to-date library"))
    assert tensorrt_plugin.build_plugin(TENSORRT_INCLUDE, "87", output=plugin_library.parent) == plugin_library
    assert plugin_library.stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def probe_answers(plugin_library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    probe = tmp_path_factory.mktemp("probe") / "probe"
    _run(["g++", "-std=c++17", "-O0", "-w", "-isystem", str(TENSORRT_INCLUDE), "-isystem", str(CUDA_INCLUDE),
          str(PROBE), "-ldl", "-o", str(probe)], "compiling the probe")
    result = subprocess.run([str(probe), str(plugin_library)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"probe failed:\n{result.stdout}{result.stderr}"
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_library_needs_no_tensorrt_library(plugin_library: Path) -> None:
    """Registration goes through the loader's registry (loadLibrary), so nothing links libnvinfer or libcudart."""
    needed = subprocess.run(["readelf", "-d", str(plugin_library)], capture_output=True, text=True).stdout
    assert "libnvinfer" not in needed and "libcudart" not in needed
    exported = subprocess.run(["nm", "-D", "--defined-only", str(plugin_library)], capture_output=True,
                              text=True).stdout
    assert " T getCreators" in exported and " T setLoggerFinder" in exported


def test_loads_and_exposes_the_creator_the_onnx_node_names(probe_answers: dict[str, str]) -> None:
    assert probe_answers["dlopen"] == "ok"
    assert probe_answers["has_getCreators"] == "1" and probe_answers["has_setLoggerFinder"] == "1"
    assert probe_answers["creators"] == "1"
    assert probe_answers["creator_interface"] == "PLUGIN CREATOR_V3ONE 1.0"
    assert probe_answers["name"] == NODE_OP_TYPE
    assert probe_answers["version"] == NODE_PLUGIN_VERSION
    assert probe_answers["namespace"] == f"[{NODE_PLUGIN_NAMESPACE}]"
    assert probe_answers["plugin_name"] == f"{NODE_OP_TYPE} {NODE_PLUGIN_VERSION} [{NODE_PLUGIN_NAMESPACE}]"
    # The node has no attributes, so the creator must ask for and serialise no fields.
    assert probe_answers["creator_fields"] == "0" and probe_answers["serialised_fields"] == "0"
    assert probe_answers["created"] == "1" and probe_answers["clone"] == "1"


def test_output_rules_match_the_onnx_graph(probe_answers: dict[str, str]) -> None:
    """(B, T, 17, C) -> (B, T, 17, 3) of the input's type, float32 or float16, linear layout only."""
    assert probe_answers["outputs"] == "1"
    assert probe_answers["output_type.float32"] == "float32 0"
    assert probe_answers["output_type.float16"] == "float16 0"
    assert probe_answers["format.float32"] == "1" and probe_answers["format.float16"] == "1"
    assert probe_answers["format.int32"] == "0"
    assert probe_answers["format.float32_to_float16"] == "0"
    assert probe_answers["format.float32_chw32"] == "0"
    assert probe_answers["output_shape"] == "0 rank 4 leading_passed_through 1 last_is_3 1"
    assert probe_answers["output_shape_rank1"] != "0"


def test_shape_checks_refuse_what_the_kernel_cannot_run(probe_answers: dict[str, str]) -> None:
    assert probe_answers["configure.17x3"] == "0"
    assert probe_answers["configure.16x3"] != "0"  # not Human3.6M-17
    assert probe_answers["configure.17x1"] != "0"  # no y channel
    assert probe_answers["shape_change.4x27x17x3"] == "0"
    assert probe_answers["shape_change.4x27x16x3"] != "0"


def test_the_exported_node_is_what_the_library_serves() -> None:
    """The constants above are the exporter's: if the node's name changes, this file must change with it."""
    from kasf.anatomy_op import onnx_modes

    assert onnx_modes.NODE == NODE_OP_TYPE
