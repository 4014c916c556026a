"""A per-frame MLP lifter (Martinez et al., 2017): the baseline a temporal model has to beat.

Each frame's 17 x (x, y, confidence) goes through linear -> residual blocks (linear, BatchNorm, ReLU, dropout,
twice) -> linear to 17 x 3, with no information shared between frames. It takes and returns the same windows as
KASportsFormer, (B, n_frames, 17, 3) -> (B, n_frames, 17, 3), so training, evaluation, export and the runtime
handle it unchanged and every comparison with the temporal model is one config away.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kasf import skeleton
from kasf.model.input_norm import canonical_input, check_input_norm, check_window, restore_size

MODEL_NAME = "mlp"


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PerFrameMLP(nn.Module):
    """2D keypoint windows (B, n_frames, 17, dim_in) -> root-relative 3D (B, n_frames, 17, dim_out), frame by frame.

    BatchNorm sees every frame of the batch as its own sample; in eval mode (running statistics) frame t of the
    output depends on frame t of the input only.
    """

    def __init__(self, n_frames: int = 27, num_joints: int = 17, dim_in: int = 3, dim_out: int = 3,
                 hidden_dim: int = 1024, n_blocks: int = 2, dropout: float = 0.25,
                 input_norm: str = "none") -> None:
        super().__init__()
        # 'window' would let frames share their size: not a per-frame model any more
        check_input_norm(input_norm, ("none", "frame"))
        if num_joints != skeleton.NUM_JOINTS:
            raise ValueError(f"the MLP lifter is defined for {skeleton.NUM_JOINTS} Human3.6M joints, "
                             f"got num_joints={num_joints}")
        if dim_in != 3:
            raise ValueError(f"dim_in must be 3 (x, y, confidence), got {dim_in}")
        if hidden_dim < 1 or n_blocks < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"hidden_dim must be >= 1, n_blocks >= 0 and dropout in [0, 1); got hidden_dim="
                             f"{hidden_dim}, n_blocks={n_blocks}, dropout={dropout}")
        # The full architecture, JSON-friendly: what a checkpoint stores and what build() takes back.
        self.config: dict[str, Any] = dict(model_name=MODEL_NAME, n_frames=n_frames, num_joints=num_joints,
                                           dim_in=dim_in, dim_out=dim_out, hidden_dim=hidden_dim,
                                           n_blocks=n_blocks, dropout=dropout, input_norm=input_norm)
        self.input_norm = input_norm
        self.n_frames, self.num_joints, self.dim_in, self.dim_out = n_frames, num_joints, dim_in, dim_out
        self.embed = nn.Sequential(nn.Linear(num_joints * dim_in, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                   nn.ReLU(), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(_ResidualBlock(hidden_dim, dropout) for _ in range(n_blocks))
        self.head = nn.Linear(hidden_dim, num_joints * dim_out)

    def set_inference_path(self, path: str) -> "PerFrameMLP":
        """Accepted for interface parity with KASportsFormer (the Lifter and the CPU export call it); an MLP has
        one path, whatever the name; 'native' (KASportsFormer's C++ CPU forward) has no MLP kernel."""
        if path == "native":
            raise ValueError("inference path 'native' is not available: it runs KASportsFormer / MotionAGFormer; "
                             "the MLP lifter runs as it is")
        if path not in ("fused", "reference", "onnxruntime"):
            raise ValueError(f"inference path must be 'reference', 'fused' or 'onnxruntime', got {path!r}")
        return self

    def check_input(self, x: torch.Tensor) -> None:
        check_window(x, self.n_frames, self.num_joints, self.dim_in, "the MLP lifter")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input(x)
        x, size = canonical_input(x, self.input_norm)
        h = self.embed(x.reshape(-1, self.num_joints * self.dim_in))  # every frame its own sample
        for block in self.blocks:
            h = block(h)
        return restore_size(self.head(h).reshape(-1, self.n_frames, self.num_joints, self.dim_out), size)
