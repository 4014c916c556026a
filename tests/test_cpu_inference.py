"""The ONNX Runtime CPU artefact (export_onnxruntime_cpu): same function as PyTorch, and the graph shape it is for."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

import kasf
from kasf.artefact import build_metadata
from kasf.export.parity import check_parity
from kasf.export.windows import load_real_windows
from kasf.runtime import Lifter
from tests.conftest import perturbed_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")

from kasf.export.onnx_export import ORT_OPTIMIZED_KEY, export_onnx, export_onnxruntime_cpu, quantize_int8  # noqa: E402


def _metadata(model, precision: str) -> dict[str, str]:
    return build_metadata(model.config, "kasportsformer-t", precision, "decomposed", (1, 8, 64), None)


def _torch_fn(model, dtype=torch.float32):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(dtype)).double().numpy()
    return run


@pytest.fixture(scope="module")
def model():
    return perturbed_model("kasportsformer-t").eval()


@pytest.fixture(scope="module")
def cpu_onnx(model, tmp_path_factory):
    return export_onnxruntime_cpu(model, tmp_path_factory.mktemp("cpu") / "t.cpu.onnx", _metadata(model, "fp32"))


def test_cpu_graph_keeps_fp32_parity(model, cpu_onnx):
    lifter = Lifter.load(cpu_onnx, device="cpu")
    assert lifter.metadata[ORT_OPTIMIZED_KEY] == "extended"
    report = check_parity(_torch_fn(model), lifter.predict, str(cpu_onnx), "onnxruntime", "fp32", 27,
                          load_real_windows(27), _torch_fn(copy.deepcopy(model).double(), torch.float64))
    assert report.passed, report.summary()


def test_cpu_graph_is_the_fused_one(model, cpu_onnx, tmp_path):
    """One contrib node per attention and the limb MLPs as products: if a change loses these fusions (back to
    the ~2x larger graph ORT runs slower), this fails before any benchmark does."""
    ops = Counter(n.op_type for n in onnx.load(str(cpu_onnx)).graph.node)
    blocks = model.config["n_layers"]
    assert ops["Attention"] == 2 * blocks and ops["MultiHeadAttention"] == 2 * blocks
    assert ops["Erf"] == 0 and ops["Softmax"] == blocks  # Gelu fused; softmax only in the adaptive fusion
    portable = export_onnx(model, tmp_path / "portable.onnx", _metadata(model, "fp32"), batch=1)
    assert sum(ops.values()) < 0.6 * len(onnx.load(str(portable)).graph.node)


def test_int8_of_the_cpu_graph_stays_within_1mm(tmp_path):
    demo = kasf.load_checkpoint("demo").eval()
    fp32 = export_onnxruntime_cpu(demo, tmp_path / "demo.cpu.onnx", _metadata(demo, "fp32"))
    int8 = quantize_int8(fp32, tmp_path / "demo.cpu.int8.onnx", _metadata(demo, "int8"))
    proto = onnx.load(str(int8))
    assert any(n.op_type in ("QAttention", "MatMulInteger", "DynamicQuantizeMatMul") for n in proto.graph.node)
    lifter = Lifter.load(int8, device="cpu")
    report = check_parity(_torch_fn(demo), lifter.predict, str(int8), "onnxruntime", "int8", 27,
                          load_real_windows(27))
    assert lifter.precision == "int8" and report.passed, report.summary()
