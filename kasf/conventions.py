"""Coordinate conventions shared by training, export and the streaming runtime: normalisation, mirroring, mm.

Pixels (u, v) of a w x h image map to x = u / w * 2 - 1, y = v / w * 2 - h / w: both axes are divided by the
width, so the aspect ratio is kept. Depth in the 2.5D layout is scaled like x (z / w * 2). The released
checkpoints were trained this way; checkpoints and exported models record NORMALIZATION_NAME. A prediction in
these units becomes millimetres through the image size and each frame's 2.5D factor (:func:`to_millimetres`).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from kasf import skeleton

NORMALIZATION_NAME = "screen-width-v1"
DEFAULT_N_FRAMES = 27


def normalize_screen(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixels (..., 2) or 2.5D pixels with depth (..., 3) -> normalised screen coordinates (float32)."""
    points = np.asarray(points, dtype=np.float32)
    width = np.asarray(width, dtype=np.float32)
    height = np.asarray(height, dtype=np.float32)
    out = points / width[..., None, None] * 2 if width.ndim else points / width * 2
    offset = np.stack([np.ones_like(height), height / width], axis=-1)
    if offset.ndim > 1:
        offset = offset[..., None, :]
    out[..., :2] -= offset
    return out


def denormalize_screen(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Inverse of :func:`normalize_screen`."""
    points = np.asarray(points, dtype=np.float32).copy()
    width = np.asarray(width, dtype=np.float32)
    height = np.asarray(height, dtype=np.float32)
    offset = np.stack([np.ones_like(height), height / width], axis=-1)
    if offset.ndim > 1:
        offset = offset[..., None, :]
    points[..., :2] += offset
    return points * (width[..., None, None] if width.ndim else width) / 2


def to_model_input(keypoints_px: np.ndarray, scores: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel keypoints (..., 17, 2) and detector scores (..., 17) -> the lifter's input (..., 17, 3)."""
    xy = normalize_screen(keypoints_px, width, height)
    return np.concatenate([xy, np.asarray(scores, np.float32)[..., None]], axis=-1)


_FLIP = list(skeleton.FLIP_PERMUTATION)
Poses = TypeVar("Poses")  # a numpy array or a torch tensor of shape (..., 17, C)


def flip_pose(x: Poses) -> Poses:
    """Mirror (..., 17, C) poses horizontally: x -> -x and left/right joints swapped (numpy or torch, a copy).

    Normalised screen x is centred on the image, so negating it mirrors the image; applied twice it is the
    identity. Used for training augmentation and for test-time flip in evaluation and streaming.
    """
    out = x[..., _FLIP, :]  # advanced indexing copies, in numpy and in torch
    out[..., 0] = -out[..., 0]
    return out


def to_millimetres(pred: np.ndarray, image_wh: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Normalised predictions (N, T, 17, 3) -> root-relative mm, with per-window image size (N, 2) and per-frame
    2.5D factor (N, T)."""
    width = image_wh[:, 0][:, None]
    height = image_wh[:, 1][:, None]
    pix = denormalize_screen(pred, np.broadcast_to(width, pred.shape[:2]), np.broadcast_to(height, pred.shape[:2]))
    mm = pix.astype(np.float64) * factor[..., None, None]
    return mm - mm[:, :, skeleton.ROOT_JOINT:skeleton.ROOT_JOINT + 1]
