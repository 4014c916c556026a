"""setup.py's decision about the native extension (cpp_ext/native_build.py): built, skipped, or a clear failure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load_native_build():
    """cpp_ext/native_build.py by path: putting cpp_ext/ on sys.path would make its tensorrt/ folder importable as a
    namespace package named ``tensorrt`` for the rest of the session (so "is TensorRT installed?" would say yes)."""
    spec = importlib.util.spec_from_file_location(
        "native_build", Path(__file__).resolve().parents[1] / "cpp_ext" / "native_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native_build = _load_native_build()


def test_env_switch_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KASF_NO_EXT", "1")
    modules, cmdclass, info = native_build.plan()
    assert modules == [] and info == {"built": False, "cuda": False, "reason": "KASF_NO_EXT was set at build time"}
    assert "build_py" in cmdclass  # still records the reason for kasf-info --env


def test_no_compiler_still_installs_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KASF_NO_EXT", raising=False)
    monkeypatch.delenv("KASF_REQUIRE_EXT", raising=False)
    monkeypatch.setattr(native_build, "_compiler", lambda: None)
    modules, _, info = native_build.plan()
    assert modules == [] and not info["built"] and "no C++ compiler" in info["reason"]
    monkeypatch.setenv("KASF_REQUIRE_EXT", "1")
    with pytest.raises(SystemExit, match="KASF_REQUIRE_EXT is set but the native extension cannot be built"):
        native_build.plan()


def test_cpu_torch_builds_cpu_kernels_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("KASF_NO_EXT", raising=False)
    if native_build._compiler() is None:
        pytest.skip("needs a C++ compiler")
    monkeypatch.setattr(torch.version, "cuda", None)
    modules, cmdclass, info = native_build.plan()
    assert [m.name for m in modules] == ["kasf._C"] and not info["cuda"]
    assert all(not s.endswith(".cu") for s in modules[0].sources)
    assert "torch is a CPU build" in info["planned"] and "build_ext" in cmdclass
    # Planned is not built: until build_ext finishes, the record says so (a failed GPU install must not claim it).
    assert not info["built"] and "did not finish" in info["reason"]


def test_cuda_home_skips_a_wrapper_folder_without_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torch guesses CUDA_HOME as the folder above `nvcc`; a wrapper in /usr/local/bin gives /usr/local (no cudart)."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    toolkit = tmp_path / "cuda"
    (toolkit / "lib64").mkdir(parents=True)
    (toolkit / "lib64" / "libcudart.so").write_bytes(b"")
    assert native_build.cuda_home(str(toolkit)) == str(toolkit)
    wrapper_root = tmp_path / "usr-local"
    wrapper_root.mkdir()
    found = native_build.cuda_home(str(wrapper_root))
    assert found == ("/usr/local/cuda" if Path("/usr/local/cuda/lib64/libcudart.so").exists() else str(wrapper_root))
    monkeypatch.setenv("CUDA_HOME", str(wrapper_root))  # the user's word wins
    assert native_build.cuda_home(str(wrapper_root)) == str(wrapper_root)
