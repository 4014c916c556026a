"""TensorRT engines from kasf ONNX files, across the API generations of TensorRT 8.6, 10 and 11.

- 8.6: explicit-batch networks need a creation flag; FP16/INT8 are builder flags; INT8 uses a calibrator.
- 10.x: explicit batch is the default; builder flags and calibrators still work (calibrators deprecated).
- 11.x: weak typing is gone: networks are strongly typed, so FP16 comes from an FP16 ONNX and INT8 from a Q/DQ
  ONNX (kasf-export produces both), with no builder precision flags and no calibrator.

The engine file is exactly what TensorRT serialises; kasf's metadata goes into a sidecar JSON beside it
(:func:`kasf.artefact.write_sidecar`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kasf.artefact import INPUT_NAME, write_sidecar
from kasf.tensorrt_api import import_tensorrt, tensorrt_major


class EngineBuildError(RuntimeError):
    """The ONNX could not be parsed or TensorRT could not build an engine from it."""


@dataclass
class BuildOptions:
    precision: str = "fp32"  # fp32 | fp16 | int8
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max of the optimisation profile
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    calibration: np.ndarray | None = None  # (N, T, J, 3) windows for TensorRT < 11 INT8
    calibration_cache: Path | None = None
    plugin_library: Path | None = None


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def _load_plugins(trt: Any, logger: Any, options: BuildOptions) -> None:
    """Register kasf's AnatomyFeatures plugin creator before parsing (ONNX graphs with --anatomy-op plugin)."""
    from kasf.anatomy_op.tensorrt_plugin import register_plugin

    register_plugin(trt, options.plugin_library)
    trt.init_libnvinfer_plugins(logger, "")


def _calibrator(trt: Any, windows: np.ndarray, cache: Path | None, batch: int) -> Any:
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context the calibrator's buffers live in)
    import pycuda.driver as cuda

    class WindowCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds calibration windows batch by batch; reuses a calibration cache when one exists."""

        def __init__(self) -> None:
            super().__init__()
            self.windows = np.ascontiguousarray(windows, dtype=np.float32)
            self.batch = batch
            self.index = 0
            self.device = cuda.mem_alloc(self.windows[:batch].nbytes)

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + self.batch > len(self.windows):
                return None
            cuda.memcpy_htod(self.device, self.windows[self.index:self.index + self.batch])
            self.index += self.batch
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache and cache.exists() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache:
                cache.write_bytes(bytes(data))

    return WindowCalibrator()


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, metadata: Mapping[str, str],
                 options: BuildOptions) -> Path:
    """Parse the ONNX, build a serialised engine with the requested precision and profile, write it + sidecar."""
    trt = import_tensorrt()
    major = tensorrt_major(trt)
    logger = _logger(trt)
    if metadata.get("anatomy_op") == "plugin":
        _load_plugins(trt, logger, options)
    builder = trt.Builder(logger)
    if major >= 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif major >= 10:
        flags = 0
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if major < 11:
        if options.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot take fall back to FP16, not FP32
            if options.calibration is None and not (options.calibration_cache and options.calibration_cache.exists()):
                raise EngineBuildError("INT8 on TensorRT < 11 needs calibration windows (--calib) or a cache")
            windows = options.calibration if options.calibration is not None else np.zeros((0,))
            config.int8_calibrator = _calibrator(trt, windows, options.calibration_cache, options.batch[1])
    # On 11.x the precision is carried by the ONNX itself (FP16 graph or Q/DQ nodes): see kasf-export.

    profile = builder.create_optimization_profile()
    shape = tuple(network.get_input(0).shape)[1:]
    low, opt, high = options.batch
    profile.set_shape(INPUT_NAME, (low, *shape), (opt, *shape), (high, *shape))
    config.add_optimization_profile(profile)
    if major < 11 and options.precision == "int8":
        config.set_calibration_profile(profile)

    cache = None
    if options.timing_cache:
        blob = options.timing_cache.read_bytes() if options.timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                               "(see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_suffix(engine_path.suffix + ".tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    if cache is not None and options.timing_cache:
        options.timing_cache.write_bytes(bytes(cache.serialize()))
    write_sidecar(engine_path, {**metadata, "tensorrt_version": str(trt.__version__),
                                "gpu": _gpu_name()})
    return engine_path


def _gpu_name() -> str:
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        return cuda.Device(0).name()
    except Exception:  # the sidecar is informative; a missing name must not fail a finished build
        return ""
