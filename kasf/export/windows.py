"""Real windows for parity checks and INT8 calibration."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kasf.conventions import to_model_input
from kasf.data.sample import load_sample
from kasf.data.sources import build_clip_store, cut_windows
from kasf.export.parity import RealWindows


def _window_index(frames: int, n_frames: int, stride: int) -> np.ndarray:
    return cut_windows(np.zeros(frames, dtype=np.int64), n_frames, stride, short="resample", where="sequence")


def load_real_windows(n_frames: int, stride: int = 9) -> RealWindows:
    """Windows of the bundled sample sequence (held-out mocap subject, noisy 2D, with 3D truth)."""
    sample = load_sample()
    index = _window_index(len(sample.keypoints), n_frames, stride)
    inputs = sample.model_input()[index]
    return RealWindows(inputs=inputs.astype(np.float32),
                       image_wh=np.tile(np.asarray(sample.image_wh, np.float32), (len(index), 1)),
                       factor=sample.factor[index], truth_mm=sample.joints3d_mm[index])


def calibration_windows(source: str | os.PathLike, n_frames: int, limit: int = 512) -> np.ndarray:
    """Input windows (N, n_frames, 17, 3) for INT8 calibration from a keypoint .npz or a generic source .pkl.

    A keypoint .npz holds 'keypoints' (F, 17, 2) pixels, 'scores' (F, 17) and 'image_wh' (2,) (kasf-stream's
    --keypoints format, single person); a source .pkl is read with the source readers of kasf.data.sources (its 'test' split).
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"calibration source not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("keypoints", "scores", "image_wh") if k not in data.files]
            if missing:
                raise ValueError(f"{path}: calibration npz lacks {missing}")
            keypoints, scores, wh = data["keypoints"], data["scores"], data["image_wh"]
        if keypoints.ndim != 3 or keypoints.shape[1:] != (17, 2) or scores.shape != keypoints.shape[:2]:
            raise ValueError(f"{path}: 'keypoints' must be (F, 17, 2) and 'scores' (F, 17); got "
                             f"{keypoints.shape} and {scores.shape}")
        frames = to_model_input(keypoints, scores, float(wh[0]), float(wh[1]))
        windows = frames[_window_index(len(frames), n_frames, max(1, n_frames // 3))]
    else:
        test = build_clip_store(path, "generic", n_frames)["test"]
        windows = test.window_field("inputs", np.arange(min(len(test), limit)))
    if not np.isfinite(windows).all():
        raise ValueError(f"{path}: calibration keypoints contain NaN or infinite values")
    step = max(1, len(windows) // limit)
    return np.ascontiguousarray(windows[::step][:limit], dtype=np.float32)
