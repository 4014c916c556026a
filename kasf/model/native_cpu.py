"""The ``native`` CPU inference path: a whole forward in one call of the C++ operator ``kasf::lift_cpu``.

Why: a demo-size window is ~5,000 small operations, and on a CPU eager PyTorch, ONNX Runtime and the compilers spend
most of it dispatching them (docs/cpu_inference.md). The operator (cpp_ext/cpu_blocks.cpp) runs each module as
three passes over the tokens with kernels for the machine's vector width, and the input normalisation, anatomy
features, embeddings and head around them. It takes the model's own weights; the tests hold it to the model's
other inference paths.

The weights are packed once into one flat tensor and packed again whenever a weight's values change (its tensor
version moves), so a loaded model can be fine-tuned and lifted in turn. In bf16 (``precision='bf16'``) every
matrix product's weight is also packed once as bf16 pairs, and the operator runs the products on AMX tiles or with
AVX512-BF16 dot products (float32 sums; norms, softmax, GELU and residuals stay float32).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

# The operator's int[] config, in this order (cpp_ext/cpu_blocks.cpp, ConfigIndex).
CONFIG_KEYS = ("n_layers", "dim_feat", "num_heads", "mlp_hidden", "n_frames", "num_joints", "use_anatomy",
               "use_adaptive_fusion", "use_temporal_similarity", "neighbour_num", "dim_rep", "dim_out",
               "input_norm_index", "root_joint", "limb_hidden")


PRECISIONS = ("fp32", "bf16")


def _register_fake() -> None:
    """The operator's shape function (torch.compile, opcheck), registered once where the operator exists."""
    from kasf.anatomy_op.native import load

    if not load()[0] or not hasattr(torch.ops.kasf, "lift_cpu"):
        return

    @torch.library.register_fake("kasf::lift_cpu")
    def _fake_lift(window: torch.Tensor, weights: torch.Tensor, sizes: list[int], config: list[int],
                   products: torch.Tensor | None = None) -> torch.Tensor:
        torch._check(window.dim() == 4, lambda: "kasf::lift_cpu: the window must be (B, T, J, 3)")
        return window.new_empty((*window.shape[:3], config[CONFIG_KEYS.index("dim_out")]))


_register_fake()


def bf16_kernels() -> str | None:
    """The bf16 product kernel kasf::lift_cpu runs here ('amx' or 'avx512_bf16'), or None where this CPU has
    neither (a bad KASF_CPU_BF16 raises RuntimeError)."""
    return torch.ops.kasf.lift_cpu_bf16_kernels() or None


def unavailable_reason(model: nn.Module, precision: str = "fp32") -> str | None:
    """Why this model cannot take the native path here in ``precision``, or None when it can."""
    from kasf.anatomy_op.native import load

    if precision not in PRECISIONS:
        return f"the native CPU path runs {' or '.join(PRECISIONS)}, not {precision}"
    loaded, reason = load()
    if not loaded:
        return f"the native CPU path needs the kasf._C extension: {reason}"
    if not hasattr(torch.ops.kasf, "lift_cpu_bf16_kernels"):
        return "the loaded kasf._C predates this kasf::lift_cpu; reinstall kasf to rebuild it"
    if precision == "bf16":
        try:
            if bf16_kernels() is None:
                return "the native bf16 path needs AMX-BF16 or AVX512-BF16, and this CPU has neither"
        except RuntimeError as err:
            return str(err).splitlines()[0]
    config = model.config
    if config["act_layer"] != "gelu":
        return f"the native CPU path implements GELU MLPs; this model uses {config['act_layer']!r}"
    hidden = int(config["dim_feat"] * config["mlp_ratio"])
    if config["dim_feat"] % 16 or hidden % 16 or config["dim_rep"] % 16:
        return (f"the native CPU path needs dim_feat, dim_rep and the MLP width in multiples of 16; this model has "
                f"{config['dim_feat']}, {config['dim_rep']} and {hidden}")
    if max(config["n_frames"], config["num_joints"]) > 256:
        return f"the native CPU path takes sequences of at most 256 frames, this model has {config['n_frames']}"
    if config["use_temporal_similarity"] and config["neighbour_num"] > 64:
        return f"the native CPU path takes neighbour_num <= 64, this model has {config['neighbour_num']}"
    return None


def _t(weight: torch.Tensor) -> torch.Tensor:
    """nn.Linear's (out, in) weight as the (in, out) rows the operator's products read."""
    return weight.detach().t().contiguous().float()


def _vec(t: torch.Tensor | None, size: int) -> torch.Tensor:
    return torch.zeros(size) if t is None else t.detach().contiguous().float()


def _pad_columns(t: torch.Tensor) -> torch.Tensor:
    """Zero columns up to a multiple of 16: the operator's products write whole vectors."""
    t = t.detach().float()
    width = -(-t.shape[-1] // 16) * 16
    return torch.nn.functional.pad(t, (0, width - t.shape[-1])).contiguous()


class _Pieces:
    """The operator's weight pieces in order, with which of them are matrix-product weights (K, N)."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.products: list[int] = []

    def add(self, *tensors: torch.Tensor) -> None:
        self.tensors += tensors

    def product(self, weight: torch.Tensor) -> None:
        self.products.append(len(self.tensors))
        self.tensors.append(weight)


def _pack_module(pieces: _Pieces, module: nn.Module, dim: int) -> None:
    """One FormerModule in cpu_blocks.cpp's take_module order."""
    mixer = module.mixer
    pieces.add(_vec(module.norm1.weight, dim), _vec(module.norm1.bias, dim))
    if module.mixer_type == "bone":
        pieces.add(_vec(module.norm1_limb.weight, dim), _vec(module.norm1_limb.bias, dim))
        pieces.product(_t(mixer.qkv_q.weight))
        pieces.add(_vec(mixer.qkv_q.bias, dim))
        pieces.product(_t(mixer.qkv_kv.weight))
        pieces.add(_vec(mixer.qkv_kv.bias, 2 * dim))
    elif module.mixer_type == "attention":
        pieces.product(_t(mixer.qkv.weight))
        pieces.add(_vec(mixer.qkv.bias, 3 * dim))
    else:
        bn = mixer.batch_norm
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        pieces.product(torch.cat([_t(mixer.U.weight), _t(mixer.V.weight)], dim=1).contiguous())
        pieces.add(torch.cat([_vec(mixer.U.bias, dim), _vec(mixer.V.bias, dim)]),
                   scale.float().contiguous(), (bn.bias.detach() - bn.running_mean * scale).float().contiguous(),
                   torch.empty(0) if mixer.use_similarity else mixer.norm_adj.float().contiguous())
    if module.mixer_type != "graph":
        pieces.add(torch.tensor([float(mixer.scale)]))
        pieces.product(_t(mixer.proj.weight))
        pieces.add(_vec(mixer.proj.bias, dim))
    pieces.add(_vec(module.norm2.weight, dim), _vec(module.norm2.bias, dim))
    pieces.product(_t(module.mlp.fc1.weight))
    pieces.add(_vec(module.mlp.fc1.bias, module.mlp.fc1.out_features))
    pieces.product(_t(module.mlp.fc2.weight))
    pieces.add(_vec(module.mlp.fc2.bias, dim))
    if module.use_layer_scale:
        pieces.add(_vec(module.layer_scale_1, dim), _vec(module.layer_scale_2, dim))
    else:
        pieces.add(torch.ones(dim), torch.ones(dim))


def bf16_pairs(weight: torch.Tensor) -> torch.Tensor:
    """A (K, N) product weight as the operator's bf16 kernels read it: K padded with zero rows to a multiple of 32,
    then rows taken in pairs and interleaved, value (k, n) at [(k // 2) * 2N + 2n + k % 2] (AMX's B-tile layout,
    and vdpbf16ps's). Rounded to nearest even, once."""
    k, n = weight.shape
    padded = torch.nn.functional.pad(weight.float(), (0, 0, 0, -(-k // 32) * 32 - k))
    return padded.reshape(-1, 2, n).transpose(1, 2).to(torch.bfloat16).reshape(-1)


class PackedLifter(NamedTuple):
    """kasf::lift_cpu's arguments after the window."""

    weights: torch.Tensor  # every piece, flattened, float32
    sizes: list[int]  # each piece's size
    config: list[int]  # CONFIG_KEYS
    products: torch.Tensor | None  # bf16: every product weight again as bf16_pairs, in order; fp32: None


def pack_lifter(model: nn.Module, precision: str = "fp32") -> PackedLifter:
    """kasf::lift_cpu's weights, sizes, config (CONFIG_KEYS) and, for bf16, the product weights as bf16 pairs.
    The pieces, in order: joints_embed (weight^T, bias, pos_embed);
    with anatomy bone_embed and limb_embed likewise, then the Limb Fuser's two packed products (the second padded
    to 64 columns); per block the attention, graph and (with anatomy) bone modules, spatial before temporal, then
    the fusion's weight and bias (empty without adaptive fusion); the head: norm, rep_logit.fc (weight^T, bias),
    head (weight^T and bias padded to 16 columns)."""
    from kasf.model.input_norm import INPUT_NORMS
    from kasf import skeleton

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = model.config
    dim = int(config["dim_feat"])
    pieces = _Pieces()
    with torch.no_grad():
        pieces.add(_t(model.joints_embed.weight), _vec(model.joints_embed.bias, dim), _vec(model.pos_embed, 0)[0])
        limb_hidden = 0
        if model.use_anatomy:
            w1, b1, w2, b2 = model.bone_refusion._pack()
            limb_hidden = w1.shape[1]
            pieces.add(_t(model.bone_embed.weight), _vec(model.bone_embed.bias, dim), _vec(model.bone_pos_embed, 0)[0],
                       _t(model.limb_embed.weight), _vec(model.limb_embed.bias, dim), _vec(model.limb_pos_embed, 0)[0])
            pieces.product(w1.detach().float().contiguous())
            pieces.add(b1.detach().float().contiguous())
            pieces.product(_pad_columns(w2))
            pieces.add(_pad_columns(b2))
        for block in model.blocks:
            names = ["att_spatial", "att_temporal", "graph_spatial", "graph_temporal"]
            if block.use_anatomy:
                names += ["bone_spatial", "bone_temporal"]
            for name in names:
                _pack_module(pieces, getattr(block, name), dim)
            if block.use_adaptive_fusion:
                fusion = block.fusion_three_channel if block.use_anatomy else block.fusion
                pieces.add(_vec(fusion.weight, 0).reshape(-1), _vec(fusion.bias, fusion.out_features))
            else:
                pieces.add(torch.empty(0), torch.empty(0))
        pieces.add(_vec(model.norm.weight, dim), _vec(model.norm.bias, dim))
        pieces.product(_t(model.rep_logit.fc.weight))
        pieces.add(_vec(model.rep_logit.fc.bias, 0))
        pieces.product(_pad_columns(model.head.weight.t()))
        pieces.add(_pad_columns(model.head.bias))
        products = (torch.cat([bf16_pairs(pieces.tensors[i]) for i in pieces.products]).contiguous()
                    if precision == "bf16" else None)
    values: dict[str, Any] = {**config, "mlp_hidden": int(dim * config["mlp_ratio"]),
                              "input_norm_index": INPUT_NORMS.index(model.input_norm),
                              "root_joint": skeleton.ROOT_JOINT, "limb_hidden": limb_hidden}
    flat = torch.cat([w.reshape(-1) for w in pieces.tensors]).contiguous()
    return PackedLifter(flat, [w.numel() for w in pieces.tensors], [int(values[key]) for key in CONFIG_KEYS], products)


class NativeLifter:
    """One model's forward as a callable window -> output, with the packed weights cached.

    The cache is checked against the version counters of the tensors it was packed from (an optimizer step or a
    load_state_dict moves them), ~70 us a call at the demo size; ``freeze()`` drops the check where nothing can
    change the weights (a Lifter owns its model). Replacing a parameter object (not its values) is not seen; call
    set_inference_path('native') again after that.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        reason = unavailable_reason(model, precision)
        if reason:
            raise RuntimeError(reason)
        self.precision = precision
        self._model = [model]  # a list: not registered as a submodule of the model that holds this object
        self._sources: list[torch.Tensor] = []
        self._versions: list[int] = []
        self._packed: PackedLifter | None = None
        self._frozen = False

    def freeze(self) -> None:
        self._current()
        self._frozen = True

    def _current(self) -> PackedLifter:
        if self._frozen and self._packed is not None:
            return self._packed
        if self._packed is None or [t._version for t in self._sources] != self._versions:
            self._sources = list(self._model[0].parameters()) + list(self._model[0].buffers())
            self._packed = pack_lifter(self._model[0], self.precision)
            self._versions = [t._version for t in self._sources]
        return self._packed

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        weights, sizes, config, products = self._current()
        return torch.ops.kasf.lift_cpu(window.contiguous(), weights, sizes, config, products)
