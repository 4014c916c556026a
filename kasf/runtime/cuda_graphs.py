"""The lifter's forward captured in CUDA graphs: one replay per call instead of thousands of kernel launches.

Why: on a GPU the eager forward is launch-bound. A 27-frame window runs thousands of small kernels, so at batch 1
the GPU idles while the host launches them, and batch 64 costs about what batch 1 does. A CUDA graph records the
kernels once and replays them with one launch. torch.compile's 'reduce-overhead' mode does the same after a
compile that takes minutes on the released size; capturing the eager forward directly takes seconds.

How: one graph per batch bucket (powers of two up to ``max_batch``; a smaller batch is padded into its bucket and
the padding's outputs dropped), static input and output buffers, one memory pool shared by all graphs, and the
weights converted once to the asked dtype (not autocast per op). Nothing in the replayed forward synchronises
with the host; the caller's copy of the output back to the host is the only sync.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def batch_bucket(batch: int, max_batch: int) -> int:
    """The captured batch size that serves ``batch`` windows: the next power of two, at most ``max_batch``."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if batch > max_batch:
        raise ValueError(f"batch {batch} exceeds the largest captured batch {max_batch}; split it")
    bucket = 1
    while bucket < batch:
        bucket *= 2
    return min(bucket, max_batch)


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


class CudaGraphForward:
    """``forward(x)`` for a (B, T, 17, 3) CUDA tensor, replaying a graph captured for B's bucket on first use.

    The returned tensor is a view of the graph's static output (in ``dtype``): copy it (``.float().cpu()``) before
    the next call. Not thread-safe: one instance per thread (kasf-stream lifts from one thread).
    """

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", max_batch: int = 256,
                 warmup_calls: int = 3) -> None:
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {tuple(DTYPES)}, got {precision!r}")
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {device}")
        self.dtype = DTYPES[precision]
        # Weights converted once; the caller's model keeps its own dtype (it may be the parity reference).
        self.model = (copy.deepcopy(model).to(self.dtype) if self.dtype != torch.float32 else model).eval()
        self.device = device
        self.max_batch = max_batch
        self.warmup_calls = warmup_calls
        self.n_frames = int(getattr(model, "n_frames", 27))
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, _Captured] = {}

    def capture(self, bucket: int) -> _Captured:
        """Warm up on a side stream (cuBLAS/cuDNN pick their kernels and workspaces), then record one forward."""
        static_input = torch.zeros(bucket, self.n_frames, 17, 3, device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.model(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            static_output = self.model(static_input)
        captured = _Captured(graph, static_input, static_output)
        self._graphs[bucket] = captured
        return captured

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        bucket = batch_bucket(batch, self.max_batch)
        captured = self._graphs.get(bucket) or self.capture(bucket)
        captured.static_input[:batch].copy_(x)
        if batch < bucket:  # padding rows: repeat the last window so the graph sees valid poses
            captured.static_input[batch:].copy_(x[-1:].expand(bucket - batch, *x.shape[1:]))
        captured.graph.replay()
        return captured.static_output[:batch]
