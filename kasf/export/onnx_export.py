"""ONNX export of a KASportsFormer (fp32, dynamic or fixed batch) and ONNX Runtime INT8 quantisation."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from kasf.artefact import INPUT_NAME, OUTPUT_NAME
from kasf.atomic import atomic_path
from kasf.model.kasportsformer import KASportsFormer
from kasf.model.layers import ORT_ATTENTION_FORMS, Attention


def export_onnx(model: KASportsFormer, path: str | os.PathLike, metadata: Mapping[str, str], opset: int = 17,
                batch: int | None = None, anatomy_op: str = "decomposed", simplify: bool = False,
                half: bool = False) -> Path:
    """Write model as ONNX: input (B, n_frames, 17, 3) named keypoints2d, B dynamic unless ``batch`` is given.

    Uses the TorchScript-based exporter (constant folding on) inside the anatomy-op mode; the graph is checked
    with onnx.checker and the metadata written into metadata_props. Written to a temporary name, then renamed.
    ``half`` writes an FP16 graph with float32 input and output (what strongly typed TensorRT 11 builds FP16 from).
    """
    import onnx

    from kasf.anatomy_op.onnx_modes import anatomy_export

    if opset < 17:
        raise ValueError(f"opset {opset} is too old: kasf needs opset >= 17 (LayerNormalization)")
    path = Path(path)
    model = model.eval()
    module = _HalfGraph(model) if half else model
    example = torch.zeros(batch or 2, model.n_frames, model.num_joints, model.dim_in,
                          device=next(model.parameters()).device)
    dynamic_axes = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with atomic_path(path) as tmp:
        with anatomy_export(anatomy_op), torch.no_grad():
            module(example)  # fills inference caches (packed limb weights), which the trace then takes as constants
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        proto = onnx.load(str(tmp))
        if simplify:
            proto = _simplify(proto)
        _set_metadata(proto, metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


ORT_OPTIMIZED_KEY = "ort_optimized"  # metadata: the ORT graph-optimisation level already applied to the file
ORT_ATTENTION_KEY = "ort_attention"  # metadata: the form of the attention in an ORT CPU graph


def export_onnxruntime_cpu(model: KASportsFormer, path: str | os.PathLike, metadata: Mapping[str, str],
                           opset: int = 17, batch: int | None = None, attention: str = "contrib") -> Path:
    """ONNX for ONNX Runtime on CPUs: the ``onnxruntime`` inference path, saved after ORT's graph optimisation.

    Why a separate artefact: the portable export (standard ops, for TensorRT and any runtime) costs ORT ~5,500
    nodes on the released size; this graph writes each attention as one contrib node and the limb MLPs as two
    products (see docs/cpu_inference.md for the node counts). ORT's fusions (Gelu, Gemm, FusedMatMul) are applied
    once here at the hardware-independent level 'extended', and the metadata says so, so loading skips them.
    ``attention`` picks the form of each attention in the graph (kasf.model.layers.ORT_ATTENTION_FORMS).
    """
    import copy

    import onnx
    import onnxruntime as ort

    path = Path(path)
    if attention not in ORT_ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {', '.join(ORT_ATTENTION_FORMS)}, got {attention!r}")
    onnxruntime_model = copy.deepcopy(model).set_inference_path("onnxruntime")
    for module in onnxruntime_model.modules():
        if isinstance(module, Attention):
            module.onnxruntime_attention = attention
    with tempfile.TemporaryDirectory(prefix="kasf-ort-") as tmp:
        plain = Path(tmp) / "plain.onnx"
        export_onnx(onnxruntime_model, plain, metadata, opset=opset, batch=batch)
        folded = onnx.load(str(plain))
        fold_channel_scales(folded)
        onnx.save(folded, str(plain))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
        proto = onnx.load(options.optimized_model_filepath)
    _set_metadata(proto, {**metadata, ORT_OPTIMIZED_KEY: "extended", ORT_ATTENTION_KEY: attention})
    with atomic_path(path) as out:
        onnx.save(proto, str(out))
    return path


def _constant_value(name: str, initializers: dict, producers: dict) -> np.ndarray | None:
    """The value of a graph input that is an initializer, an Identity of one, or a Constant node; else None."""
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Identity" and node.input[0] in initializers:
        return numpy_helper.to_array(initializers[node.input[0]])
    if node is not None and node.op_type == "Constant":
        value = next((a for a in node.attribute if a.name == "value"), None)
        return None if value is None else numpy_helper.to_array(value.t)
    return None


def fold_channel_scales(proto) -> int:
    """Fold ``Mul(MatMul(x, W) + b, s)`` with constant per-output-channel ``s`` into ``MatMul(x, W·s) + b·s``.

    Why: every pre-norm block scales its two residual branches by a learnt vector (layer scale); exported as is,
    that is one elementwise node per branch (71 on the demo size, 442 on the released size) that ONNX Runtime
    runs as its own pass over the activations. The product's output must feed only the Mul, and ``s`` must vary
    along the last axis only; new initializers are written (a weight shared with another node stays as it was).
    Returns the number of Mul nodes folded. Exact up to float rounding.
    """
    from collections import Counter

    from onnx import numpy_helper

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(out.name for out in graph.output)
    folded, removed = 0, []
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for scale_input, data_input in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            scale = _constant_value(scale_input, initializers, producers)
            add = producers.get(data_input)
            if scale is None or add is None or add.op_type != "Add" or uses[data_input] != 1:
                continue
            bias_index = next((i for i in (0, 1) if _constant_value(add.input[i], initializers, producers)
                               is not None), None)
            if bias_index is None:
                continue
            matmul = producers.get(add.input[1 - bias_index])
            if matmul is None or matmul.op_type != "MatMul" or uses[matmul.output[0]] != 1:
                continue
            bias = _constant_value(add.input[bias_index], initializers, producers)
            weight = _constant_value(matmul.input[1], initializers, producers)
            if weight is None or weight.ndim != 2 or bias.shape != (weight.shape[1],):
                continue
            if scale.size != weight.shape[1] or any(d != 1 for d in scale.shape[:-1]):
                continue
            scale = scale.reshape(-1).astype(weight.dtype)
            names = (f"{matmul.output[0]}_scaled_weight", f"{add.output[0]}_scaled_bias")
            for name, value in zip(names, (weight * scale, bias * scale)):
                graph.initializer.append(numpy_helper.from_array(value.astype(weight.dtype), name))
            matmul.input[1], add.input[bias_index] = names
            add.output[0] = mul.output[0]  # the Add now writes what the Mul wrote
            removed.append(mul)
            folded += 1
            break
    for node in removed:
        graph.node.remove(node)
    _drop_unused(graph)
    return folded


def _drop_unused(graph) -> None:
    """Remove initializers and Identity/Constant nodes nothing reads any more (left behind by folding)."""
    while True:
        uses = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [n for n in graph.node if n.op_type in ("Identity", "Constant") and n.output[0] not in uses]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    uses = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    unused = [t for t in graph.initializer if t.name not in uses]
    for tensor in unused:
        graph.initializer.remove(tensor)


class _HalfGraph(torch.nn.Module):
    """An FP16 copy of the model behind float32 input/output casts."""

    def __init__(self, model: KASportsFormer) -> None:
        super().__init__()
        import copy

        self.model = copy.deepcopy(model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _set_metadata(proto, metadata: Mapping[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _simplify(proto):
    try:
        import onnxsim
    except ImportError:
        raise RuntimeError("--simplify needs onnx-simplifier: pip install onnxsim") from None
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model; export without --simplify")
    return simplified


class _WindowReader:
    """ONNX Runtime calibration reader over (N, T, J, 3) windows, one batch of windows at a time."""

    def __init__(self, windows: np.ndarray, batch: int) -> None:
        self._batches = iter([windows[i:i + batch] for i in range(0, len(windows), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._batches, None)
        return None if chunk is None else {INPUT_NAME: np.ascontiguousarray(chunk, dtype=np.float32)}


MIN_INT8_REDUCTION = 64


def _narrow_matmuls(proto, min_reduction: int) -> list[str]:
    """MatMul/Gemm nodes whose weight sums fewer than ``min_reduction`` non-zero terms into each output.

    Why keep them in float: int8 rounding error relative to the output grows as the reduction shrinks, and these
    layers (the embeddings of 3 input channels, the 51 limb MLPs, a narrow preset's projections) cost next to
    nothing. On the demo checkpoint quantising every MatMul moved MPJPE by +1.26 mm; keeping K < 64 in float moves
    it +0.46 mm. Non-zero terms, not K: the limb MLPs as block matrices (the fused formulation) have K = 816 but
    16 terms per output.
    """
    from onnx import numpy_helper

    weights = {t.name: t for t in proto.graph.initializer}
    narrow = []
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if weight.ndim != 2:
            continue
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        per_output = weight if (node.op_type == "Gemm" and trans_b) else weight.T  # (outputs, K)
        if int((per_output != 0).sum(axis=1).max()) < min_reduction:
            narrow.append(node.name)
    return narrow


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, metadata: Mapping[str, str],
                  calibration: Iterable[np.ndarray] | np.ndarray | None = None,
                  min_reduction: int = MIN_INT8_REDUCTION, symmetric: bool = False) -> Path:
    """INT8 ONNX for CPUs: weights of MatMul/Gemm with a reduction of at least ``min_reduction`` in int8.

    Without calibration windows, activations are quantised dynamically per batch (quantize_dynamic); with them,
    static QDQ quantisation calibrated on those windows. Attention softmax, LayerNorm and the graph mixer's
    similarity top-k stay in float, which keeps the MPJPE change small.

    ``symmetric`` (static QDQ only) gives activations and weights zero point 0: TensorRT's ONNX importer accepts
    nothing else ("only supports symmetric quantization"), so the Q/DQ graph TensorRT >= 11 builds INT8 from
    needs it; ONNX Runtime on CPUs does better with the default asymmetric activations.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    int8_path = Path(int8_path)
    if symmetric and calibration is None:
        raise ValueError("symmetric INT8 (for TensorRT) is static quantisation: it needs calibration windows")
    fp32_proto = onnx.load(str(fp32_path))
    keep_float = _narrow_matmuls(fp32_proto, min_reduction)
    # A graph ORT already optimised holds contrib nodes (Attention, FusedMatMul) that ONNX shape inference cannot
    # type; their outputs are float. Attention nodes stay float: as QAttention (int8 QKV projection) the demo
    # checkpoint's MPJPE moved +1.37 mm, over the 1 mm bound.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    op_types = ["MatMul", "Gemm"]
    with atomic_path(int8_path) as tmp:
        if calibration is None:
            quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=op_types, nodes_to_exclude=keep_float, extra_options=extra)
        else:
            windows = np.asarray(calibration, dtype=np.float32)
            quantize_static(str(fp32_path), str(tmp), _WindowReader(windows, 8), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            op_types_to_quantize=op_types, nodes_to_exclude=keep_float,
                            extra_options={**extra, "ActivationSymmetric": symmetric, "WeightSymmetric": True})
        proto = onnx.load(str(tmp))
        _set_metadata(proto, metadata)  # not marked optimised: ORT fuses the int8 nodes it just got at load
        onnx.save(proto, str(tmp))
    return int8_path
