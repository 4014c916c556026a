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


@dataclass(frozen=True)
class CpuFeatures:
    native_bf16: bool  # AVX512-BF16 or AMX: bf16 products run in hardware
    onnxruntime: bool  # the onnxruntime package imports


@dataclass(frozen=True)
class CpuChoice:
    precision: str
    reason: str


def detect_cpu_features() -> CpuFeatures:
    from importlib.util import find_spec

    from kasf.hardware import cpu_has_native_bf16

    return CpuFeatures(native_bf16=cpu_has_native_bf16(), onnxruntime=find_spec("onnxruntime") is not None)


def choose_cpu_precision(features: CpuFeatures, width: int) -> CpuChoice:
    """bf16 (weights converted once, kasf.runtime.cpu_bf16) where the CPU multiplies bf16 natively and the model
    is wide enough (``width``: its dim_feat) to gain from it; fp32 otherwise. Both keep kasf-export's parity bounds."""
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
