"""Export to ONNX, TensorRT and Triton, with a parity check against PyTorch for every artefact."""

from kasf.export.metadata import INPUT_NAME, OUTPUT_NAME, build_metadata, parse_metadata
from kasf.export.onnx_export import export_onnx, quantize_int8, read_onnx_metadata
from kasf.export.parity import ParityReport, check_parity

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ParityReport", "build_metadata", "check_parity", "export_onnx",
           "parse_metadata", "quantize_int8", "read_onnx_metadata"]
