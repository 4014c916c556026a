"""Kinematic Anatomy features of KASportsFormer: the Bone Extractor and the Limb Fuser.

The Bone Extractor is parameter-free; it calls :func:`kasf.anatomy_op.features.anatomy_features`, which runs the
native operator of ``cpp_ext`` or its pure-PyTorch definition. Both modules use fixed index buffers (not Python
lists) so that tracing, ONNX export and torch.compile see plain gathers.
"""

from __future__ import annotations

import torch
from torch import nn

from kasf import skeleton
from kasf.anatomy_op.features import anatomy_features


class BoneExtractor(nn.Module):
    """Bone vectors of the 2D input as (direction, length) tokens; no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proximal", torch.tensor(skeleton.BONE_PROXIMAL), persistent=False)
        self.register_buffer("distal", torch.tensor(skeleton.BONE_DISTAL), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return anatomy_features(x, self.proximal, self.distal)  # native op or pure PyTorch: anatomy_op decides


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
    """17 limb tokens, each fused by small MLPs from a fixed group of input joints (module name bone_refusion).

    Two paths compute the same function: the reference path (default) loops over the groups as the reference code
    does; ``grouped`` runs all 51 scalar MLPs as two batched contractions over zero-padded weights.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.grouped = False
        self.mlp_layers = nn.ModuleList(_LimbGroupMLP(len(g), hidden) for g in skeleton.LIMB_GROUPS)
        for i, group in enumerate(skeleton.LIMB_GROUPS):
            self.register_buffer(f"group_index_{i}", torch.tensor(group), persistent=False)
        width = max(len(g) for g in skeleton.LIMB_GROUPS)
        padded = torch.tensor([list(g) + [0] * (width - len(g)) for g in skeleton.LIMB_GROUPS])
        self.register_buffer("padded_index", padded.flatten(), persistent=False)  # (17 * width,)
        self.group_width = width
        self._packed_cache: tuple[tuple[int, ...], tuple[torch.Tensor, ...]] | None = None

    def _pack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weights of the 51 MLPs stacked as (3 channels, 17 groups, ...), zero where a group is narrower."""
        w1, b1, w2, b2 = [], [], [], []
        for layer in self.mlp_layers:
            for mlp in (layer.mlp_dir_x, layer.mlp_dir_y, layer.mlp_len):
                weight = mlp.fc1.weight  # (hidden, n_g)
                w1.append(nn.functional.pad(weight, (0, self.group_width - weight.shape[1])).t())
                b1.append(mlp.fc1.bias)
                w2.append(mlp.fc2.weight[0])
                b2.append(mlp.fc2.bias[0])
        groups = len(self.mlp_layers)

        def stack(items: list[torch.Tensor]) -> torch.Tensor:  # (groups*3, ...) -> (3, groups, ...)
            t = torch.stack(items)
            return t.reshape(groups, 3, *t.shape[1:]).transpose(0, 1)

        return stack(w1), stack(b1), stack(w2), stack(b2)

    def _packed(self) -> tuple[torch.Tensor, ...]:
        """Packed weights; cached for inference and rebuilt whenever a weight changes (its version moves)."""
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._pack()
        key = tuple(p._version for p in self.mlp_layers.parameters()) + tuple(
            p.data_ptr() for p in self.mlp_layers.parameters())
        if self._packed_cache is None or self._packed_cache[0] != key:
            self._packed_cache = (key, tuple(t.detach() for t in self._pack()))
        return self._packed_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_first = x.transpose(-1, -2)  # (B, T, 3, J)
        if not self.grouped:
            tokens = [
                mlp(channels_first.index_select(-1, getattr(self, f"group_index_{i}")))
                for i, mlp in enumerate(self.mlp_layers)
            ]
            return torch.stack(tokens, dim=-2)  # (B, T, 17, 3)
        w1, b1, w2, b2 = self._packed()
        groups = channels_first.index_select(-1, self.padded_index)
        groups = groups.reshape(*groups.shape[:-1], len(self.mlp_layers), self.group_width)  # (B, T, 3, 17, w)
        hidden = nn.functional.gelu(torch.einsum("btcgw,cgwh->btcgh", groups, w1) + b1)
        out = torch.einsum("btcgh,cgh->btcg", hidden, w2) + b2  # (B, T, 3, 17)
        return out.transpose(-1, -2)
