"""Running windows through a deserialised TensorRT engine (the Lifter's ``.engine`` backend, loaded in lifter.py).

Why its own module: an engine accepts only the batch sizes of its optimisation profile (a ``--batch 4`` engine
takes exactly 4), so every call is cut and padded to fit (:func:`kasf.tensorrt_api.plan_batches`); and the
copies go through page-locked host buffers, which asynchronous copies need. The logic runs with fake CUDA and
TensorRT objects in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kasf.artefact import INPUT_NAME
from kasf.tensorrt_api import CudaSession, plan_batches


class EngineRunError(RuntimeError):
    """TensorRT refused an input shape or failed to run (raised by ``Lifter.predict`` on an engine)."""


class EngineRunner:
    """``runner(windows) -> outputs`` for windows (N, T, 17, 3) float32; outputs have the same shape.

    Host and device buffers are allocated for the largest batch seen so far and reused; ``keep`` holds TensorRT
    objects (runtime, engine) that must outlive the execution context.
    """

    def __init__(self, session: CudaSession, context: Any, output_name: str, low: int, high: int,
                 keep: tuple[Any, ...] = ()) -> None:
        self.session = session
        self.context = context
        self.output_name = output_name
        self.low, self.high = low, high
        self.keep = keep
        with session.activate():
            self.stream = session.driver.Stream()
        self._capacity = 0
        self._buffers: tuple[Any, Any, Any, Any] | None = None  # host in, host out, device in, device out

    def _staging(self, size: int, window_shape: tuple[int, ...]) -> tuple[Any, Any, Any, Any]:
        if self._buffers is None or size > self._capacity or self._buffers[0].shape[1:] != window_shape:
            driver = self.session.driver
            host_in = driver.pagelocked_empty((size, *window_shape), np.float32)
            host_out = driver.pagelocked_empty((size, *window_shape), np.float32)
            self._buffers = (host_in, host_out, driver.mem_alloc(host_in.nbytes), driver.mem_alloc(host_out.nbytes))
            self._capacity = size
        return self._buffers

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        outputs = np.empty_like(windows)
        driver, context = self.session.driver, self.context
        with self.session.activate():
            for start, stop, size in plan_batches(len(windows), self.low, self.high):
                count = stop - start
                host_in, host_out, device_in, device_out = self._staging(size, windows.shape[1:])
                host_in[:count] = windows[start:stop]
                host_in[count:size] = windows[stop - 1]  # padding: copies of the last window, outputs dropped
                shape = (size, *windows.shape[1:])
                if not context.set_input_shape(INPUT_NAME, shape):
                    raise EngineRunError(f"the engine refused input shape {shape}: its profile takes batches "
                                         f"{self.low}..{self.high}")
                context.set_tensor_address(INPUT_NAME, int(device_in))
                context.set_tensor_address(self.output_name, int(device_out))
                driver.memcpy_htod_async(device_in, host_in[:size], self.stream)
                if not context.execute_async_v3(self.stream.handle):
                    raise EngineRunError(f"TensorRT failed to run a batch of {size} (see the TensorRT log)")
                driver.memcpy_dtoh_async(host_out[:size], device_out, self.stream)
                self.stream.synchronize()
                outputs[start:stop] = host_out[:count]
        return outputs
