"""ONNX modes of the anatomy operator, chosen at export, and its ONNX Runtime implementation.

Why two modes: ``decomposed`` (the default) exports the pure-PyTorch Bone Extractor as standard ONNX operators
(Gather, Sub, ReduceL2, Where, Div, Concat, ReduceMean), which every runtime and TensorRT run without plugins;
``plugin`` exports one node ``AnatomyFeatures`` in the custom domain ``kasf`` (version 1), which a runtime runs with
our kernels: ONNX Runtime through :func:`ort_session` and TensorRT through the plugin of ``cpp_ext/tensorrt``
(:mod:`kasf.anatomy_op.tensorrt_plugin`).

Use (this is what ``kasf-export --anatomy-op`` calls)::

    with anatomy_export("plugin"):
        torch.onnx.export(model, (x,), path, dynamo=False, ...)            # TorchScript exporter
    with anatomy_export("plugin"):
        torch.onnx.export(model, (x,), path, dynamo=True,
                          custom_translation_table=dynamo_translation_table())  # dynamo exporter
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch

from kasf.anatomy_op import features, native

DOMAIN = "kasf"
DOMAIN_VERSION = 1
NODE = "AnatomyFeatures"
MODES = ("decomposed", "plugin")
Mode = Literal["decomposed", "plugin"]

_symbolic_registered = False


def _require_op(mode: str) -> None:
    if not native.native_available():
        raise RuntimeError(f"--anatomy-op {mode} needs the native operator kasf::anatomy_features, which is not "
                           f"available: {native.status()['reason']}. Export with --anatomy-op decomposed instead.")


def _register_torchscript_symbolic() -> None:
    """Map kasf::anatomy_features to one kasf::AnatomyFeatures node in the TorchScript-based exporter."""
    global _symbolic_registered
    if _symbolic_registered:
        return

    def symbolic(g: Any, joints: Any) -> Any:
        out = g.op(f"{DOMAIN}::{NODE}", joints)
        joints_type = joints.type()
        sizes = joints_type.varyingSizes() if hasattr(joints_type, "varyingSizes") else None
        if sizes:
            out.setType(joints_type.with_sizes(list(sizes[:-1]) + [3]))
        return out

    torch.onnx.register_custom_op_symbolic("kasf::anatomy_features", symbolic, DOMAIN_VERSION)
    _symbolic_registered = True


@contextlib.contextmanager
def anatomy_export(mode: str = "decomposed") -> Iterator[None]:
    """Inside, the model's Bone Extractor takes the path that exports as ``mode`` (see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"unknown anatomy-op mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "plugin":
        _require_op(mode)
        _register_torchscript_symbolic()
    with features.exporting_as(mode):
        yield


def dynamo_translation_table() -> dict[Callable, Callable]:
    """custom_translation_table for ``torch.onnx.export(..., dynamo=True)`` in plugin mode."""
    _require_op("plugin")
    from onnxscript import values

    register_onnx_schema()
    kasf_opset = values.Opset(DOMAIN, DOMAIN_VERSION)

    def anatomy_features(joints: Any) -> Any:
        return kasf_opset.AnatomyFeatures(joints)

    return {torch.ops.kasf.anatomy_features.default: anatomy_features}


def register_onnx_schema() -> None:
    """Declare kasf::AnatomyFeatures-1 to onnx.defs (onnxscript emits only ops with a schema)."""
    from onnx import defs

    if defs.has(NODE, DOMAIN_VERSION, DOMAIN):
        return
    defs.register_schema(defs.OpSchema(
        NODE, DOMAIN, DOMAIN_VERSION,
        doc="KASportsFormer Bone Extractor: (..., 17, C>=2) joints -> (..., 17, 3) [dir_x, dir_y, length] tokens, "
            "16 bones and their mean; a zero-length bone reads length 1.",
        inputs=[defs.OpSchema.FormalParameter("joints", "T")],
        outputs=[defs.OpSchema.FormalParameter("bones", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16 joints")],
    ))


def plugin_nodes(model: Any) -> list[Any]:
    """The kasf::AnatomyFeatures nodes of an onnx.ModelProto (the main graph)."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == NODE]


# ONNX Runtime ---------------------------------------------------------------------------------------------------
# No ONNX Runtime C/C++ headers are available to this project (the onnxruntime wheel ships none, Debian 12 packages
# none), so the ORT implementation is onnxruntime-extensions' Python custom op, which calls the same native CPU
# kernel through torch. onnxruntime-extensions serves Python ops only in its own domain, so ort_session rewrites
# the node's domain in the in-memory copy it hands to ONNX Runtime; the file on disk keeps kasf/1 for TensorRT.

_ORTX_DOMAIN = "ai.onnx.contrib"
_ortx_registered = False


def _register_ortx_op() -> str:
    """Register AnatomyFeatures as an onnxruntime-extensions Python op; returns the custom-op library path."""
    global _ortx_registered
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as err:
        raise RuntimeError("running a --anatomy-op plugin model in ONNX Runtime needs onnxruntime-extensions: "
                           "pip install onnxruntime-extensions") from err
    if not _ortx_registered:
        import numpy as np

        @onnx_op(op_type=NODE, inputs=[PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float])
        def _anatomy_features(joints: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return features.anatomy_features(torch.from_numpy(np.ascontiguousarray(joints))).numpy()

        _ortx_registered = True
    return get_library_path()


def ort_session(model: str | Path | bytes | Any, providers: Sequence[str] | None = None,
                sess_options: Any = None) -> Any:
    """An onnxruntime.InferenceSession for any kasf ONNX model, with AnatomyFeatures registered when it has one."""
    import onnx
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else (
        onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model)))
    providers = list(providers) if providers else ["CPUExecutionProvider"]
    options = sess_options or ort.SessionOptions()
    if not plugin_nodes(proto):
        return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
    options.register_custom_ops_library(_register_ortx_op())
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for node in plugin_nodes(copy):
        node.domain = _ORTX_DOMAIN
    for opset in copy.opset_import:
        if opset.domain == DOMAIN:
            opset.domain = _ORTX_DOMAIN
    return ort.InferenceSession(copy.SerializeToString(), options, providers=providers)
