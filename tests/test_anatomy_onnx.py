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
    """Build an engine from a plugin-mode model and compare it with PyTorch (needs TensorRT and a GPU)."""
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT (pip install tensorrt) and a CUDA GPU")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU for TensorRT (none visible to torch here)")
    require_native_op()
    from kasf.anatomy_op import tensorrt_plugin

    lacks = tensorrt_plugin.missing()
    if lacks:
        pytest.skip(f"needs {lacks} to build the TensorRT plugin")
    tensorrt_plugin.load_plugin()
    model = _small_model()
    _export(model, tmp_path / "p.onnx", "plugin", dynamo=False)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((tmp_path / "p.onnx").read_bytes()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("keypoints2d", (1, 9, 17, 3), (4, 9, 17, 3), (8, 9, 17, 3))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    x = _windows()[:4].cuda().contiguous()
    out = torch.empty(4, 9, 17, 3, device="cuda")
    context.set_input_shape("keypoints2d", tuple(x.shape))
    context.set_tensor_address("keypoints2d", x.data_ptr())
    context.set_tensor_address("pose3d", out.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    with torch.no_grad():
        expected = model(x.cpu())
    assert (out.cpu() - expected).abs().max().item() < 1e-4
