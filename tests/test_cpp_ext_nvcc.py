"""The CUDA and TensorRT sources compile (not run) with nvcc where the toolkit is installed, as on the dev machines.

Why: CI has nvcc but no GPU, and a CPU build of torch; without this check the .cu files would only meet a compiler
on a GPU machine. The CPU torch wheel lacks one generated header of c10/cuda (cuda_cmake_macros.h, which only
carries build-system macros), so the check supplies an empty one in its temporary directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kasf.anatomy_op import tensorrt_plugin

CPP_EXT = Path(__file__).resolve().parents[1] / "cpp_ext"
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit) to compile the CUDA sources")


def _nvcc(source: Path, out: Path, extra: list[str]) -> subprocess.Popen:
    command = [str(NVCC), "-c", "-std=c++20", "-O1", "-arch=sm_80", f"-I{CPP_EXT}", *extra, str(source), "-o",
               str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, what: str) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"nvcc failed on {what}:\n{output[-6000:]}"


def test_cuda_sources_compile(tmp_path: Path) -> None:
    """The torch-free kernels and the PyTorch CUDA glue, compiled side by side (the machine has two cores)."""
    torch = pytest.importorskip("torch")
    from torch.utils.cpp_extension import include_paths

    shim = tmp_path / "shim"
    header = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    header.parent.mkdir(parents=True)
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        header.write_text("// empty: the CPU build of torch does not ship this generated header\n")
    import sysconfig

    torch_includes = [f"-I{p}" for p in include_paths()] + [f"-I{shim}", f"-I{sysconfig.get_paths()['include']}",
                                                            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"]
    kernels = _nvcc(CPP_EXT / "anatomy_cuda_kernels.cu", tmp_path / "kernels.o", [])
    glue = _nvcc(CPP_EXT / "anatomy_cuda.cu", tmp_path / "glue.o", torch_includes)
    _finish(kernels, "anatomy_cuda_kernels.cu")
    _finish(glue, "anatomy_cuda.cu")
    assert (tmp_path / "kernels.o").stat().st_size > 0 and (tmp_path / "glue.o").stat().st_size > 0


def test_tensorrt_plugin_compiles(tmp_path: Path) -> None:
    include = tensorrt_plugin.find_tensorrt_include()
    if include is None:
        pytest.skip("needs TensorRT headers (NvInferRuntime.h; set TENSORRT_ROOT or TENSORRT_INCLUDE_DIR) to compile "
                    "cpp_ext/tensorrt/anatomy_plugin.cpp")
    _finish(_nvcc(CPP_EXT / "tensorrt" / "anatomy_plugin.cpp", tmp_path / "plugin.o", [f"-I{include}"]),
            "tensorrt/anatomy_plugin.cpp")
