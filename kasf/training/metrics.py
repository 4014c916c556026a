"""Evaluation metrics in millimetres (numpy), as in docs/conventions.md.

All functions take root-relative poses ``(..., 17, 3)`` (prediction, truth) and return per-frame (or per-frame,
per-joint) errors, so callers can average per action, per joint or per body part without re-deriving anything.
"""

from __future__ import annotations

import numpy as np

from kasf import skeleton


def _check(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.shape[-1] != 3:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must have the same (..., joints, 3) shape")
    return pred, truth


def joint_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean error of every joint (..., J): the building block of MPJPE and the per-joint tables."""
    pred, truth = _check(pred, truth)
    return np.linalg.norm(pred - truth, axis=-1)


def mpjpe(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean per-joint position error of each frame (...,)."""
    return joint_errors(pred, truth).mean(axis=-1)


def procrustes_align(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame similarity transform (rotation without reflection, scale, shift) of pred onto truth."""
    pred, truth = _check(pred, truth)
    mu_p = pred.mean(axis=-2, keepdims=True)
    mu_t = truth.mean(axis=-2, keepdims=True)
    p0, t0 = pred - mu_p, truth - mu_t
    norm_p = np.sqrt((p0 ** 2).sum(axis=(-2, -1), keepdims=True))
    norm_t = np.sqrt((t0 ** 2).sum(axis=(-2, -1), keepdims=True))
    norm_p = np.maximum(norm_p, 1e-12)
    norm_t = np.maximum(norm_t, 1e-12)
    p0, t0 = p0 / norm_p, t0 / norm_t
    u, s, vt = np.linalg.svd(np.swapaxes(p0, -1, -2) @ t0)  # (..., 3, 3)
    # Exclude reflections: where det(R) < 0, flip the axis of the smallest singular value.
    sign = np.sign(np.linalg.det(u @ vt))
    sign = np.where(sign == 0, 1.0, sign)
    u[..., :, 2] *= sign[..., None]
    s[..., 2] *= sign
    rotation = u @ vt  # aligned rows: x @ rotation
    scale = s.sum(axis=-1)[..., None, None] * norm_t / norm_p
    return scale * (p0 * norm_p) @ rotation + mu_t


def p_mpjpe(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MPJPE after Procrustes alignment (reflection excluded), per frame."""
    return mpjpe(procrustes_align(pred, truth), truth)


def n_mpjpe(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MPJPE after the optimal per-frame scale of the prediction, per frame."""
    pred, truth = _check(pred, truth)
    num = (pred * truth).sum(axis=(-2, -1), keepdims=True)
    den = np.maximum((pred * pred).sum(axis=(-2, -1), keepdims=True), 1e-12)
    return mpjpe(pred * num / den, truth)


def velocity_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean joint error of first differences over time (axis -3): (T-1,) for (T, J, 3) input."""
    pred, truth = _check(pred, truth)
    return np.linalg.norm(np.diff(pred, axis=-3) - np.diff(truth, axis=-3), axis=-1).mean(axis=-1)


def acceleration_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean joint error of second differences over time (axis -3): (T-2,) for (T, J, 3) input."""
    pred, truth = _check(pred, truth)
    accel_p = pred[..., 2:, :, :] - 2 * pred[..., 1:-1, :, :] + pred[..., :-2, :, :]
    accel_t = truth[..., 2:, :, :] - 2 * truth[..., 1:-1, :, :] + truth[..., :-2, :, :]
    return np.linalg.norm(accel_p - accel_t, axis=-1).mean(axis=-1)


def body_part_errors(per_joint: np.ndarray) -> dict[str, float]:
    """Upper- and lower-body means of a per-joint error vector (17,)."""
    per_joint = np.asarray(per_joint, dtype=np.float64)
    return {"upper_body": float(per_joint[list(skeleton.UPPER_BODY)].mean()),
            "lower_body": float(per_joint[list(skeleton.LOWER_BODY)].mean())}
