"""How setup.py builds the native operator (kasf._C): decided here so setup.py only asks for ext_modules/cmdclass.

Why a separate module: the build needs torch at build time and several decisions (compiler? CUDA toolkit and a
CUDA torch? opted out?). Keeping them here leaves setup.py a plain declaration that other changes can share.

Environment variables read at build time:
  KASF_NO_EXT=1        build no extension (the package then runs the pure-PyTorch path)
  KASF_NO_CUDA_EXT=1   build only the CPU kernels even where CUDA could be built
  KASF_REQUIRE_EXT=1   fail the install instead of falling back when the extension cannot be built (CI sets it)
  CUDA_HOME            the CUDA toolkit (found from nvcc otherwise, see cuda_home())
  TORCH_CUDA_ARCH_LIST the GPU architectures to compile for (torch's variable; default: DEFAULT_CUDA_ARCHS when no
                       GPU is visible at build time, else the visible GPU's)

The CUDA sources are compiled with torch's own nvcc flags (torch.utils.cpp_extension.COMMON_NVCC_FLAGS, among them
-D__CUDA_NO_HALF_OPERATORS__ and -D__CUDA_NO_HALF_CONVERSIONS__), as every user's install compiles them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "cpp_ext"
BUILD_INFO = "_build_info.json"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


# Jetson Orin (8.7), A100 (8.0), Ada (8.9), H100 (9.0), with PTX of the newest for GPUs after it.
DEFAULT_CUDA_ARCHS = "8.0;8.7;8.9;9.0+PTX"


def cuda_home(torch_guess: str | None) -> str | None:
    """The CUDA toolkit root: $CUDA_HOME, else torch's guess if it holds the runtime library, else /usr/local/cuda.

    Why: torch guesses the root as the folder above the first `nvcc` on PATH. Where that nvcc is a wrapper script
    (/usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc) the guess is /usr/local, which has no libcudart,
    and the link fails after minutes of compiling.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return torch_guess
    candidates = [torch_guess, "/usr/local/cuda"] if torch_guess else ["/usr/local/cuda"]
    for root in candidates:
        if root and any((Path(root) / lib / "libcudart.so").exists() for lib in ("lib64", "lib")):
            return root
    return torch_guess


def plan() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(ext_modules, cmdclass, info): what to build, and a record of the decision for kasf-info --env."""
    info: dict[str, Any] = {"built": False, "cuda": False, "reason": ""}
    if _truthy("KASF_NO_EXT"):
        info["reason"] = "KASF_NO_EXT was set at build time"
        return [], {"build_py": _info_build_py(info)}, info
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as err:
        info["reason"] = (f"torch was not importable at build time ({err}); install torch first and install kasf "
                          "with pip's --no-build-isolation")
        _fail_if_required(info["reason"])
        return [], {"build_py": _info_build_py(info)}, info
    if _compiler() is None:
        info["reason"] = "no C++ compiler found at build time (set CXX or install g++)"
        _fail_if_required(info["reason"])
        return [], {"build_py": _info_build_py(info)}, info
    # The transformer blocks' CPU kernels come once per instruction set (each file sets its own target and is a
    # stub where the compiler cannot target it); cpu_blocks.cpp picks one at run time.
    sources = [str(SOURCES.relative_to(ROOT) / name) for name in (
        "anatomy_op.cpp", "cpu_blocks.cpp", "cpu_blocks_avx512.cpp", "cpu_blocks_avx2.cpp", "cpu_blocks_generic.cpp",
        "cpu_blocks_bf16.cpp")]
    toolkit = cuda_home(cpp_extension.CUDA_HOME)
    want_cuda = not _truthy("KASF_NO_CUDA_EXT")
    use_cuda = want_cuda and torch.version.cuda is not None and toolkit is not None
    cxx_flags = ["-O3", "-std=c++20"]
    # at::parallel_for is a header template over `#pragma omp parallel`: without -fopenmp the operators run on one
    # thread whatever torch.set_num_threads says. The library resolves to the libgomp torch itself loaded (same
    # soname), so there is one OpenMP runtime in the process.
    link_flags: list[str] = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if use_cuda:
        cpp_extension.CUDA_HOME = toolkit  # read by CUDAExtension (library dirs) and BuildExtension (nvcc path)
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS  # no GPU to ask: build for the usual ones
        sources += [str(SOURCES.relative_to(ROOT) / name) for name in ("anatomy_cuda.cu", "anatomy_cuda_kernels.cu")]
        ext = cpp_extension.CUDAExtension(
            "kasf._C", sources, include_dirs=[str(SOURCES)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
            extra_link_args=link_flags)
        info["reason"] = (f"C++ CPU and CUDA kernels (torch CUDA {torch.version.cuda}, toolkit at {toolkit}, "
                          f"architectures {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')})")
    else:
        ext = cpp_extension.CppExtension("kasf._C", sources, include_dirs=[str(SOURCES)],
                                         extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
        why = ("KASF_NO_CUDA_EXT was set" if not want_cuda else
               "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) found")
        info["reason"] = f"C++ CPU kernels only ({why})"
    # "built" turns true only when build_ext has finished: an interrupted or failed build must not read as built.
    info.update(planned=info["reason"], cuda=use_cuda, torch=torch.__version__,
                reason=f"the build of {info['reason']} was started but did not finish")
    return [ext], {"build_ext": _build_ext(cpp_extension.BuildExtension, info), "build_py": _info_build_py(info)}, info


def _fail_if_required(reason: str) -> None:
    if _truthy("KASF_REQUIRE_EXT"):
        raise SystemExit(f"kasf: KASF_REQUIRE_EXT is set but the native extension cannot be built: {reason}")


def _write_info(directory: Path, info: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")


def _copy_sources(target: Path) -> None:
    """Ship the kernel and TensorRT plugin sources inside a (non-editable) installed kasf (kasf/cpp_ext_src):
    kasf.anatomy_op.tensorrt_plugin compiles the plugin on the GPU machine that runs TensorRT, from these files."""
    for pattern in ("*.h", "*.cuh", "*.cu", "*.cpp", "tensorrt/*.cpp", "tensorrt/CMakeLists.txt"):
        for source in SOURCES.glob(pattern):
            destination = target / source.relative_to(SOURCES)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


def _info_build_py(info: dict[str, Any]) -> type:
    """build_py that also writes kasf/_build_info.json, so an installed kasf knows why it has (no) extension."""
    from setuptools.command.build_py import build_py

    class InfoBuildPy(build_py):
        def run(self) -> None:
            super().run()
            _write_info(Path(self.build_lib) / "kasf", info)
            _write_info(ROOT / "kasf", info)  # editable installs read the source tree
            _copy_sources(Path(self.build_lib) / "kasf" / "cpp_ext_src")

    return InfoBuildPy


def _build_ext(base: type, info: dict[str, Any]) -> type:
    """torch's BuildExtension that, unless KASF_REQUIRE_EXT is set, turns a failed compile into the pure path."""

    class KasfBuildExt(base):  # type: ignore[misc, valid-type]
        def run(self) -> None:
            try:
                super().run()
                info.update(built=True, reason=info.get("planned", "built"))
            except Exception as err:  # a failed compile must not make the whole package uninstallable
                if _truthy("KASF_REQUIRE_EXT"):
                    raise
                info.update(built=False, cuda=False, reason=f"the extension failed to compile: {err}")
                print(f"kasf: WARNING: {info['reason']}; kasf will use the pure-PyTorch path", file=sys.stderr)
            target = Path(self.get_ext_fullpath("kasf._C")).parent
            _write_info(target, info)
            _write_info(ROOT / "kasf", info)

    return KasfBuildExt
