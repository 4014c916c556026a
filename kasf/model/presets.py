"""Named model sizes: the released KASportsFormer and smaller ones for edge devices.

``build("kasportsformer-s")`` makes a model by name; ``build({...})`` from a config dict (reference key names,
extra training keys ignored). Each KASportsFormer preset has a MotionAGFormer twin of the same size without the
anatomy branch (``motionagformer-s``), the baseline the paper compares against. ``mlp-baseline`` is the per-frame
MLP (``model_name: mlp``, :mod:`kasf.model.mlp`): no temporal context, the floor a temporal model has to clear.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

from torch import nn

from kasf.model.kasportsformer import KASportsFormer
from kasf.model.mlp import MODEL_NAME as MLP_NAME, PerFrameMLP
from kasf.typed_config import coerce_value

_SIZES: dict[str, dict[str, Any]] = {
    # suffix: layers, width, representation, heads. "" is the released configuration (all four checkpoints).
    "": dict(n_layers=26, dim_feat=128, dim_rep=512, num_heads=8),
    "-b": dict(n_layers=16, dim_feat=128, dim_rep=512, num_heads=8),
    "-s": dict(n_layers=12, dim_feat=64, dim_rep=512, num_heads=8),
    "-xs": dict(n_layers=6, dim_feat=64, dim_rep=256, num_heads=8),
    "-t": dict(n_layers=4, dim_feat=32, dim_rep=128, num_heads=4),
}
_FAMILIES = {"kasportsformer": dict(use_anatomy=True), "motionagformer": dict(use_anatomy=False)}

PRESETS: dict[str, dict[str, Any]] = {
    family + suffix: {**size, **extra} for family, extra in _FAMILIES.items() for suffix, size in _SIZES.items()
}
# Martinez et al.'s size: two residual blocks of width 1024 (4.3 M parameters), applied to every frame alone.
PRESETS["mlp-baseline"] = dict(model_name=MLP_NAME, hidden_dim=1024, n_blocks=2, dropout=0.25)
PRESET_NOTES = {
    "kasportsformer": "released configuration (SportsPose/WorldPose checkpoints)",
    "kasportsformer-b": "GPU box",
    "kasportsformer-s": "Jetson Orin",
    "kasportsformer-xs": "Jetson / laptop CPU",
    "kasportsformer-t": "CPU real time; the demo checkpoint",
    "mlp-baseline": "per-frame baseline (no temporal context); columns: residual blocks, width",
}

# Parameters and GFLOPs per 27-frame window of each preset, stored so that `kasf-info --presets` is instant (the
# count builds every model and traces a forward: seconds to minutes). tests/test_first_hour.py recounts them.
PRESET_COSTS: dict[str, tuple[int, float]] = {
    "kasportsformer": (29365668, 27.4365),
    "kasportsformer-b": (18102038, 16.9082),
    "kasportsformer-s": (3459690, 3.2810),
    "kasportsformer-xs": (1734088, 1.6408),
    "kasportsformer-t": (302066, 0.2903),
    "motionagformer": (18995879, 17.7663),
    "motionagformer-b": (11716899, 10.9569),
    "motionagformer-s": (2241531, 2.1319),
    "motionagformer-xs": (1121503, 1.0661),
    "motionagformer-t": (192843, 0.1888),
    "mlp-baseline": (4314163, 0.2321),
}


def _keys(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


TRANSFORMER_KEYS = _keys(KASportsFormer)
MLP_KEYS = _keys(PerFrameMLP)
# Every model key a config may carry; which of them apply depends on model_name.
MODEL_KEYS: frozenset[str] = TRANSFORMER_KEYS | MLP_KEYS
# Each model key's declared type, as its constructor's annotation text ('float', 'float | None', ...).
MODEL_KEY_TYPES: dict[str, str] = {k: str(p.annotation) for cls in (PerFrameMLP, KASportsFormer) for k, p in
                                   inspect.signature(cls.__init__).parameters.items() if k != "self"}
_MODEL_NAMES = {"kasportsformer": True, "motionagformer": False}


def model_config(preset_or_config: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The full constructor config for a preset name or a (reference-style) config mapping.

    Training keys of a reference YAML (learning_rate, batch_size, ...) are ignored here; ``model_name``
    picks KASportsFormer, MotionAGFormer or the per-frame MLP. A model key that does not apply to the chosen
    model (e.g. ``num_heads`` for the MLP) is an error naming every such key, never silently dropped. Every value
    is checked against its key's type (numeric strings such as PyYAML's '1e-05' become numbers); a misfit raises
    :class:`~kasf.typed_config.ConfigTypeError`.
    """
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown preset {preset_or_config!r}; choose one of: {', '.join(PRESETS)}")
        raw: Mapping[str, Any] = PRESETS[preset_or_config]
    else:
        raw = preset_or_config
    config = {k: v for k, v in raw.items() if k in MODEL_KEYS}
    unknown = set(overrides) - MODEL_KEYS
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)}; valid keys: {sorted(MODEL_KEYS)}")
    config.update(overrides)
    name = str(raw.get("model_name") or "").lower()
    if name == MLP_NAME:
        _reject_foreign_keys(config, MLP_KEYS, "the per-frame MLP (model_name: mlp)")
        mlp = {**_defaults(PerFrameMLP), **config}
        return {**{key: check_model_value(key, value) for key, value in mlp.items()}, "model_name": MLP_NAME}
    _reject_foreign_keys(config, TRANSFORMER_KEYS, "KASportsFormer / MotionAGFormer")
    if name and "use_anatomy" not in config:
        if name not in _MODEL_NAMES:
            raise ValueError(f"model_name {raw['model_name']!r} is not one of KASportsFormer, MotionAGFormer, mlp")
        config["use_anatomy"] = _MODEL_NAMES[name]
    return _complete(config)


def _reject_foreign_keys(config: Mapping[str, Any], valid: frozenset[str], model: str) -> None:
    foreign = sorted(set(config) - valid)
    if foreign:
        raise ValueError(f"keys {', '.join(foreign)} do not apply to {model}; remove them "
                         f"(its model keys: {', '.join(sorted(valid))})")


def _defaults(cls: type) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def _complete(config: dict[str, Any]) -> dict[str, Any]:
    full = {**_defaults(KASportsFormer), **config}
    if not isinstance(full["act_layer"], str):
        full["act_layer"] = full["act_layer"].__name__.lower()
    return {key: check_model_value(key, value) for key, value in full.items()}


def check_model_value(key: str, value: Any) -> Any:
    """``value`` as model key ``key``'s declared type (an activation may also be given as its class)."""
    if key == "act_layer" and not isinstance(value, str):
        return value
    return coerce_value(key, value, MODEL_KEY_TYPES[key])


def build(preset_or_config: str | Mapping[str, Any] = "kasportsformer", **overrides: Any) -> nn.Module:
    """A freshly initialised model from a preset name or a config mapping."""
    return model_from_config(model_config(preset_or_config, **overrides))


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """The network a full config (the output of :func:`model_config`, or a checkpoint's) describes."""
    if config.get("model_name") == MLP_NAME:
        return PerFrameMLP(**{k: v for k, v in config.items() if k != "model_name"})
    return KASportsFormer(**config)


def model_label(config: Mapping[str, Any]) -> str:
    """A human name for a full config: 'KASportsFormer', 'MotionAGFormer' or 'per-frame MLP'."""
    if config.get("model_name") == MLP_NAME:
        return "per-frame MLP"
    return "KASportsFormer" if config.get("use_anatomy", True) else "MotionAGFormer"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops_per_window(model: nn.Module) -> float:
    """Floating-point operations (multiply and add counted separately) of one forward pass on one window."""
    from torch.utils.flop_counter import FlopCounterMode

    window = torch.zeros(1, model.n_frames, model.num_joints, model.dim_in)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(window)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def presets_table() -> str:
    """Markdown table of every preset: size, cost per 27-frame window (stored: PRESET_COSTS), intended use."""
    rows = ["| preset | layers | dim_feat | dim_rep | heads | parameters | GFLOPs / window | use |",
            "|---|---|---|---|---|---|---|---|"]
    for name, cfg in PRESETS.items():
        parameters, gflops = PRESET_COSTS[name]
        if cfg.get("model_name") == MLP_NAME:
            shape = f"{cfg['n_blocks']} | {cfg['hidden_dim']} | - | -"
        else:
            shape = f"{cfg['n_layers']} | {cfg['dim_feat']} | {cfg['dim_rep']} | {cfg['num_heads']}"
        rows.append(f"| `{name}` | {shape} | {parameters:,} | {gflops:.2f} | {PRESET_NOTES.get(name, '')} |")
    return "\n".join(rows)
