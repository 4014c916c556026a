"""Export to ONNX, TensorRT and Triton, with a parity check against PyTorch for every artefact."""

from kasf.export.onnx_export import export_onnx, quantize_int8
from kasf.export.parity import ParityReport, check_parity

__all__ = ["ParityReport", "check_parity", "export_onnx", "quantize_int8"]
