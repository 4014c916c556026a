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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kasf.artefact import INPUT_NAME, write_sidecar
from kasf.tensorrt_api import (CudaSession, cuda_arch, cuda_session, import_tensorrt, plan_batches,
                               tensorrt_major, timing_cache_name)


class EngineBuildError(RuntimeError):
    """The ONNX could not be parsed or TensorRT could not build an engine from it."""


@dataclass
class BuildOptions:
    precision: str = "fp32"  # fp32 | fp16 | int8
    batch: tuple[int, int, int] = (1, 1, 1)  # min, opt, max of the optimisation profile
    workspace_gb: float = 4.0
    timing_cache_dir: Path | None = None  # holds one timing cache per (GPU, compute capability, TensorRT version)
    calibration: np.ndarray | None = None  # (N, T, J, 3) windows for TensorRT < 11 INT8
    calibration_cache: Path | None = None
    plugin_library: Path | None = None  # a built AnatomyFeatures plugin; None: $KASF_TENSORRT_PLUGIN or the cache


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CalibrationFeed:
    """INT8 calibration windows, one batch of the profile's opt size at a time, as a device pointer.

    Why separate from TensorRT's calibrator class: the batching is plain logic, tested without a GPU. The device
    buffer is allocated on the first batch, so calibrating from a cache alone (no windows) allocates nothing (CUDA
    refuses 0-byte allocations). A short last batch is padded with copies of its last window, since the
    calibration profile accepts only its opt batch.
    """

    def __init__(self, windows: np.ndarray, batch: int, allocate: Callable[[int], Any],
                 copy_to_device: Callable[[Any, np.ndarray], None]) -> None:
        self.windows = np.ascontiguousarray(windows, dtype=np.float32)
        self.batch = batch
        self.plan = plan_batches(len(self.windows), batch, batch)
        self._allocate, self._copy = allocate, copy_to_device
        self._device: Any = None
        self._next = 0

    def next_pointer(self) -> int | None:
        """The device address of the next batch, or None when the windows are used up."""
        if self._next >= len(self.plan):
            return None
        start, stop, size = self.plan[self._next]
        self._next += 1
        chunk = self.windows[start:stop]
        if size > len(chunk):
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        if self._device is None:
            self._device = self._allocate(chunk.nbytes)
        self._copy(self._device, np.ascontiguousarray(chunk))
        return int(self._device)


def make_calibrator(trt: Any, driver: Any, windows: np.ndarray | None, cache: Path | None, batch: int) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` over :class:`CalibrationFeed`, reading and writing ``cache``."""
    shape_tail = () if windows is None else np.shape(windows)[1:]
    feed = CalibrationFeed(np.zeros((0, *shape_tail), np.float32) if windows is None else windows, batch,
                           driver.mem_alloc, driver.memcpy_htod)

    class WindowCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.feed = feed

        def get_batch_size(self) -> int:
            return feed.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            pointer = feed.next_pointer()
            return None if pointer is None else [pointer]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache and cache.exists() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache:
                _write_atomically(cache, bytes(data))

    return WindowCalibrator()


def use_timing_cache(config: Any, path: Path) -> Any:
    """Give the builder the timing cache at ``path`` (empty when absent); returns the cache to save after the build.

    ``set_timing_cache(..., ignore_mismatch=False)`` returns False for a cache made on another GPU or TensorRT
    version: then a warning says so and the build times from an empty cache, which replaces the file.
    """
    blob = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        warnings.warn(f"TensorRT refused the timing cache {path} (made on another GPU or TensorRT version); "
                      "timing from scratch and replacing it", RuntimeWarning, stacklevel=2)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _plugin_metadata(trt: Any, session: CudaSession, options: BuildOptions) -> dict[str, str]:
    """Register kasf's AnatomyFeatures plugin before parsing; returns what the sidecar records to load it again."""
    from kasf.anatomy_op.tensorrt_plugin import build_info, library_for_build, register_plugin

    library = library_for_build(trt, cuda_arch(session.compute_capability), options.plugin_library)
    register_plugin(trt, library)
    return {"plugin_library": str(library.resolve()), "plugin_key": str(build_info(library).get("key", ""))}


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, metadata: Mapping[str, str],
                 options: BuildOptions) -> Path:
    """Parse the ONNX, build a serialised engine with the requested precision and profile, write it + sidecar."""
    trt = import_tensorrt()
    major = tensorrt_major(trt)
    low, opt, high = options.batch
    if not 1 <= low <= opt <= high:
        raise EngineBuildError(f"the batch profile needs 1 <= min <= opt <= max, got {options.batch}")
    # Before any TensorRT object: the builder, the calibrator's buffers and the runtime share the primary context.
    session = cuda_session()
    extra = _plugin_metadata(trt, session, options) if metadata.get("anatomy_op") == "plugin" else {}
    logger = trt.Logger(trt.Logger.WARNING)
    with session.activate():
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
                cache_file = options.calibration_cache
                if options.calibration is None and not (cache_file and cache_file.exists()):
                    raise EngineBuildError("INT8 on TensorRT < 11 needs calibration windows (--calib) or a cache")
                # Held in this scope too, so it outlives the build whatever the bindings keep alive.
                calibrator = make_calibrator(trt, session.driver, options.calibration, cache_file, opt)
                config.int8_calibrator = calibrator
        # On 11.x the precision is carried by the ONNX itself (FP16 graph or Q/DQ nodes): see kasf-export.

        profile = builder.create_optimization_profile()
        shape = tuple(network.get_input(0).shape)[1:]
        profile.set_shape(INPUT_NAME, (low, *shape), (opt, *shape), (high, *shape))
        config.add_optimization_profile(profile)
        if major < 11 and options.precision == "int8":
            config.set_calibration_profile(profile)

        cache_path = cache = None
        if options.timing_cache_dir:
            cache_path = Path(options.timing_cache_dir) / timing_cache_name(
                session.gpu_name, session.compute_capability, str(trt.__version__))
            cache = use_timing_cache(config, cache_path)

        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                               "(see the TensorRT log above)")
    engine_path = Path(engine_path)
    _write_atomically(engine_path, bytes(serialized))
    if cache is not None and cache_path is not None:
        _write_atomically(cache_path, bytes(cache.serialize()))
    write_sidecar(engine_path, {**metadata, **extra, "tensorrt_version": str(trt.__version__),
                                "gpu": session.gpu_name,
                                "compute_capability": ".".join(map(str, session.compute_capability))})
    return engine_path
