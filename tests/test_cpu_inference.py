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
from kasf.model.layers import ORT_ATTENTION_FORMS
from kasf.runtime import Lifter
from tests.conftest import perturbed_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")

from kasf.export.onnx_export import (ORT_OPTIMIZED_KEY, export_onnx, export_onnxruntime_cpu,  # noqa: E402
                                     fold_channel_scales, quantize_int8)


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
    # dynamic batch, yet no shape arithmetic per attention (3 Shape nodes in the anatomy features, none per block)
    assert ops["Shape"] <= 3
    # layer scales folded into the proj / fc2 weights: what Muls remain are the graph mixers' and the fusion's
    layer_scales = sum(p.numel() > 0 for n, p in model.named_parameters() if "layer_scale" in n)
    assert ops["Mul"] < layer_scales


@pytest.mark.parametrize("form", [f for f in ORT_ATTENTION_FORMS if f != "contrib"])
def test_every_attention_form_is_the_same_function(model, form, tmp_path):
    """The other forms benchmarks/ort_attention_forms.py compares: same outputs as PyTorch, standard ops only."""
    path = export_onnxruntime_cpu(model, tmp_path / f"{form}.onnx", _metadata(model, "fp32"), attention=form)
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    blocks = model.config["n_layers"]
    assert ops["Attention"] == ops["MultiHeadAttention"] == 0
    assert ops["Softmax"] == 5 * blocks  # 4 attentions a block, and the adaptive fusion
    assert form == "sdpa" or ops["Shape"] <= 3  # constant shapes: none per attention
    # kasf-export's fp32 rule (MPJPE within 0.1 mm): the graph mixers' top-k neighbours can flip on near-ties
    # under any float reordering, so elementwise equality is not the contract
    report = check_parity(_torch_fn(model), Lifter.load(path, device="cpu").predict, str(path), "onnxruntime",
                          "fp32", 27, load_real_windows(27), _torch_fn(copy.deepcopy(model).double(), torch.float64))
    assert report.passed, report.summary()


def test_unknown_attention_form_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="attention must be one of contrib"):
        export_onnxruntime_cpu(model, tmp_path / "x.onnx", _metadata(model, "fp32"), attention="flash")
    assert not (tmp_path / "x.onnx").exists()


def _linear_graph(weight, bias, scale, extra_reader: bool):
    """x (2, 3, 4) -> MatMul(weight) -> Add(bias) -> Mul(scale) -> y; optionally the Add's output is an output too."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["lin"]),
             helper.make_node("Mul", ["s", "lin"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("lin", TensorProto.FLOAT, [2, 3, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              outputs, [numpy_helper.from_array(a, n) for a, n in
                                        ((weight, "w"), (bias, "b"), (scale, "s"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("extra_reader", [False, True])
def test_channel_scales_fold_into_the_product(extra_reader):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    scale = np.array([0.5, 2.0, -1.0, 0.0, 3.0], np.float32)
    proto = _linear_graph(weight, bias, scale, extra_reader)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    expected = (x @ weight + bias) * scale  # by hand
    folded = fold_channel_scales(proto)
    onnx.checker.check_model(proto)
    ops = Counter(n.op_type for n in proto.graph.node)
    if extra_reader:  # the unscaled output is read elsewhere: folding would change it, so nothing moves
        assert folded == 0 and ops["Mul"] == 1
    else:
        assert folded == 1 and ops["Mul"] == 0 and {t.name for t in proto.graph.initializer}.isdisjoint({"w", "b", "s"})
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_workers_split_the_batch_and_keep_the_order(cpu_onnx, batch):
    """Two sessions each lift a part of the batch: the result is the one-session result, row for row (a part
    put back in the wrong place would swap people)."""
    windows = load_real_windows(27).inputs[:batch]
    one = Lifter.load(cpu_onnx, device="cpu").predict(windows)
    split = Lifter.load(cpu_onnx, device="cpu", workers=2).predict(windows)
    assert split.shape == one.shape
    np.testing.assert_allclose(split, one, rtol=1e-5, atol=1e-5)


def test_workers_need_onnxruntime_on_the_cpu(cpu_onnx):
    from kasf.runtime.lifter import LifterError

    with pytest.raises(LifterError, match="workers=2 applies to ONNX Runtime"):
        Lifter.load("demo", device="cpu", workers=2)
    with pytest.raises(LifterError, match="whole number >= 1"):
        Lifter.load(cpu_onnx, device="cpu", workers=0)
