"""KASportsFormer (Yin et al., 2025): the reference network, with the reference's state-dict names.

The constructor takes the reference's keyword names so its YAML configs build this model unchanged.
``use_anatomy=False`` gives MotionAGFormer's attention-plus-graph network (the paper's baseline) from the same
modules; its state-dict names are then MotionAGFormer's (``layers.{i}``, ``fusion``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kasf import skeleton
from kasf.model.anatomy import BoneExtractor, LimbFuser
from kasf.model.input_norm import canonical_input, check_input_norm, check_window, restore_size
from kasf.model.layers import Attention, FormerModule

INFERENCE_PATHS = ("reference", "fused", "onnxruntime", "native")
TRAINING_ATTENTIONS = ("reference", "native")


def native_attention_unavailable(model: nn.Module) -> str:
    """Why set_training_attention('native') cannot run for this model here, or '' when it can."""
    from kasf.anatomy_op import native

    loaded, reason = native.load()
    if not loaded:
        return reason
    if not hasattr(torch.ops.kasf, "attention_rows"):
        return "this build of kasf._C has no kasf::attention_rows (rebuild the extension)"
    widths = {m.dim for m in model.modules() if isinstance(m, Attention) and m.dim % 16}
    if widths:
        return f"kasf::attention_rows needs dim_feat a multiple of 16, got {widths.pop()}"
    dropped = [m.attn_drop.p for m in model.modules() if isinstance(m, Attention) and m.attn_drop.p > 0]
    if dropped:
        return f"attention dropout ({dropped[0]}) is not implemented by kasf::attention_rows"
    return ""


_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}

# Keywords the reference accepts whose non-default values no released KASportsFormer uses and kasf does not build.
_UNSUPPORTED = {"hierarchical": False, "use_tcn": False, "graph_only": False}


class KASportsFormerBlock(nn.Module):
    """Attention, graph and bone cross-attention branches, each spatial then temporal, fused adaptively."""

    def __init__(self, dim: int, branch_kwargs: dict[str, Any], use_adaptive_fusion: bool, use_anatomy: bool) -> None:
        super().__init__()
        self.use_anatomy = use_anatomy
        self.use_adaptive_fusion = use_adaptive_fusion
        self.att_spatial = FormerModule(dim, "spatial", "attention", **branch_kwargs)
        self.att_temporal = FormerModule(dim, "temporal", "attention", **branch_kwargs)
        self.graph_spatial = FormerModule(dim, "spatial", "graph", **branch_kwargs)
        self.graph_temporal = FormerModule(dim, "temporal", "graph", **branch_kwargs)
        n_branches = 3 if use_anatomy else 2
        if use_anatomy:
            self.bone_spatial = FormerModule(dim, "spatial", "bone", **branch_kwargs)
            self.bone_temporal = FormerModule(dim, "temporal", "bone", **branch_kwargs)
        if use_adaptive_fusion:
            fusion = nn.Linear(dim * n_branches, n_branches)
            nn.init.zeros_(fusion.weight)
            nn.init.constant_(fusion.bias, 1.0 / n_branches)
            # Reference names: KASportsFormer 'fusion_three_channel', MotionAGFormer 'fusion'.
            setattr(self, "fusion_three_channel" if use_anatomy else "fusion", fusion)

    def forward(self, x: torch.Tensor, bone: torch.Tensor | None = None, limb: torch.Tensor | None = None
                ) -> torch.Tensor:
        branches = [self.att_temporal(self.att_spatial(x)), self.graph_temporal(self.graph_spatial(x))]
        if self.use_anatomy:
            query = x if bone is None else bone
            branches.append(self.bone_temporal(self.bone_spatial(query, limb), limb))
        if not self.use_adaptive_fusion:
            return torch.stack(branches, dim=0).mean(dim=0)
        fusion = self.fusion_three_channel if self.use_anatomy else self.fusion
        weights = fusion(torch.cat(branches, dim=-1)).softmax(dim=-1)
        out = branches[0] * weights[..., 0:1]
        for i in range(1, len(branches)):
            out = out + branches[i] * weights[..., i:i + 1]
        return out


class KASportsFormer(nn.Module):
    """2D keypoint windows (B, n_frames, 17, 3) -> root-relative 3D (B, n_frames, 17, dim_out)."""

    def __init__(self, n_layers: int = 26, dim_in: int = 3, dim_feat: int = 128, dim_rep: int = 512,
                 dim_out: int = 3, mlp_ratio: float = 4, act_layer: type[nn.Module] | str = nn.GELU,
                 attn_drop: float = 0.0, drop: float = 0.0, drop_path: float = 0.0, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5, use_adaptive_fusion: bool = True, num_heads: int = 8,
                 qkv_bias: bool = False, qkv_scale: float | None = None, hierarchical: bool = False,
                 num_joints: int = 17, use_temporal_similarity: bool = True, temporal_connection_len: int = 1,
                 use_tcn: bool = False, graph_only: bool = False, neighbour_num: int = 4, n_frames: int = 27,
                 use_anatomy: bool = True, input_norm: str = "none") -> None:
        super().__init__()
        check_input_norm(input_norm)
        for name, supported in _UNSUPPORTED.items():
            if locals()[name] != supported:
                raise ValueError(f"{name}={locals()[name]!r} is not supported by kasf (no released KASportsFormer "
                                 f"uses it); set {name}: {supported}")
        if num_joints != skeleton.NUM_JOINTS:
            raise ValueError(f"KASportsFormer's anatomy features are defined for {skeleton.NUM_JOINTS} "
                             f"Human3.6M joints, got num_joints={num_joints}")
        if dim_in != 3:
            raise ValueError(f"dim_in must be 3 (x, y, confidence), got {dim_in}")
        if isinstance(act_layer, str):
            if act_layer.lower() not in _ACTIVATIONS:
                raise ValueError(f"act_layer {act_layer!r} is not one of {sorted(_ACTIVATIONS)}")
            act_layer = _ACTIVATIONS[act_layer.lower()]
        act_name = next((n for n, cls in _ACTIVATIONS.items() if cls is act_layer), None)
        if act_name is None:
            raise ValueError(f"act_layer {act_layer!r} is not one of {sorted(_ACTIVATIONS)}")
        # The full architecture, JSON-friendly: what a checkpoint stores and what build() takes back.
        self.config: dict[str, Any] = dict(
            n_layers=n_layers, dim_in=dim_in, dim_feat=dim_feat, dim_rep=dim_rep, dim_out=dim_out,
            mlp_ratio=mlp_ratio, act_layer=act_name, attn_drop=attn_drop, drop=drop, drop_path=drop_path,
            use_layer_scale=use_layer_scale, layer_scale_init_value=layer_scale_init_value,
            use_adaptive_fusion=use_adaptive_fusion, num_heads=num_heads, qkv_bias=qkv_bias, qkv_scale=qkv_scale,
            hierarchical=hierarchical, num_joints=num_joints, use_temporal_similarity=use_temporal_similarity,
            temporal_connection_len=temporal_connection_len, use_tcn=use_tcn, graph_only=graph_only,
            neighbour_num=neighbour_num, n_frames=n_frames, use_anatomy=use_anatomy, input_norm=input_norm)
        self.input_norm = input_norm  # kasf's addition (kasf.model.input_norm); 'none' is the reference
        self.n_frames, self.num_joints, self.dim_in, self.dim_out = n_frames, num_joints, dim_in, dim_out
        self.use_anatomy = use_anatomy
        self._native: Any = None  # set by set_inference_path('native')

        # Registration order follows the reference so state-dict (and optimizer-state) order match it too.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_joints, dim_feat))
        if use_anatomy:
            self.bone_pos_embed = nn.Parameter(torch.zeros(1, num_joints, dim_feat))
            self.limb_pos_embed = nn.Parameter(torch.zeros(1, num_joints, dim_feat))
        self.joints_embed = nn.Linear(dim_in, dim_feat)
        if use_anatomy:
            self.bone_embed = nn.Linear(3, dim_feat)
            self.limb_embed = nn.Linear(3, dim_feat)
        self.norm = nn.LayerNorm(dim_feat)
        if use_anatomy:
            self.bone_extractor = BoneExtractor()
            self.bone_refusion = LimbFuser()

        drop_path_rates = torch.linspace(0, drop_path, n_layers).tolist() if n_layers else []
        blocks = []
        for rate in drop_path_rates:
            branch_kwargs = dict(
                n_frames=n_frames, num_joints=num_joints, mlp_ratio=mlp_ratio, act_layer=act_layer,
                attn_drop=attn_drop, drop=drop, drop_path=rate, num_heads=num_heads, qkv_bias=qkv_bias,
                qk_scale=qkv_scale, use_layer_scale=use_layer_scale, layer_scale_init_value=layer_scale_init_value,
                use_temporal_similarity=use_temporal_similarity, temporal_connection_len=temporal_connection_len,
                neighbour_num=neighbour_num, limb_norm=use_anatomy)
            blocks.append(KASportsFormerBlock(dim_feat, branch_kwargs, use_adaptive_fusion, use_anatomy))
        # Reference names: 'layers_with_bone' (KASportsFormer), 'layers' (MotionAGFormer).
        setattr(self, "layers_with_bone" if use_anatomy else "layers", nn.ModuleList(blocks))

        self.rep_logit = nn.Sequential()
        self.rep_logit.add_module("fc", nn.Linear(dim_feat, dim_rep))
        self.rep_logit.add_module("act", nn.Tanh())
        self.head = nn.Linear(dim_rep, dim_out)

    def set_inference_path(self, path: str, precision: str = "fp32") -> "KASportsFormer":
        """'reference' (default): the reference code's formulation. 'fused': scaled_dot_product_attention and the
        51 limb MLPs as two dense block-matrix products. 'onnxruntime': 'fused', and an ONNX export writes each
        attention as one ONNX Runtime contrib node (only ORT runs that graph). Same weights, same function
        (fixtures match each path to 1e-5); eager on the 2-core CPU of benchmarks/results the fused path was not
        faster, so it is opt-in. 'native': the whole forward in one call of the C++ operator kasf::lift_cpu
        (kasf.model.native_cpu): CPU, float32 windows, inference only; ``precision='bf16'`` runs its matrix products
        in bf16 (AMX or AVX512-BF16; the other paths take their precision from autocast instead)."""
        if path not in INFERENCE_PATHS:
            raise ValueError(f"inference path must be one of {', '.join(map(repr, INFERENCE_PATHS))}, got {path!r}")
        if precision != "fp32" and path != "native":
            raise ValueError(f"precision={precision!r} applies to the 'native' inference path; {path!r} takes "
                             "reduced precision from torch.autocast")
        self._native = None
        if path == "native":
            from kasf.model.native_cpu import NativeLifter, unavailable_reason

            reason = unavailable_reason(self, precision)
            if reason:
                raise ValueError(f"inference path 'native' is not available: {reason}")
            self._native = NativeLifter(self, precision)
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused = path != "reference"
                module.onnxruntime_nodes = path == "onnxruntime"
            elif isinstance(module, LimbFuser):
                module.grouped = path != "reference"
        return self

    def set_training_attention(self, kind: str) -> "KASportsFormer":
        """'reference': attention as the reference computes it (matmul, softmax, matmul; every device). 'native':
        kasf::attention_rows (cpp_ext), the same function with its own backward, on CPU tensors: attention was a
        third of a compiled bf16 training step of the demo model, and the step ran 1.27x faster with it
        (docs/training.md). Needs the native extension, widths a multiple of 16 and no attention dropout. Not
        saved in checkpoints; an ONNX export must not run with it on (nothing but kasf runs the op)."""
        if kind not in TRAINING_ATTENTIONS:
            raise ValueError(f"training attention must be one of {', '.join(map(repr, TRAINING_ATTENTIONS))}, "
                             f"got {kind!r}")
        if kind == "native":
            reason = native_attention_unavailable(self)
            if reason:
                raise ValueError(f"training attention 'native' is not available: {reason}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.native_rows = kind == "native"
        return self

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers_with_bone if self.use_anatomy else self.layers

    def _check_native(self, x: torch.Tensor) -> None:
        """The native path is an inference kernel: say so rather than silently run something else."""
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError(f"inference path 'native' runs float32 on the CPU; got {x.dtype} on {x.device} "
                             "(use set_inference_path('fused') elsewhere)")
        if torch.is_grad_enabled() or self.training:
            raise ValueError("inference path 'native' has no backward and runs in eval mode only: call model.eval() "
                             "and run under torch.no_grad() / inference_mode, or set_inference_path('reference') "
                             "to train")
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            raise ValueError("inference path 'native' cannot be traced, compiled or exported; export with "
                             "set_inference_path('reference' or 'onnxruntime')")

    def check_input(self, x: torch.Tensor) -> None:
        check_window(x, self.n_frames, self.num_joints, self.dim_in, "KASportsFormer")

    def forward(self, x: torch.Tensor, return_rep: bool = False) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input(x)
        if self._native is not None and not return_rep:
            self._check_native(x)
            return self._native(x)
        x, size = canonical_input(x, self.input_norm)
        if self.use_anatomy:
            bone = self.bone_embed(self.bone_extractor(x)) + self.bone_pos_embed
            limb = self.limb_embed(self.bone_refusion(x)) + self.limb_pos_embed
        else:
            bone = limb = None
        x = self.joints_embed(x) + self.pos_embed
        for i, block in enumerate(self.blocks):
            x = block(x, bone if i == 0 else None, limb)
        x = self.rep_logit(self.norm(x))
        if return_rep:
            return x
        return restore_size(self.head(x), size)
