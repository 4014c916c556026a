"""Running a lifter: one interface over PyTorch, ONNX Runtime and TensorRT artefacts."""

from kasf.runtime.lifter import Lifter, LifterError

__all__ = ["Lifter", "LifterError"]
