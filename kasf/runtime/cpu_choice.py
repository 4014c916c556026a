"""``precision="auto"`` for a checkpoint on the CPU: what to run, decided from what the machine has.

The decision is a pure function of ``CpuFeatures`` (detected once by ``detect_cpu_features``), so it is tested
with fakes and a user can see why it chose. Only PyTorch variants are candidates: an ONNX Runtime graph of a
checkpoint is an export (kasf.export, seconds to minutes, and the runtime layer never imports it). Where
onnxruntime is installed, the reason names that faster route instead of taking it silently. An explicitly
given precision or artefact is never changed by this module.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this feature width (dim_feat) the bf16 products are too small to pay for the casts around them. On this
# project's 2-core Xeon (AMX), 2 threads: dim_feat 32 (kasportsformer-t) and 64 (-xs, 1.7 M parameters) ran
# 10-20 % slower in bf16 than fp32, dim_feat 128 (the released size) 1.18x faster (docs/cpu_inference.md).
BF16_MIN_WIDTH = 128

# The native path (kasf::lift_cpu) with bf16 products on AMX tiles, same machine, 2 threads, against its own fp32
# kernels: dim_feat 32 (the demo) 1.15x at batch 1 and 4, alternating in one process (kasf-stream with 4 people,
# alternating processes, is too noisy to add much: bf16 ahead in 3 of 4 pairs); 64 1.6x; 128 2.5x. Narrower
# models were not measured. With AVX512-BF16 dot products alone (no AMX) its bf16 ran 1.1-1.2x slower than its
# fp32, so without AMX the native path stays fp32 (docs/cpu_inference.md).
NATIVE_AMX_MIN_WIDTH = 32


@dataclass(frozen=True)
class CpuFeatures:
    native_bf16: bool  # AVX512-BF16 or AMX: bf16 products run in hardware
    onnxruntime: bool  # the onnxruntime package imports
    native_path_bf16: str | None = None  # kasf::lift_cpu's bf16 product kernel here: 'amx', 'avx512_bf16' or None


@dataclass(frozen=True)
class CpuChoice:
    precision: str
    reason: str


def detect_cpu_features() -> CpuFeatures:
    from importlib.util import find_spec

    from kasf.hardware import cpu_has_native_bf16

    return CpuFeatures(native_bf16=cpu_has_native_bf16(), onnxruntime=find_spec("onnxruntime") is not None,
                       native_path_bf16=_native_path_bf16())


def _native_path_bf16() -> str | None:
    import torch

    from kasf.anatomy_op.native import load

    if not load()[0] or not hasattr(torch.ops.kasf, "lift_cpu_bf16_kernels"):
        return None
    from kasf.model.native_cpu import bf16_kernels

    try:
        return bf16_kernels()
    except RuntimeError:  # a bad KASF_CPU_BF16: the native bf16 path would refuse with that message
        return None


def choose_cpu_precision(features: CpuFeatures, width: int, native_path: bool = False) -> CpuChoice:
    """For the native path (``native_path``: the model will run kasf::lift_cpu): bf16 products where the CPU has
    AMX and the model is wide enough, fp32 otherwise. For PyTorch's own forward: bf16 (weights converted once,
    kasf.runtime.cpu_bf16) where the CPU multiplies bf16 natively and the model is wide enough (``width``: its
    dim_feat); fp32 otherwise. All keep kasf-export's parity bounds."""
    if native_path:
        if features.native_path_bf16 != "amx":
            precision, why = "fp32", ("the native path's bf16 products pay only on AMX tiles, and this CPU has "
                                      + ("AVX512-BF16 dot products only" if features.native_path_bf16 else "no AMX"))
        elif width < NATIVE_AMX_MIN_WIDTH:
            precision, why = "fp32", (f"AMX, but dim_feat {width} < {NATIVE_AMX_MIN_WIDTH}: too narrow for bf16 "
                                      "products to pay in the native path")
        else:
            precision, why = "bf16", f"the native path's products on AMX tiles, dim_feat {width}"
        return CpuChoice(precision, f"auto picked native {precision}: {why}")
    if not features.native_bf16:
        precision, why = "fp32", "this CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated)"
    elif width < BF16_MIN_WIDTH:
        precision, why = "fp32", f"native bf16, but dim_feat {width} < {BF16_MIN_WIDTH}: too narrow for bf16 to pay"
    else:
        precision, why = "bf16", f"native bf16 (AVX512-BF16/AMX) and dim_feat {width}"
    hint = ("; faster on CPU where parity allows: export the ONNX Runtime CPU graph "
            "(kasf.export.onnx_export.export_onnxruntime_cpu, int8 via quantize_int8) and load the .onnx"
            if features.onnxruntime else "")
    return CpuChoice(precision, f"auto picked PyTorch {precision}: {why}{hint}")
