"""kasf.anatomy_op.tensorrt_plugin on machines without TensorRT: every missing piece is named, nothing half-registers."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

from kasf.anatomy_op import tensorrt_plugin


def test_build_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt_plugin, "find_tensorrt_include", lambda: None)
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="TensorRT's headers .*--tensorrt-include"):
        tensorrt_plugin.build_plugin()


def test_register_with_a_missing_library_is_clear(tmp_path: Path) -> None:
    registry_calls: list[int] = []
    fake_trt = types.SimpleNamespace(__version__="10.16.0", get_plugin_registry=lambda: registry_calls.append(1))
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="library not found"):
        tensorrt_plugin.register_plugin(fake_trt, tmp_path / "libnope.so")
    assert not registry_calls


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_load_without_tensorrt_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="pip install tensorrt"):
        tensorrt_plugin.load_plugin(tmp_path / tensorrt_plugin.LIBRARY_NAME)


def test_plugin_sources_are_found() -> None:
    for name in tensorrt_plugin.SOURCE_FILES:
        assert (tensorrt_plugin.SOURCES / name).exists(), name
