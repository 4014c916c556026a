"""Checkpoints: the project's own self-describing format, and the reference implementation's layout.

Own format (always what kasf writes): one torch file holding a plain dict

    format="kasf-checkpoint", format_version, kasf_version, config (full model config), preset (or None),
    state_dict (no wrapper prefixes), skeleton, normalization, n_frames, metadata (training facts).

Reference layout (what the KASportsFormer authors released, e.g. kasportsformer-sp-det.pth): a dict whose 'model'
entry is a state dict saved through DataParallel ('module.' prefixes); it carries no architecture, so loading it
needs a preset name or a config.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from kasf import skeleton
from kasf._version import __version__
from kasf.atomic import atomic_path
from kasf.conventions import NORMALIZATION_NAME
from kasf.model.presets import PRESETS, model_config, model_from_config

FORMAT_NAME = "kasf-checkpoint"
ASSETS = Path(__file__).resolve().parent / "assets"
# Checkpoints shipped inside the package, reachable by name wherever a checkpoint path is asked for.
BUNDLED = {"demo": ASSETS / "demo.pt"}
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested architecture."""


@dataclass
class CheckpointInfo:
    path: str
    layout: str  # "kasf" or "reference"
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None
    preset: str | None = None
    format_version: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    conventions: dict[str, Any] = field(default_factory=dict)


def _read_torch_file(path: Path, allow_pickle: bool) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path}: the file holds Python objects besides tensors and plain values; kasf loads those only "
                "when you trust the file: pass allow_pickle=True (CLI: --allow-pickle)") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from None


def read_raw_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> Any:
    """The object a checkpoint file holds, as saved; a missing, truncated or corrupt file is one CheckpointError
    (or FileNotFoundError) naming the file."""
    return _read_torch_file(Path(path), allow_pickle)


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A bundled name ('demo') -> its file inside the package; any other value is a path, returned as is.

    A real file of the same name in the working directory wins over the bundled one.
    """
    text = os.fspath(path)
    if text in BUNDLED and not Path(text).exists():
        return BUNDLED[text]
    return Path(text)


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> CheckpointInfo:
    """Read either layout without building a model (for inspection and for :func:`load_checkpoint`)."""
    path = resolve_checkpoint_path(path)
    raw = _read_torch_file(path, allow_pickle)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
    if raw.get("format") == FORMAT_NAME:
        version = raw.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: kasf checkpoint format version {version!r} is newer than this kasf "
                                  f"({__version__}) reads ({FORMAT_VERSION}); upgrade kasf")
        missing = [k for k in ("config", "state_dict") if k not in raw]
        if missing:
            raise CheckpointError(f"{path}: kasf checkpoint lacks {missing}")
        return CheckpointInfo(
            path=str(path), layout="kasf", state_dict=dict(raw["state_dict"]), config=dict(raw["config"]),
            preset=raw.get("preset"), format_version=version, metadata=dict(raw.get("metadata") or {}),
            conventions={k: raw.get(k) for k in ("skeleton", "normalization", "n_frames", "kasf_version")})
    for key in ("model", "state_dict", "model_pos"):
        if key in raw and isinstance(raw[key], Mapping):
            state_dict = raw[key]
            metadata = {k: v for k, v in raw.items() if k in ("epoch", "lr", "min_mpjpe")}
            break
    else:
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            state_dict, metadata = raw, {}
        else:
            raise CheckpointError(f"{path}: neither a kasf checkpoint nor the reference layout (a dict with a "
                                  f"'model' state dict); top-level keys: {sorted(map(str, raw))[:10]}")
    return CheckpointInfo(path=str(path), layout="reference", state_dict=_strip_prefixes(state_dict),
                          metadata=metadata)


def _resolve_config(preset_or_config: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    if isinstance(preset_or_config, Mapping):
        return model_config(preset_or_config), None
    text = str(preset_or_config)
    if text in PRESETS:
        return model_config(text), text
    if text.endswith((".yaml", ".yml")):
        import yaml

        if not Path(text).exists():
            raise FileNotFoundError(f"config not found: {text}")
        with open(text) as f:
            loaded = yaml.safe_load(f)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{text}: a config must be a YAML mapping")
        try:
            return model_config(loaded), None
        except ValueError as err:
            raise CheckpointError(f"{text}: {err}") from None
    raise CheckpointError(f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML config path")


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or mismatched):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:8])
        more = f"\n    ... and {len(items) - 8} more" if len(items) > 8 else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}" if items else ""

    config = getattr(model, "config", {})
    shape = ", ".join(f"{k}={config[k]}" for k in ("model_name", "n_layers", "dim_feat", "n_blocks", "hidden_dim")
                      if k in config)
    raise CheckpointError(
        f"{source} does not fit the requested architecture ({shape}):"
        + listing("missing keys", missing) + listing("unexpected keys", unexpected)
        + listing("shape mismatches", mismatched)
        + "\n  Pass the preset or config the checkpoint was trained with.")


def load_checkpoint(path: str | os.PathLike, preset_or_config: str | os.PathLike | Mapping[str, Any] | None = None,
                    device: str | torch.device = "cpu", allow_pickle: bool = False) -> torch.nn.Module:
    """A ready model (eval mode: KASportsFormer, MotionAGFormer or the per-frame MLP) from a kasf checkpoint or a
    reference-layout checkpoint.

    For a kasf checkpoint the stored config is used; a given preset/config must then agree with it. A
    reference-layout checkpoint needs ``preset_or_config`` (e.g. "kasportsformer" for the released files).
    """
    info = read_checkpoint(path, allow_pickle=allow_pickle)
    if info.layout == "kasf":
        config = model_config(info.config)
        if preset_or_config is not None:
            requested, _ = _resolve_config(preset_or_config)
            differing = {k: (config.get(k), v) for k, v in requested.items() if config.get(k) != v
                         and k not in ("drop", "attn_drop", "drop_path", "dropout")}
            if differing:
                raise CheckpointError(f"{path}: stored config differs from the requested one: "
                                      + ", ".join(f"{k}: stored {a!r}, requested {b!r}"
                                                  for k, (a, b) in differing.items()))
    else:
        if preset_or_config is None:
            raise CheckpointError(
                f"{path} is a reference-layout checkpoint, which stores no architecture: pass a preset "
                f"(e.g. 'kasportsformer' for the released files) or the reference YAML config")
        config, _ = _resolve_config(preset_or_config)
    model = model_from_config(config)
    check_state_dict(model, info.state_dict, str(path))
    model.load_state_dict(info.state_dict, strict=True)
    return model.to(device).eval()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, preset: str | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    training_state: Mapping[str, Any] | None = None) -> Path:
    """Write the kasf format (written to a temporary name, then renamed: never a half file).

    ``training_state`` (optimizer, scheduler, step counters) is stored under its own key so a killed training
    resumes from the file; readers of the model ignore it.
    """
    module = getattr(model, "module", model)  # DataParallel / DDP
    module = getattr(module, "_orig_mod", module)  # torch.compile
    state_dict = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kasf_version": __version__,
        "config": dict(module.config), "preset": preset, "state_dict": state_dict,
        "skeleton": skeleton.SKELETON_NAME, "normalization": NORMALIZATION_NAME, "n_frames": module.n_frames,
        "metadata": dict(metadata or {}),
    }
    if training_state is not None:
        payload["training_state"] = dict(training_state)
    path = Path(path)
    _atomic_torch_save(payload, path)
    return path
