"""Both ONNX modes of the anatomy operator, run in ONNX Runtime (CPU) against PyTorch; TensorRT where present."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kasf.anatomy_op import native
from kasf.anatomy_op.onnx_modes import DOMAIN, DOMAIN_VERSION, NODE, anatomy_export, dynamo_translation_table, ort_session, \
    plugin_nodes
from tests.conftest import require_native_op

onnx = pytest.importorskip("onnx", reason="needs onnx (pip install kasf[onnx])")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")


def _small_model() -> torch.nn.Module:
    from kasf.model import KASportsFormer

    torch.manual_seed(0)
    return KASportsFormer(n_layers=1, dim_feat=16, dim_rep=32, num_heads=2, n_frames=9).eval()


def _export(model: torch.nn.Module, path: Path, mode: str, dynamo: bool) -> onnx.ModelProto:
    x = torch.randn(2, 9, 17, 3)
    with anatomy_export(mode), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            extra = {"custom_translation_table": dynamo_translation_table()} if mode == "plugin" else {}
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18,
                              input_names=["keypoints2d"], output_names=["pose3d"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **extra)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["keypoints2d"], output_names=["pose3d"],
                              dynamic_axes={"keypoints2d": {0: "batch"}, "pose3d": {0: "batch"}})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    return proto


def _windows() -> torch.Tensor:
    x = torch.randn(5, 9, 17, 3)
    x[1, :, 3] = x[1, :, 2]        # zero-length bones
    x[2] = x[2, :1]                # repeated frames
    x[3, :, :, :2] *= 1e3          # large coordinates
    return x


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("mode", ["decomposed", "plugin"])
def test_export_mode_matches_pytorch_in_onnxruntime(mode: str, dynamo: bool, tmp_path: Path) -> None:
    if mode == "plugin":
        require_native_op()
        pytest.importorskip("onnxruntime_extensions", reason="plugin models run in ONNX Runtime through "
                                                             "onnxruntime-extensions (pip install kasf[onnx])")
    model = _small_model()
    proto = _export(model, tmp_path / f"{mode}.onnx", mode, dynamo)
    nodes = plugin_nodes(proto)
    domains = {(o.domain, o.version) for o in proto.opset_import}
    if mode == "plugin":
        assert len(nodes) == 1 and (DOMAIN, DOMAIN_VERSION) in domains
        assert sum(n.op_type == "ReduceL2" or n.op_type == "Sqrt" for n in proto.graph.node) == 0
    else:
        assert not nodes and all(d in ("", "ai.onnx") for d, _ in domains)
    x = _windows()
    session = ort_session(tmp_path / f"{mode}.onnx")
    got = session.run(None, {"keypoints2d": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_plugin_node_alone_matches_pure_pytorch(tmp_path: Path) -> None:
    """The operator itself through ONNX Runtime, on the hard inputs, against the pure-PyTorch definition."""
    require_native_op()
    pytest.importorskip("onnxruntime_extensions", reason="needs onnxruntime-extensions")
    from kasf.model.anatomy import BoneExtractor

    module = BoneExtractor()
    with anatomy_export("plugin"):
        torch.onnx.export(module, (torch.randn(2, 9, 17, 3),), str(tmp_path / "bones.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["bones"],
                          dynamic_axes={"x": {0: "b", 1: "t"}})
    proto = onnx.load(str(tmp_path / "bones.onnx"))
    assert [n.op_type for n in proto.graph.node] == [NODE]
    session = ort_session(proto)
    x = _windows()
    x[4] = x[4] * 1e-6
    x[0, 0] = 0.25  # a frame whose joints coincide: every bone has zero length
    got = session.run(None, {"x": x.numpy()})[0]
    from kasf.anatomy_op.features import bone_features

    expected = bone_features(x[..., :2], module.proximal, module.distal).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_plain_onnxruntime_names_the_missing_op(tmp_path: Path) -> None:
    """Without kasf's session helper ONNX Runtime cannot run the node, and says which one."""
    require_native_op()
    from kasf.model.anatomy import BoneExtractor

    with anatomy_export("plugin"):
        torch.onnx.export(BoneExtractor(), (torch.randn(1, 17, 3),), str(tmp_path / "b.onnx"), dynamo=False,
                          opset_version=17)
    with pytest.raises(Exception, match=NODE):
        ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])


def test_default_export_is_decomposed(tmp_path: Path) -> None:
    """An export outside anatomy_export() never emits the custom node, even with the native op loaded."""
    model = _small_model()
    torch.onnx.export(model, (torch.randn(1, 9, 17, 3),), str(tmp_path / "d.onnx"), dynamo=False, opset_version=17)
    assert not plugin_nodes(onnx.load(str(tmp_path / "d.onnx")))


def test_bad_mode_and_missing_op_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="decomposed, plugin"):
        with anatomy_export("fused"):
            pass
    monkeypatch.setattr(native, "native_available", lambda: False)
    with pytest.raises(RuntimeError, match="--anatomy-op decomposed"):
        with anatomy_export("plugin"):
            pass


def test_tensorrt_plugin_runs_the_exported_node(tmp_path: Path) -> None:
    """A plugin-mode model through kasf's own engine build and Lifter, against PyTorch (needs TensorRT, a GPU and a
    plugin library built, or the tools to build it once)."""
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT (pip install tensorrt) and a CUDA GPU")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU for TensorRT (none visible to torch here)")
    require_native_op()
    from kasf.anatomy_op import tensorrt_plugin
    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnx
    from kasf.export.tensorrt_build import BuildOptions, build_engine
    from kasf.runtime import Lifter
    from kasf.tensorrt_api import cuda_arch, cuda_session

    try:
        tensorrt_plugin.library_for_build(trt, cuda_arch(cuda_session().compute_capability))
    except tensorrt_plugin.TensorRTPluginError as err:
        pytest.skip(f"no TensorRT plugin library: {err}")
    model = _small_model()
    meta = build_metadata(model.config, None, "fp32", "plugin", (1, 4, 8), None)
    export_onnx(model, tmp_path / "p.onnx", meta, anatomy_op="plugin")
    engine = build_engine(tmp_path / "p.onnx", tmp_path / "p.engine", meta, BuildOptions(batch=(1, 4, 8)))
    x = _windows()
    got = Lifter.load(engine, device="cuda").predict(x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() < 1e-4
