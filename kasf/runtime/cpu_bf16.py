"""bf16 on the CPU with weights converted once: the matrix products in bfloat16, everything else in float32.

Why not ``torch.autocast``: it casts every weight on every call (the cast cache lives only inside one autocast
region) and decides per op. Why not ``model.to(torch.bfloat16)``: on the demo checkpoint that moved joints by
6 mm (MPJPE +1.1 mm, over kasf-export's 1 mm bound). Two things lose the accuracy: the residual stream, where
each block adds a layer-scaled update that bf16's 8-bit mantissa rounds away, and the output head, whose bf16
result rounds the 3D coordinates themselves. So only the large products run in bf16 (AMX/AVX512-BF16 make them
~4x faster than fp32 here): each block's MLP as a unit (fc1, GELU, fc2 without casts between) and every other
``nn.Linear`` reading at least ``MIN_IN_FEATURES`` channels, except the head. LayerNorm, attention's softmax, the
graph mixers' similarity top-k and the residual adds stay float32.

Inputs are cast to *contiguous* bf16: a transposed (temporal-branch) bf16 tensor sends ``linear`` to a slow path
(~25x slower than the contiguous one on this machine's 2-core Xeon).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kasf.model.layers import MLP

MIN_IN_FEATURES = 64  # narrower products (the 3-channel embeddings, the limb MLPs) gain nothing, lose accuracy
FLOAT_OUTPUT_LAYERS = ("head", "rep_logit")  # their rounding lands on the coordinates: kept float32


class Bf16Island(nn.Module):
    """Runs ``module`` with bf16 weights (converted here, once): float32 in, float32 out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(torch.bfloat16, memory_format=torch.contiguous_format)).float()


def _convert(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        if name in FLOAT_OUTPUT_LAYERS:
            continue
        if isinstance(child, MLP) or (isinstance(child, nn.Linear) and child.in_features >= MIN_IN_FEATURES):
            setattr(parent, name, Bf16Island(child))
        else:
            _convert(child)


def with_bf16_matmuls(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose large matrix products run in bf16 (see the module docstring); ``model`` is
    unchanged (it may be the fp32 reference of a parity check)."""
    converted = copy.deepcopy(model).eval()
    _convert(converted)
    return converted
