"""2D keypoint formats -> Human3.6M-17, and the rule that a missing keypoint is never a position.

Detectors speak COCO-17 (rtmlib, YOLO pose) or BlazePose-33 (MediaPipe); the lifter was trained on
Human3.6M-17 (``docs/conventions.md``). A keypoint is *missing* when its score is <= 0, when both coordinates are
-1 (rtmlib's marker) or when it is not finite. Missing keypoints keep confidence 0 and get a stand-in position
(the track's last valid value, else the skeleton neighbour, else the pose's centre) so the lifter sees a
plausible number and is told, through the confidence channel, not to trust it.

Head top is not a COCO keypoint. We estimate it as ``head_centre + 0.6 * (head_centre - thorax)``, where
``head_centre`` is the mean of the valid eyes and ears: in the neutral pose the eye/ear level sits about 20 cm
above the shoulder line and the crown about 12 cm above the eyes, and the vector follows the head when the
person leans. Its confidence is the mean of the sources used.
"""

from __future__ import annotations

import numpy as np

from kasf import skeleton

FORMATS = ("h36m", "coco", "blazepose")

# COCO-17 index of each Human3.6M joint that maps one to one (docs/conventions.md).
COCO_DIRECT: dict[int, int] = {1: 12, 2: 14, 3: 16, 4: 11, 5: 13, 6: 15, 11: 5, 12: 7, 13: 9, 14: 6, 15: 8, 16: 10,
                               9: 0}
COCO_EYES_EARS = (1, 2, 3, 4)
HEAD_TOP_GAIN = 0.6

# BlazePose-33 landmark for each COCO-17 keypoint.
BLAZEPOSE_TO_COCO: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def missing_mask(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """True where a keypoint must not be used as a position (score <= 0, (-1, -1) or not finite)."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    marker = np.all(keypoints == -1, axis=-1)
    bad = ~np.all(np.isfinite(keypoints), axis=-1) | ~np.isfinite(scores)
    return marker | bad | (np.nan_to_num(scores, nan=0.0) <= 0)


def _mean_of(points: np.ndarray, conf: np.ndarray, valid: np.ndarray, idx: tuple[int, ...],
             need_all: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean position and confidence of the keypoints ``idx`` (all of them, or those valid when need_all=False)."""
    sel_valid = valid[..., list(idx)]
    weights = sel_valid.astype(np.float32)
    count = weights.sum(-1)
    ok = sel_valid.all(-1) if need_all else count > 0
    safe = np.maximum(count, 1)[..., None]
    pos = (np.where(sel_valid[..., None], points[..., list(idx), :], 0).sum(-2)) / safe
    score = np.where(sel_valid, conf[..., list(idx)], 0).sum(-1) / np.maximum(count, 1)
    return pos, np.where(ok, score, 0.0), ok


def coco_to_h36m(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 (..., 17, 2) pixels and scores (..., 17) -> Human3.6M-17 pixels and scores.

    A derived joint (pelvis, spine, thorax, head top) is valid only when its sources are; otherwise it is
    returned as missing (score 0, position (-1, -1)) for :func:`fill_missing` to stand in.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if keypoints.shape[-2:] != (17, 2) or scores.shape != keypoints.shape[:-1]:
        raise ValueError(f"COCO-17 keypoints must be (..., 17, 2) with scores (..., 17); got {keypoints.shape} "
                         f"and {scores.shape}")
    valid = ~missing_mask(keypoints, scores)
    conf = np.where(valid, scores, 0.0).astype(np.float32)
    out = np.full(keypoints.shape, -1.0, np.float32)
    out_conf = np.zeros(scores.shape, np.float32)
    out_valid = np.zeros(scores.shape, bool)
    for h36m, coco in COCO_DIRECT.items():
        out[..., h36m, :] = keypoints[..., coco, :]
        out_conf[..., h36m] = conf[..., coco]
        out_valid[..., h36m] = valid[..., coco]

    def put(joint: int, pos: np.ndarray, score: np.ndarray, ok: np.ndarray) -> None:
        out[..., joint, :] = np.where(ok[..., None], pos, -1.0)
        out_conf[..., joint] = np.where(ok, score, 0.0)
        out_valid[..., joint] = ok

    put(0, *_mean_of(keypoints, conf, valid, (11, 12), need_all=True))           # pelvis
    put(8, *_mean_of(keypoints, conf, valid, (5, 6), need_all=True))             # thorax
    put(7, *_mean_of(out, out_conf, out_valid, (0, 8), need_all=True))           # spine
    centre, centre_conf, centre_ok = _mean_of(keypoints, conf, valid, COCO_EYES_EARS, need_all=False)
    top = centre + HEAD_TOP_GAIN * (centre - out[..., 8, :])
    top_ok = centre_ok & out_valid[..., 8]
    put(10, top, (centre_conf + out_conf[..., 8]) / 2, top_ok)
    return out, out_conf


def blazepose_to_coco(landmarks: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BlazePose-33 (..., 33, 2) pixels and visibility (..., 33) -> COCO-17 pixels and scores."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    visibility = np.asarray(visibility, dtype=np.float32)
    if landmarks.shape[-2:] != (33, 2) or visibility.shape != landmarks.shape[:-1]:
        raise ValueError(f"BlazePose landmarks must be (..., 33, 2) with visibility (..., 33); got "
                         f"{landmarks.shape} and {visibility.shape}")
    idx = list(BLAZEPOSE_TO_COCO)
    return landmarks[..., idx, :], visibility[..., idx]


def to_h36m(keypoints: np.ndarray, scores: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Any supported format -> Human3.6M-17 pixels and scores (missing keypoints marked, not yet filled)."""
    if fmt == "h36m":
        keypoints = np.asarray(keypoints, dtype=np.float32)
        scores = np.asarray(scores, dtype=np.float32)
        if keypoints.shape[-2:] != (17, 2) or scores.shape != keypoints.shape[:-1]:
            raise ValueError(f"Human3.6M-17 keypoints must be (..., 17, 2) with scores (..., 17); got "
                             f"{keypoints.shape} and {scores.shape}")
        missing = missing_mask(keypoints, scores)
        return (np.where(missing[..., None], -1.0, keypoints).astype(np.float32),
                np.where(missing, 0.0, scores).astype(np.float32))
    if fmt == "coco":
        return coco_to_h36m(keypoints, scores)
    if fmt == "blazepose":
        return coco_to_h36m(*blazepose_to_coco(keypoints, scores))
    raise ValueError(f"unknown keypoint format {fmt!r}; choose one of {FORMATS}")


def fill_missing(keypoints: np.ndarray, scores: np.ndarray,
                 last_valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One person's (17, 2) H36M pixels -> (filled positions, scores with 0 where missing, missing mask).

    Stand-ins, in order: ``last_valid`` (17, 2) of the person's track (NaN where never seen), the nearest valid
    ancestor or child in the skeleton, the mean of the valid joints. Raises ValueError when no joint is valid:
    then there is no pose to lift.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    missing = missing_mask(keypoints, scores)
    if missing.all():
        raise ValueError("a pose with no valid keypoint cannot be lifted")
    out = keypoints.copy()
    conf = np.where(missing, 0.0, scores).astype(np.float32)
    if not missing.any():
        return out, conf, missing
    known = ~missing
    if last_valid is not None:
        from_track = missing & np.all(np.isfinite(last_valid), axis=-1)
        out[from_track] = last_valid[from_track]
        known = known | from_track
    centre = keypoints[~missing].mean(0)
    for joint in np.flatnonzero(~known):
        out[joint] = _nearest_known(joint, out, known, centre)
    return out, conf, missing


def _nearest_known(joint: int, points: np.ndarray, known: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Position of the closest joint along the skeleton graph that has a known position."""
    seen = {joint}
    frontier = [joint]
    while frontier:
        nxt = []
        for j in frontier:
            for k in skeleton.JOINT_NEIGHBOURS[j]:
                if k in seen:
                    continue
                if known[k]:
                    return points[k]
                seen.add(k)
                nxt.append(k)
        frontier = nxt
    return fallback
