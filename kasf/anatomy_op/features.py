"""The Bone Extractor's computation: the one function the model calls, and the choice of path behind it.

Why one function: the model must run everywhere (no compiler, a CPU-only torch, a CUDA tensor with a CPU-only
build) yet use the C++/CUDA kernels of ``cpp_ext/`` whenever they were built, and an ONNX export must see the
path its anatomy-op mode asks for. :func:`anatomy_features` decides (through :func:`use_native`, announcing a
fall-back once) and :func:`bone_features` is the pure-PyTorch definition the native operator must reproduce.

Scope of the operator: the Bone Extractor only, ``(..., 17, C>=2) -> (..., 17, 3)``, reading channels 0 and 1 (so
the model passes its (B, T, 17, 3) input without slicing or copying). The Limb Fuser's gathers stay
``index_select`` in PyTorch: they move 55 numbers per frame into 51 learned MLPs of different widths, so a native
version saves no arithmetic and would force a packed output to be split again in Python; see docs/cpp_ext.md.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

from kasf import skeleton
from kasf.anatomy_op import native

_PROXIMAL = torch.tensor(skeleton.BONE_PROXIMAL)
_DISTAL = torch.tensor(skeleton.BONE_DISTAL)

# The anatomy-op mode of the export in progress (set by kasf.anatomy_op.onnx_modes.anatomy_export), None outside.
# A plain module global, not a ContextVar: torch.compile (Dynamo) traces BoneExtractor.forward, which reads it,
# and Dynamo cannot trace ContextVar.get. Exports run on one thread, so a global is enough.
_EXPORT_MODE: list[str | None] = [None]


def export_mode() -> str | None:
    """The mode of the enclosing ``anatomy_export``, or None outside an export."""
    return _EXPORT_MODE[0]


@contextlib.contextmanager
def exporting_as(mode: str) -> Iterator[None]:
    """Inside, :func:`use_native` answers for an export in ``mode`` (validation is anatomy_export's job)."""
    previous, _EXPORT_MODE[0] = _EXPORT_MODE[0], mode
    try:
        yield
    finally:
        _EXPORT_MODE[0] = previous


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


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)  # the caller of anatomy_features


def use_native(joints: torch.Tensor) -> bool:
    """Whether the Bone Extractor should call the native op for this input (and say once why not)."""
    mode = export_mode()
    if mode == "decomposed":
        return False
    if mode == "plugin":
        return True  # the exporter must see the op; anatomy_export checked it is registered
    if torch.onnx.is_in_onnx_export():
        return False  # an ONNX export outside anatomy_export(): the default mode, decomposed
    loaded, reason = native.load()
    if not loaded:
        _warn_once("missing", f"kasf: using the pure-PyTorch anatomy features: {reason}")
        return False
    if joints.device.type == "cpu":
        return True
    if joints.device.type == "cuda" and native.cuda_kernels_built():
        return True
    _warn_once(f"device-{joints.device.type}",
               f"kasf: the native anatomy op has no {joints.device.type} kernels in this build "
               f"({native.build_info().get('reason', '')}); using the pure-PyTorch path on {joints.device.type}")
    return False


def anatomy_features(joints: torch.Tensor, proximal: torch.Tensor | None = None,
                     distal: torch.Tensor | None = None) -> torch.Tensor:
    """(..., 17, C>=2) -> (..., 17, 3) bone tokens, through the native op when usable, else :func:`bone_features`.

    ``proximal``/``distal``: index tensors already on the input's device (the model's buffers, which tracing and
    ONNX export see as constants); None takes the skeleton's, copied to the device on each call.
    """
    if use_native(joints):
        return torch.ops.kasf.anatomy_features(joints.contiguous())
    if proximal is None or distal is None:
        proximal, distal = _PROXIMAL.to(joints.device), _DISTAL.to(joints.device)
    return bone_features(joints[..., :2], proximal, distal)
