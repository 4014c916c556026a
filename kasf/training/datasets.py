"""Training batches: windows of a split as tensors, flip augmentation (kasf.conventions.flip_pose), and mocap
redrawn every epoch.

Batches are gathered a whole batch at a time (one fancy index into the memory-mapped frames), which is what
keeps CPU training fast and lets DataLoader workers share the store instead of copying it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from kasf import skeleton
from kasf.conventions import flip_pose
from kasf.data.sources import Windows, cut_windows, validate_split
from kasf.training.mocap import MocapClip, augment_clip, render_split


class WindowBatches(torch.utils.data.Dataset):
    """Dataset whose item is a whole batch: ``ds[list_of_window_ids] -> (inputs, root-relative targets)``.

    Use with ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)``.
    """

    def __init__(self, windows: Windows, flip: bool = False, seed: int = 0) -> None:
        self.windows = windows
        self.flip = flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = np.sort(np.asarray(index, dtype=np.int64))  # sorted reads are kinder to a memory map
        x = torch.from_numpy(self.windows.window_field("inputs", index).astype(np.float32))
        y = torch.from_numpy(self.windows.window_field("targets", index).astype(np.float32))
        y = y - y[:, :, skeleton.ROOT_JOINT:skeleton.ROOT_JOINT + 1]
        if self.flip:
            mask = torch.from_numpy(self.rng.random(len(index)) < 0.5)
            if mask.any():
                x[mask] = flip_pose(x[mask])
                y[mask] = flip_pose(y[mask])
        return x, y


def mocap_windows(clips: Sequence[MocapClip], seed: int, n_frames: int, stride: int, cameras_per_clip: int,
                  test: bool = False, random_offset: bool = True, bone_scale: float = 0.0,
                  speed: Sequence[float] = (1.0, 1.0)) -> Windows:
    """Windows of the clips seen through freshly drawn cameras (a new seed gives new cameras and noise), with
    the 3D augmentation of :func:`kasf.training.mocap.augment_clip` when ``bone_scale``/``speed`` ask for it."""
    rng = np.random.default_rng(seed)
    if bone_scale > 0 or tuple(speed) != (1.0, 1.0):
        if test:
            raise ValueError("3D augmentation is for training windows only")
        clips = [augment_clip(clip, rng, bone_scale, speed) for clip in clips]
    split = render_split(clips, rng, cameras_per_clip, camera_prefix="val_cam" if test else "cam")
    frames = validate_split(split, "generic", "mocap", test=test)
    if random_offset and not test:
        # Shift each sequence's first window so successive epochs see different cuts of the same motion.
        keep = np.ones(len(frames.source), bool)
        change = np.flatnonzero(frames.source[1:] != frames.source[:-1]) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [len(frames.source)]])
        for a, b in zip(starts, stops):
            skip = int(rng.integers(0, stride)) if b - a - n_frames > stride else 0
            keep[a:a + skip] = False
        windows = cut_windows(np.where(keep, frames.source, "#skip"), n_frames, stride, short="resample")
        windows = windows[keep[windows[:, 0]]]
    else:
        windows = cut_windows(frames.source, n_frames, stride, short="resample")
    return Windows.from_frames(frames, windows, test=test)
