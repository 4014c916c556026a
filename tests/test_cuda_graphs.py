"""CUDA-graph inference path: bucket planning and refusals on any machine; parity with eager fp32 on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kasf.runtime.cuda_graphs import CudaGraphForward, batch_bucket
from kasf.runtime.lifter import Lifter, LifterError
from tests.conftest import save_tiny_stream_checkpoint


@pytest.mark.parametrize("batch, bucket", [(1, 1), (2, 2), (3, 4), (5, 8), (64, 64), (65, 128), (200, 256)])
def test_batches_pad_to_the_next_power_of_two(batch: int, bucket: int) -> None:
    assert batch_bucket(batch, 256) == bucket


def test_bucket_never_exceeds_the_largest_capture() -> None:
    assert batch_bucket(100, 100) == 100
    with pytest.raises(ValueError, match="exceeds the largest captured batch 64"):
        batch_bucket(65, 64)
    with pytest.raises(ValueError, match=">= 1"):
        batch_bucket(0, 64)


def test_a_cpu_model_is_refused_not_silently_run_eager() -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphForward(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="precision"):
        CudaGraphForward(torch.nn.Linear(3, 3), precision="int8")


def test_lifter_asks_for_cuda_graphs_on_the_cpu(tmp_path) -> None:
    checkpoint = save_tiny_stream_checkpoint(tmp_path)
    with pytest.raises(LifterError, match="CUDA graphs need device='cuda'"):
        Lifter.load(checkpoint, device="cpu", cuda_graphs=True)
    lifter = Lifter.load(checkpoint, device="cpu")  # the default on the CPU: eager, no graphs
    assert "cuda_graphs" not in lifter.metadata


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


@needs_gpu
@pytest.mark.parametrize("precision, tolerance_mm", [("fp32", 0.1), ("fp16", 1.0), ("bf16", 1.0)])
def test_graph_replay_matches_eager_fp32(tmp_path, precision: str, tolerance_mm: float) -> None:
    """kasf-export's parity rules: fp32 within 0.1 mm mean joint distance, reduced precision within 1 mm."""
    from kasf.export.windows import load_real_windows
    from kasf.conventions import to_millimetres

    real = load_real_windows(27)
    eager = Lifter.load("demo", device="cuda", cuda_graphs=False)
    graphed = Lifter.load("demo", device="cuda", precision=precision, cuda_graphs=True)
    reference = to_millimetres(eager.predict(real.inputs), real.image_wh, real.factor)
    for batch in (1, 3, len(real.inputs)):  # 3 pads into the bucket of 4
        got = to_millimetres(graphed.predict(real.inputs[:batch]), real.image_wh, real.factor)
        distance = np.linalg.norm(got - reference[:batch], axis=-1).mean()
        assert distance < tolerance_mm, f"{precision} batch {batch}: {distance:.4f} mm from eager fp32"
