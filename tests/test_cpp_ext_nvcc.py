"""The CUDA sources compile (not run) with nvcc and torch's own nvcc flags, where the toolkit is installed.

Why: the main test venv has a CPU build of torch, so its install compiles no .cu file. This check compiles them
with exactly the flags torch's CUDAExtension adds on a GPU box (COMMON_NVCC_FLAGS: no implicit __half operators or
conversions), for Jetson Orin's architecture. The full build against the CUDA build of torch runs in .ci/run's
CUDA stage. The CPU torch wheel lacks one generated header of c10/cuda (cuda_cmake_macros.h, which only carries
build-system macros), so the check supplies an empty one in its temporary directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


CPP_EXT = Path(__file__).resolve().parents[1] / "cpp_ext"
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit) to compile the CUDA sources")


def _nvcc(source: Path, out: Path, extra: list[str]) -> subprocess.Popen:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    command = [str(NVCC), "-c", "-std=c++20", "-O1", "-arch=sm_87", *COMMON_NVCC_FLAGS, f"-I{CPP_EXT}", *extra,
               str(source), "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, what: str) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"nvcc failed on {what}:\n{output[-6000:]}"


def test_torch_nvcc_flags_forbid_implicit_half_arithmetic() -> None:
    """The premise of this file: were torch to drop these flags, the check below would no longer prove anything."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    assert {"-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__"} <= set(COMMON_NVCC_FLAGS)


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
