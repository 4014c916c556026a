"""The model is written to export: ONNX (both exporters) with a dynamic batch, tracing, torch.compile capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kasf.model import build
from tests.conftest import perturbed_model

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")


@pytest.fixture(scope="module")
def tiny():
    return perturbed_model("kasportsformer-t", layer_scale=0.3)


def _run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_torchscript_onnx_export_with_dynamic_batch(tiny, tmp_path):
    path = tmp_path / "m.onnx"
    torch.onnx.export(tiny, (torch.randn(2, 27, 17, 3),), str(path), dynamo=False, opset_version=17,
                      input_names=["keypoints2d"], output_names=["pose3d"],
                      dynamic_axes={"keypoints2d": {0: "batch"}, "pose3d": {0: "batch"}})
    x = torch.randn(5, 27, 17, 3)  # another batch size than the one exported with
    with torch.no_grad():
        ref = tiny(x).numpy()
    assert np.abs(_run_onnx(path, x) - ref).max() < 1e-4


def test_dynamo_onnx_export(tmp_path):
    model = build("kasportsformer-t", n_layers=1).eval()
    x = torch.randn(3, 27, 17, 3)
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(tmp_path / "d.onnx"))
    x2 = torch.randn(4, 27, 17, 3)
    with torch.no_grad():
        assert np.abs(_run_onnx(tmp_path / "d.onnx", x2) - model(x2).numpy()).max() < 1e-4


def test_jit_trace_generalises_over_batch(tiny):
    traced = torch.jit.trace(tiny, (torch.randn(2, 27, 17, 3),))
    x = torch.randn(7, 27, 17, 3)
    with torch.no_grad():
        assert torch.allclose(traced(x), tiny(x), atol=1e-6)


def test_compile_captures_whole_graph(tiny):
    torch._dynamo.reset()
    compiled = torch.compile(tiny, backend="aot_eager", fullgraph=True, dynamic=False)
    x = torch.randn(2, 27, 17, 3)
    with torch.no_grad():
        assert torch.allclose(compiled(x), tiny(x), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_runs_under_cpu_autocast(tiny, dtype):
    x = torch.randn(2, 27, 17, 3)
    with torch.no_grad():
        ref = tiny(x)
        with torch.autocast("cpu", dtype=dtype):
            out = tiny(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05
