"""The sample sequence shipped in the package: real motion capture seen through a virtual camera.

``kasf/assets/sample_sequence.npz`` is CMU clip 16_03 (subject cmu16, a high jump, 50 fps; data from
mocap.cs.cmu.edu), rendered by :func:`kasf.training.mocap.make_sample` through a broadcast camera with
detector-like noise. Subject cmu16 is held out of the demo checkpoint's training. Fields:

- ``keypoints`` (F, 17, 2) float32: noisy 2D detections in pixels, Human3.6M-17 order
- ``scores`` (F, 17) float32: detector-like confidences in (0, 1]
- ``image_wh`` (2,) int: image width and height in pixels; ``fps`` (): frame rate
- ``joints3d_mm`` (F, 17, 3) float32: the 3D truth, root-relative, mm, in the 2.5D layout the lifter predicts
  and kasf-eval scores (x, y = pixel position x 2.5D factor, z = depth relative to the root; docs/conventions.md)
- ``factor`` (F,) float32: the 2.5D factor (mm per pixel-scale unit) that turns a denormalised prediction to mm
- ``clip``, ``subject``, ``action``: provenance

It lets a new user run the whole pipeline with no camera and no download, and gives parity checks and
benchmarks real windows with a known truth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kasf.conventions import to_model_input

SAMPLE_PATH = Path(__file__).resolve().parents[1] / "assets" / "sample_sequence.npz"  # kasf/assets


@dataclass
class SampleSequence:
    keypoints: np.ndarray
    scores: np.ndarray
    image_wh: tuple[int, int]
    fps: float
    joints3d_mm: np.ndarray
    factor: np.ndarray
    clip: str

    def model_input(self) -> np.ndarray:
        """(F, 17, 3) normalised input frames."""
        return to_model_input(self.keypoints, self.scores, *self.image_wh)


def load_sample(path: str | os.PathLike = SAMPLE_PATH) -> SampleSequence:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sample sequence not found: {path} (the package is incomplete; reinstall kasf)")
    with np.load(path, allow_pickle=False) as data:
        return SampleSequence(keypoints=data["keypoints"], scores=data["scores"],
                              image_wh=(int(data["image_wh"][0]), int(data["image_wh"][1])), fps=float(data["fps"]),
                              joints3d_mm=data["joints3d_mm"], factor=data["factor"], clip=str(data["clip"]))
