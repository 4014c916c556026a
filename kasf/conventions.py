"""Screen-coordinate normalisation shared by training, export metadata and the streaming runtime.

Pixels (u, v) of a w x h image map to x = u / w * 2 - 1, y = v / w * 2 - h / w: both axes are divided by the
width, so the aspect ratio is kept. Depth in the 2.5D layout is scaled like x (z / w * 2). The released
checkpoints were trained this way; checkpoints and exported models record NORMALIZATION_NAME.
"""

from __future__ import annotations

import numpy as np

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
