"""The lifters' input window: its check, and the position and size of the person taken out of the 2D input, and the size put back into the 3D output.

Why: the reference normalises keypoints by the image width only, so the same pose arrives at any place of the
image and at any size (a broadcast camera's far player is 10 % of the frame height, a handheld close-up 80 %). The
2.5D target scales with the person's 2D size (z is in the same pixel units as x and y), so the lifter's job is
exactly equivariant to translation and scale of the 2D pose; a network that is given the pose centred on the
pelvis and divided by its size, and whose output is multiplied back by that size, has that equivariance built in
instead of having to learn it from data.

Modes (model key ``input_norm``): ``none`` (the reference: input as given), ``frame`` (each frame centred on its
pelvis and divided by its own size: a per-frame model stays per-frame), ``window`` (each frame centred on its
pelvis, one size for the whole window: the size does not jitter from frame to frame). The size is the
confidence-weighted root-mean-square distance of the joints from the pelvis. No parameters: checkpoints trained
without it load unchanged, and ONNX / TensorRT see a few element-wise ops.
"""

from __future__ import annotations

import torch

from kasf import skeleton

INPUT_NORMS = ("none", "frame", "window")
_MIN_WEIGHT = 1e-2  # a joint with confidence 0 still counts a little: a window of zeros has a defined size
_MIN_SIZE = 1e-4  # normalised image units: a degenerate (all joints on the pelvis) pose is not divided by 0


def check_window(x: torch.Tensor, n_frames: int, num_joints: int, dim_in: int, model: str) -> None:
    """One clear error for a wrong window instead of a reshape failure deep inside a lifter (any of kasf's)."""
    expected = (n_frames, num_joints, dim_in)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"{model} expects input of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) = "
                         f"(batch, frames, joints, [x, y, confidence]); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{model} expects a floating-point input, got {x.dtype}")


def check_input_norm(mode: str, allowed: tuple[str, ...] = INPUT_NORMS) -> str:
    if mode not in allowed:
        raise ValueError(f"input_norm must be one of {', '.join(allowed)}, got {mode!r}")
    return mode


def canonical_input(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T, 17, [x, y, conf]) -> (the pelvis-centred, size-divided input, the size (B, T or 1, 1, 1)).

    ``mode`` 'none' returns the input itself and no size.
    """
    if mode == "none":
        return x, None
    xy, conf = x[..., :2], x[..., 2:3]
    centred = xy - xy[..., skeleton.ROOT_JOINT:skeleton.ROOT_JOINT + 1, :]
    weight = conf.clamp_min(0) + _MIN_WEIGHT
    squared = centred.square().sum(dim=-1, keepdim=True) * weight
    dims = (-2,) if mode == "frame" else (-3, -2)
    size = (squared.sum(dim=dims, keepdim=True) / weight.sum(dim=dims, keepdim=True)).sqrt().clamp_min(_MIN_SIZE)
    return torch.cat([centred / size, conf], dim=-1), size


def restore_size(y: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    """The network's size-free 3D output back in the input's units (identity for mode 'none')."""
    return y if size is None else y * size
