"""Kinematic Anatomy features of KASportsFormer: the Bone Extractor and the Limb Fuser.

The Bone Extractor is parameter-free; it calls :func:`kasf.anatomy_op.features.anatomy_features`, which runs the
native operator of ``cpp_ext`` or its pure-PyTorch definition. Both modules use fixed index buffers (not Python
lists) so that tracing, ONNX export and torch.compile see plain gathers.
"""

from __future__ import annotations

import torch
from torch import nn

from kasf import skeleton
from kasf.anatomy_op import native
from kasf.anatomy_op.features import anatomy_features


class BoneExtractor(nn.Module):
    """Bone vectors of the 2D input as (direction, length) tokens; no parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proximal", torch.tensor(skeleton.BONE_PROXIMAL), persistent=False)
        self.register_buffer("distal", torch.tensor(skeleton.BONE_DISTAL), persistent=False)
        # Decide native vs pure PyTorch now, outside any forward: the first decision reads files and imports
        # kasf._C, which torch.compile cannot trace (it would break the graph at the Bone Extractor).
        native.load()

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
    does (102 small Linear layers and 17 gathers); ``grouped`` runs all 51 scalar MLPs as two dense matrix products
    whose weights are the MLPs' weights scattered into block matrices (the gathers folded in). Why: two large
    products instead of a hundred tiny ones is what per-node runtimes (ONNX Runtime at batch 1) and GPUs run well;
    the zeros cost ~4 MFLOP per window, nothing beside the blocks.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.grouped = False
        self.mlp_layers = nn.ModuleList(_LimbGroupMLP(len(g), hidden) for g in skeleton.LIMB_GROUPS)
        for i, group in enumerate(skeleton.LIMB_GROUPS):
            self.register_buffer(f"group_index_{i}", torch.tensor(group), persistent=False)
        self._packed_cache: tuple[tuple[int, ...], tuple[torch.Tensor, ...]] | None = None

    def _pack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block weights: w1 (17*3 inputs, 51*hidden), b1 (51*hidden,), w2 (51*hidden, 51), b2 (51,).

        Inputs are indexed joint*3 + channel (the flattened window), MLPs group*3 + channel (the output order).
        """
        channels = 3
        n_mlps = len(self.mlp_layers) * channels
        ref = self.mlp_layers[0].mlp_dir_x.fc1.weight
        w1 = ref.new_zeros(skeleton.NUM_JOINTS * channels, n_mlps * self.hidden)
        w2 = ref.new_zeros(n_mlps * self.hidden, n_mlps)
        b1, b2 = [], []
        for g, (layer, group) in enumerate(zip(self.mlp_layers, skeleton.LIMB_GROUPS)):
            for c, mlp in enumerate((layer.mlp_dir_x, layer.mlp_dir_y, layer.mlp_len)):
                m = g * channels + c
                cols = slice(m * self.hidden, (m + 1) * self.hidden)
                rows = torch.tensor([j * channels + c for j in group], device=ref.device)
                # index_add: a joint listed twice in a group would add both weights, as the gather-then-Linear does.
                w1[:, cols] = w1[:, cols].index_add(0, rows, mlp.fc1.weight.t())
                w2[cols, m] = mlp.fc2.weight[0]
                b1.append(mlp.fc1.bias)
                b2.append(mlp.fc2.bias)
        return w1, torch.cat(b1), w2, torch.cat(b2)

    def _packed(self) -> tuple[torch.Tensor, ...]:
        """Packed weights; cached for inference and rebuilt whenever a weight changes (its version moves).

        An ONNX export (a trace without grad) takes the cached tensors as constants, so the graph holds the two
        block matrices and not the scatter that builds them.
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._pack()
        key = tuple(p._version for p in self.mlp_layers.parameters()) + tuple(
            p.data_ptr() for p in self.mlp_layers.parameters())
        if self._packed_cache is None or self._packed_cache[0] != key:
            self._packed_cache = (key, tuple(t.detach() for t in self._pack()))
        return self._packed_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.grouped:
            channels_first = x.transpose(-1, -2)  # (B, T, 3, J)
            tokens = [
                mlp(channels_first.index_select(-1, getattr(self, f"group_index_{i}")))
                for i, mlp in enumerate(self.mlp_layers)
            ]
            return torch.stack(tokens, dim=-2)  # (B, T, 17, 3)
        w1, b1, w2, b2 = self._packed()
        hidden = nn.functional.gelu(x.flatten(-2) @ w1 + b1)  # (B, T, 51 * hidden)
        return (hidden @ w2 + b2).unflatten(-1, (len(self.mlp_layers), 3))
