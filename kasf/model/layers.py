"""Building blocks of the spatio-temporal transformer: attention, bone cross-attention and graph mixers.

Shapes are written for export: the batch is the only free dimension (reshapes use -1 for it), joints and frames
are fixed at construction, adjacency matrices are buffers and top-k uses a constant k.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kasf import skeleton


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero a sample's residual branch with probability drop_prob."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: nn.Dropout,
            fused: bool) -> torch.Tensor:
    """softmax(q k^T * scale) v; fused uses PyTorch's scaled_dot_product_attention kernels (same function)."""
    if fused:
        # (B, H, N, L, d) -> 4D (B, H*N, L, d): the layout every SDPA kernel and ONNX exporter accepts.
        heads, groups = q.shape[1], q.shape[2]
        p = dropout.p if dropout.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2),
                                                         dropout_p=p, scale=scale)
        return out.unflatten(1, (heads, groups))
    attn = (q @ k.transpose(-2, -1)) * scale
    return dropout(attn.softmax(dim=-1)) @ v


class _OrtAttention(torch.autograd.Function):
    """Multi-head attention over token rows (N, L, D) that exports as ONE ONNX Runtime contrib node.

    Eager it is scaled_dot_product_attention. In an ONNX export, self-attention becomes com.microsoft::Attention
    (the QKV projection, the scaled dot product and the head merge in one kernel) and cross-attention
    com.microsoft::MultiHeadAttention. Why: the standard-op form is a 6D reshape, a transpose, a split, three
    squeezes, two batched MatMuls, a Softmax and another transpose per module, about 2,000 nodes on the released
    size that ORT's optimiser does not fuse; ORT runs each node with its own dispatch and copy.
    Only ONNX Runtime runs these nodes, so only the ``onnxruntime`` inference path uses this.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                scale: float) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (N, H, L, d)

        out = nn.functional.scaled_dot_product_attention(heads(query), heads(key), heads(value), scale=scale)
        return out.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, num_heads: int, scale: float) -> Any:
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=num_heads, scale_f=scale)
        out.setType(query.type())  # (N, L, D) like the query: keeps the exporter's shape inference whole
        return out


class _OrtSelfAttention(torch.autograd.Function):
    """Self-attention with its QKV projection as one com.microsoft::Attention node (see _OrtAttention)."""

    @staticmethod
    def forward(ctx: Any, tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                scale: float) -> torch.Tensor:
        q, k, v = nn.functional.linear(tokens, weight, bias).chunk(3, dim=-1)
        return _OrtAttention.forward(ctx, q, k, v, num_heads, scale)

    @staticmethod
    def symbolic(g: Any, tokens: Any, weight: Any, bias: Any, num_heads: int, scale: float) -> Any:
        weight_t = g.op("Transpose", weight, perm_i=[1, 0])  # (D, 3D): ORT's layout; folded into the initializer
        out = g.op("com.microsoft::Attention", tokens, weight_t, bias, num_heads_i=num_heads, scale_f=scale)
        out.setType(tokens.type())
        return out


# The forms of attention an ONNX Runtime CPU export can write (benchmarks/ort_attention_forms.py times them):
# 'contrib': com.microsoft Attention (self) and MultiHeadAttention (cross) nodes, the fastest with 2+ intra-op
# threads; 'standard': _row_heads and _attend, ~10 % faster in single-threaded sessions (kasf-stream,
# Lifter workers); 'sdpa': what torch.onnx writes for scaled_dot_product_attention (standard ops and shape
# arithmetic), kept as the A/B's third arm. Measured in docs/cpu_inference.md.
ORT_ATTENTION_FORMS = ("contrib", "standard", "sdpa")
# What kasf-export offers: sdpa timed like standard but carries shape arithmetic (340 more nodes on the demo).
ORT_ATTENTION_CHOICES = ("contrib", "standard")


def _row_heads(packed: torch.Tensor, parts: int, num_heads: int, length: int, dim: int) -> torch.Tensor:
    """Token rows (N, L, parts*D) -> (parts, N, H, L, d) in one Reshape and one Transpose for all parts.

    With _attend's matmul-softmax-matmul, the 'standard' export form for ONNX Runtime CPU graphs without contrib
    attention nodes: shapes from constants (batch as -1), (N, H, L, d) batched MatMuls that ORT runs as one batched GEMM
    call each (its Attention kernel loops over small GEMMs per sequence and head), and a scalar scale that ORT's
    optimiser folds into the first product.
    """
    return packed.reshape(-1, length, parts, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)


class Attention(nn.Module):
    """Multi-head self-attention over the joints of a frame (spatial) or the frames of a joint (temporal)."""

    def __init__(self, dim: int, num_heads: int, mode: str, n_frames: int, num_joints: int,
                 qkv_bias: bool = False, qk_scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim_feat {dim} is not divisible by num_heads {num_heads}")
        self.mode, self.num_heads, self.head_dim = mode, num_heads, dim // num_heads
        self.n_frames, self.num_joints, self.dim = n_frames, num_joints, dim
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused = False  # True: scaled_dot_product_attention; False: the reference's matmul-softmax-matmul
        self.onnxruntime_nodes = False  # True: an ONNX export writes the ORT-CPU form of the attention (below)
        self.onnxruntime_attention = "contrib"  # which of ORT_ATTENTION_FORMS that is
        self.native_rows = False  # True: kasf::attention_rows (CPU training; see KASportsFormer.set_training_attention)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, t: torch.Tensor, parts: int) -> torch.Tensor:
        """(B, T, J, parts*D) -> (parts, B, H, T, J, d) spatial or (parts, B, H, J, T, d) temporal."""
        t = t.reshape(-1, self.n_frames, self.num_joints, parts, self.num_heads, self.head_dim)
        if self.mode == "spatial":
            return t.permute(3, 0, 4, 1, 2, 5)
        return t.permute(3, 0, 4, 2, 1, 5)

    def _merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Back to (B, T, J, D) with channel = head * d + i (the reference's head-major order)."""
        t = t.permute(0, 2, 3, 1, 4) if self.mode == "spatial" else t.permute(0, 3, 2, 1, 4)
        return t.reshape(-1, self.n_frames, self.num_joints, self.dim)

    def _tokens(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, J, D) -> rows of the sequences attended over: (B*T, J, D) spatial, (B*J, T, D) temporal.

        Shapes from the module's own sizes, not from ``t.shape``: a traced ``t.shape`` becomes Shape, Gather,
        Unsqueeze and Concat nodes that ONNX Runtime evaluates on every run of a dynamic-batch graph.
        """
        if self.mode == "spatial":
            return t.reshape(-1, self.num_joints, self.dim)
        return t.transpose(1, 2).reshape(-1, self.n_frames, self.dim)

    def _untokens(self, t: torch.Tensor) -> torch.Tensor:
        if self.mode == "spatial":
            return t.reshape(-1, self.n_frames, self.num_joints, self.dim)
        return t.reshape(-1, self.num_joints, self.n_frames, self.dim).transpose(1, 2)

    def _exports_ort_nodes(self) -> bool:
        return self.onnxruntime_nodes and self.onnxruntime_attention != "sdpa" and torch.onnx.is_in_onnx_export()

    def _ort_attention(self, queries: torch.Tensor | None, packed: torch.Tensor) -> torch.Tensor:
        """Token rows attended in the ORT-CPU export form chosen by ``onnxruntime_attention`` ('standard', or
        'contrib' for cross-attention): queries (N, L, D) and keys and values packed (N, L, 2D), or queries None
        and all three packed (N, L, 3D)."""
        length = self.num_joints if self.mode == "spatial" else self.n_frames
        form, dim = self.onnxruntime_attention, self.dim
        if form == "standard":  # one transpose for all packed parts
            if queries is None:
                q, k, v = _row_heads(packed, 3, self.num_heads, length, dim).unbind(0)
            else:
                q = _row_heads(queries, 1, self.num_heads, length, dim)[0]
                k, v = _row_heads(packed, 2, self.num_heads, length, dim).unbind(0)
            out = _attend(q, k, v, self.scale, self.attn_drop, fused=False)
            return out.transpose(1, 2).reshape(-1, length, dim)
        k, v = packed.split(dim, dim=-1)  # contrib cross-attention; constant sizes: no Shape node
        return _OrtAttention.apply(queries, k, v, self.num_heads, self.scale)

    def _native_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same attention by kasf::attention_rows on (B, T, J, D) rows: no head split, no score tensors."""
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            raise ValueError("the native training attention (kasf::attention_rows) cannot be exported: call "
                             "set_training_attention('reference') before exporting")
        return torch.ops.kasf.attention_rows(q, k, v, self.num_heads, self.mode == "temporal", self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native_rows:
            return self.proj_drop(self.proj(self._native_rows(*self.qkv(x).split(self.dim, dim=-1))))
        if self._exports_ort_nodes():
            if self.onnxruntime_attention == "contrib":
                bias = self.qkv.bias if self.qkv.bias is not None else x.new_zeros(3 * self.dim)
                out = _OrtSelfAttention.apply(self._tokens(x), self.qkv.weight, bias, self.num_heads, self.scale)
            else:
                out = self._ort_attention(None, self.qkv(self._tokens(x)))
            return self.proj_drop(self.proj(self._untokens(out)))
        q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)
        out = self._merge_heads(_attend(q, k, v, self.scale, self.attn_drop, self.fused))
        return self.proj_drop(self.proj(out))


class BoneCrossAttention(Attention):
    """Cross-attention: queries from the pose stream, keys and values from the limb tokens."""

    def __init__(self, dim: int, num_heads: int, mode: str, n_frames: int, num_joints: int,
                 qkv_bias: bool = False, qk_scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, mode, n_frames, num_joints, qkv_bias, qk_scale, attn_drop, proj_drop)
        del self.qkv
        self.qkv_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.qkv_kv = nn.Linear(dim, dim * 2, bias=qkv_bias)

    def forward(self, x: torch.Tensor, limb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.native_rows:
            k, v = self.qkv_kv(limb).split(self.dim, dim=-1)
            return self.proj_drop(self.proj(self._native_rows(self.qkv_q(x), k, v)))
        if self._exports_ort_nodes():
            out = self._ort_attention(self.qkv_q(self._tokens(x)), self.qkv_kv(self._tokens(limb)))
            return self.proj_drop(self.proj(self._untokens(out)))
        q = self._split_heads(self.qkv_q(x), 1)[0]
        k, v = self._split_heads(self.qkv_kv(limb), 2).unbind(0)
        out = self._merge_heads(_attend(q, k, v, self.scale, self.attn_drop, self.fused))
        return self.proj_drop(self.proj(out))


def normalize_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with D the row sums (the reference's normalize_digraph), batched over leading dims."""
    inv_sqrt_deg = adj.sum(dim=-1).pow(-0.5)
    return inv_sqrt_deg.unsqueeze(-1) * adj * inv_sqrt_deg.unsqueeze(-2)


def spatial_adjacency(num_joints: int = skeleton.NUM_JOINTS) -> torch.Tensor:
    if num_joints != skeleton.NUM_JOINTS:
        raise ValueError(f"the spatial graph is defined for {skeleton.NUM_JOINTS} joints, got num_joints={num_joints}")
    adj = torch.zeros(num_joints, num_joints)
    for joint, neighbours in enumerate(skeleton.JOINT_NEIGHBOURS):
        adj[joint, list(neighbours)] = 1.0
    return adj


def temporal_chain_adjacency(n_frames: int, connection_len: int) -> torch.Tensor:
    """Fixed temporal graph used when use_temporal_similarity is off: frame i links to i..i+connection_len."""
    adj = torch.zeros(n_frames, n_frames)
    for i in range(n_frames):
        adj[i, i:min(n_frames, i + connection_len + 1)] = 1.0
    return adj


class GraphMixer(nn.Module):
    """Graph convolution over joints (fixed skeleton graph) or frames (k-nearest by feature similarity).

    out = ReLU(X + BatchNorm(A_n V(X) + U(X))), the BatchNorm's channels being the graph nodes.
    """

    def __init__(self, dim: int, mode: str, n_frames: int, num_joints: int, neighbour_num: int = 4,
                 use_temporal_similarity: bool = True, temporal_connection_len: int = 1) -> None:
        super().__init__()
        self.mode, self.n_frames, self.num_joints, self.dim = mode, n_frames, num_joints, dim
        self.use_similarity = mode == "temporal" and use_temporal_similarity
        if self.use_similarity and not 1 <= neighbour_num <= n_frames:
            raise ValueError(f"neighbour_num must be in [1, n_frames={n_frames}], got {neighbour_num}")
        self.neighbour_num = neighbour_num
        num_nodes = num_joints if mode == "spatial" else n_frames
        self.U = nn.Linear(dim, dim)
        self.V = nn.Linear(dim, dim)
        self.batch_norm = nn.BatchNorm1d(num_nodes)
        self.relu = nn.ReLU()
        nn.init.normal_(self.U.weight, 0.0, math.sqrt(2.0 / dim))
        nn.init.normal_(self.V.weight, 0.0, math.sqrt(2.0 / dim))
        if mode == "spatial":
            fixed = spatial_adjacency(num_joints)
        else:
            fixed = temporal_chain_adjacency(n_frames, temporal_connection_len)
        # Normalised once here; not part of the state dict (the reference keeps it out too).
        self.register_buffer("norm_adj", normalize_adjacency(fixed), persistent=False)

    def _similarity_adjacency(self, nodes: torch.Tensor) -> torch.Tensor:
        similarity = nodes @ nodes.transpose(-2, -1)
        threshold = similarity.topk(self.neighbour_num, dim=-1).values[..., -1:]
        return normalize_adjacency((similarity >= threshold).to(nodes.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "spatial":
            nodes = x.reshape(-1, self.num_joints, self.dim)
        else:
            nodes = x.transpose(1, 2).reshape(-1, self.n_frames, self.dim)
        adj = self._similarity_adjacency(nodes) if self.use_similarity else self.norm_adj.to(nodes.dtype)
        out = self.relu(nodes + self.batch_norm(adj @ self.V(nodes) + self.U(nodes)))
        if self.mode == "spatial":
            return out.reshape(-1, self.n_frames, self.num_joints, self.dim)
        return out.reshape(-1, self.num_joints, self.n_frames, self.dim).transpose(1, 2)


class FormerModule(nn.Module):
    """Pre-norm residual unit: x + s1 * mixer(norm1(x)), then x + s2 * mlp(norm2(x))."""

    def __init__(self, dim: int, mode: str, mixer_type: str, n_frames: int, num_joints: int,
                 mlp_ratio: float = 4.0, act_layer: type[nn.Module] = nn.GELU, attn_drop: float = 0.0,
                 drop: float = 0.0, drop_path: float = 0.0, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, use_layer_scale: bool = True, layer_scale_init_value: float = 1e-5,
                 use_temporal_similarity: bool = True, temporal_connection_len: int = 1,
                 neighbour_num: int = 4, limb_norm: bool = True) -> None:
        super().__init__()
        self.mixer_type = mixer_type
        self.norm1 = nn.LayerNorm(dim)
        if limb_norm or mixer_type == "bone":
            # KASportsFormer has it in every module (only the bone mixer uses it); MotionAGFormer has none.
            self.norm1_limb = nn.LayerNorm(dim)
        if mixer_type == "attention":
            self.mixer = Attention(dim, num_heads, mode, n_frames, num_joints, qkv_bias, qk_scale, attn_drop, drop)
        elif mixer_type == "bone":
            self.mixer = BoneCrossAttention(dim, num_heads, mode, n_frames, num_joints, qkv_bias, qk_scale,
                                            attn_drop, drop)
        elif mixer_type == "graph":
            self.mixer = GraphMixer(dim, mode, n_frames, num_joints, neighbour_num, use_temporal_similarity,
                                    temporal_connection_len)
        else:
            raise ValueError(f"unknown mixer_type {mixer_type!r}")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer, drop)
        self.drop_path = DropPath(drop_path)
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor, limb: torch.Tensor | None = None) -> torch.Tensor:
        if self.mixer_type == "bone":
            mixed = self.mixer(self.norm1(x), self.norm1_limb(limb))
        else:
            mixed = self.mixer(self.norm1(x))
        if self.use_layer_scale:
            x = x + self.drop_path(self.layer_scale_1 * mixed)
            return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.mlp(self.norm2(x)))
