"""setup.py's decision about the native extension (cpp_ext/native_build.py): built, skipped, or a clear failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cpp_ext"))
import native_build  # noqa: E402


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
    assert [m.name for m in modules] == ["kasf._C"] and info["built"] and not info["cuda"]
    assert all(not s.endswith(".cu") for s in modules[0].sources)
    assert "torch is a CPU build" in info["reason"] and "build_ext" in cmdclass
