"""Kinematic Anatomy features of KASportsFormer: the Bone Extractor and the Limb Fuser.

The Bone Extractor is parameter-free; :func:`bone_features` is its pure-PyTorch definition, which the native
operator of ``cpp_ext`` must reproduce. Both modules use fixed index buffers (not Python lists) so that tracing,
ONNX export and torch.compile see plain gathers.
"""

from __future__ import annotations

import torch
from torch import nn

from kasf import ops, skeleton


def bone_features(joints_2d: torch.Tensor, proximal: torch.Tensor, distal: torch.Tensor) -> torch.Tensor:
    """(..., 17, 2) joint positions -> (..., 17, 3) bone tokens [dir_x, dir_y, length].

    Sixteen bones plus a 17th token holding the mean direction and mean length. A bone of exactly zero length
    gets length 1 (the reference's in-place guard), so its direction is (0, 0) and its length feature reads 1;
    the fixtures of the reference confirm the guarded value is what the network sees.
    """
    vectors = joints_2d.index_select(-2, proximal) - joints_2d.index_select(-2, distal)
    lengths = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    safe_lengths = torch.where(lengths == 0, torch.ones_like(lengths), lengths)
    directions = vectors / safe_lengths
    bones = torch.cat([directions, safe_lengths], dim=-1)
    return torch.cat([bones, bones.mean(dim=-2, keepdim=True)], dim=-2)


class BoneExtractor(nn.Module):
    """Bone vectors of the 2D input as (direction, length) tokens; no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proximal", torch.tensor(skeleton.BONE_PROXIMAL), persistent=False)
        self.register_buffer("distal", torch.tensor(skeleton.BONE_DISTAL), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if ops.use_native(x):  # the C++/CUDA operator of cpp_ext (kasf/ops.py decides, and says why not)
            return torch.ops.kasf.anatomy_features(x.contiguous())
        return bone_features(x[..., :2], self.proximal, self.distal)


class _ScalarMLP(nn.Module):
    """Linear(n, hidden) -> GELU -> Linear(hidden, 1); names fc1/fc2 as in the reference."""

    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _LimbGroupMLP(nn.Module):
    """One limb token: three scalar MLPs over the group's x, y and confidence channels."""

    def __init__(self, group_size: int, hidden: int) -> None:
        super().__init__()
        self.mlp_dir_x = _ScalarMLP(group_size, hidden)
        self.mlp_dir_y = _ScalarMLP(group_size, hidden)
        self.mlp_len = _ScalarMLP(group_size, hidden)

    def forward(self, group: torch.Tensor) -> torch.Tensor:
        # group: (B, T, 3, n_g), channel-major so each MLP reads one channel of the group.
        return torch.cat(
            [self.mlp_dir_x(group[..., 0, :]), self.mlp_dir_y(group[..., 1, :]), self.mlp_len(group[..., 2, :])],
            dim=-1,
        )


class LimbFuser(nn.Module):
    """17 limb tokens, each fused by small MLPs from a fixed group of input joints (module name bone_refusion)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.mlp_layers = nn.ModuleList(_LimbGroupMLP(len(g), hidden) for g in skeleton.LIMB_GROUPS)
        for i, group in enumerate(skeleton.LIMB_GROUPS):
            self.register_buffer(f"group_index_{i}", torch.tensor(group), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_first = x.transpose(-1, -2)  # (B, T, 3, J)
        tokens = [
            mlp(channels_first.index_select(-1, getattr(self, f"group_index_{i}")))
            for i, mlp in enumerate(self.mlp_layers)
        ]
        return torch.stack(tokens, dim=-2)  # (B, T, 17, 3)
