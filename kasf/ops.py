"""The native anatomy operator ``torch.ops.kasf.anatomy_features`` and the choice between it and pure PyTorch.

Why this module: the model must run everywhere (no compiler, a CPU-only torch, a CUDA tensor with a CPU-only
build) yet use the C++/CUDA kernels of ``cpp_ext/`` whenever they were built. Everything that decides which path
runs lives here, so ``kasf-info --env`` can report the decision and the reason, and the fall-back is announced once.

Scope of the operator: the Bone Extractor only, ``(..., 17, C>=2) -> (..., 17, 3)``, reading channels 0 and 1 (so
the model passes its (B, T, 17, 3) input without slicing or copying). The Limb Fuser's gathers stay
``index_select`` in PyTorch: they move 55 numbers per frame into 51 learned MLPs of different widths, so a native
version saves no arithmetic and would force a packed output to be split again in Python; see docs/cpp_ext.md.

Environment (run time): ``KASF_NO_EXT=1`` forces the pure-PyTorch path even where the extension is built.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from kasf import skeleton

OP_NAME = "kasf::anatomy_features"
_BUILD_INFO = Path(__file__).with_name("_build_info.json")


def _env_disabled() -> bool:
    return os.environ.get("KASF_NO_EXT", "").strip().lower() in {"1", "true", "yes", "on"}


def build_info() -> dict[str, Any]:
    """What setup.py decided when this copy of kasf was installed (kasf/_build_info.json), or {} if unknown."""
    try:
        return json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


_STATE: list[tuple[bool, str]] = []


def _load() -> tuple[bool, str]:
    """(loaded, reason), decided once: a plain cache that torch.compile can trace (it reads a list)."""
    if not _STATE:
        _STATE.append(_try_load())
    return _STATE[0]


def _try_load() -> tuple[bool, str]:
    """Import kasf._C, which registers the schema and the CPU (and CUDA) kernels, and say why not if it fails."""
    if _env_disabled():
        return False, "KASF_NO_EXT is set in the environment: pure-PyTorch path forced"
    try:
        import kasf._C  # noqa: F401  (registration happens at import)
    except ImportError as err:
        info = build_info()
        if info and not info.get("built", False):
            return False, f"native extension not built: {info.get('reason', 'unknown reason')}"
        if info.get("built"):
            return False, f"native extension was built but does not load: {err}"
        return False, f"native extension not installed ({err}); reinstall kasf with a C++ compiler present"
    _register_python_parts()
    info = build_info()
    return True, info.get("reason", "native extension loaded")


def _register_python_parts() -> None:
    """Fake (shape) kernels and autograd for the C++ schema: what torch.compile, export and backward need."""

    @torch.library.register_fake(OP_NAME)
    def _fake(joints: torch.Tensor) -> torch.Tensor:
        torch._check(joints.dim() >= 2, lambda: "kasf::anatomy_features: joints must have shape (..., 17, C)")
        torch._check(joints.shape[-2] == skeleton.NUM_JOINTS, lambda: "kasf::anatomy_features: need 17 joints")
        return joints.new_empty((*joints.shape[:-1], 3))

    @torch.library.register_fake("kasf::anatomy_features_backward")
    def _fake_backward(grad: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(joints)

    def _setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    def _backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (joints,) = ctx.saved_tensors
        return torch.ops.kasf.anatomy_features_backward(grad.contiguous(), joints)

    torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)


def native_available() -> bool:
    """True when torch.ops.kasf.anatomy_features is registered (the extension loaded and is not disabled)."""
    return _load()[0]


def cuda_kernels_built() -> bool:
    """True when the loaded extension holds the CUDA kernels, not only the CPU ones."""
    return native_available() and bool(build_info().get("cuda", False))


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def use_native(joints: torch.Tensor) -> bool:
    """Whether the Bone Extractor should call the native op for this input (and say once why not)."""
    from kasf.anatomy_onnx import export_mode  # local: kasf.anatomy_onnx imports this module

    mode = export_mode()
    if mode == "decomposed":
        return False
    if mode == "plugin":
        return True  # the exporter must see the op; kasf.anatomy_onnx checks it is registered
    if torch.onnx.is_in_onnx_export():
        return False  # an ONNX export outside anatomy_export(): the default mode, decomposed
    loaded, reason = _load()
    if not loaded:
        _warn_once("missing", f"kasf: using the pure-PyTorch anatomy features: {reason}")
        return False
    if joints.device.type == "cpu":
        return True
    if joints.device.type == "cuda" and cuda_kernels_built():
        return True
    _warn_once(f"device-{joints.device.type}",
               f"kasf: the native anatomy op has no {joints.device.type} kernels in this build "
               f"({build_info().get('reason', '')}); using the pure-PyTorch path on {joints.device.type}")
    return False


_PROXIMAL = torch.tensor(skeleton.BONE_PROXIMAL)
_DISTAL = torch.tensor(skeleton.BONE_DISTAL)


def anatomy_features(joints: torch.Tensor) -> torch.Tensor:
    """(..., 17, C>=2) -> (..., 17, 3) bone tokens, through the native op when usable, else pure PyTorch."""
    if use_native(joints):
        return torch.ops.kasf.anatomy_features(joints.contiguous())
    from kasf.model.anatomy import bone_features

    return bone_features(joints[..., :2], _PROXIMAL.to(joints.device), _DISTAL.to(joints.device))


def status() -> dict[str, Any]:
    """Which anatomy path is active and why: what ``kasf-info --env`` prints."""
    loaded, reason = _load()
    info = build_info()
    return {
        "anatomy_path": "native C++ operator (torch.ops.kasf.anatomy_features)" if loaded else "pure PyTorch",
        "reason": reason,
        "cpu_kernels": loaded,
        "cuda_kernels": loaded and bool(info.get("cuda", False)),
        "KASF_NO_EXT": os.environ.get("KASF_NO_EXT", ""),
        "built_with_torch": info.get("torch", "unknown"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
