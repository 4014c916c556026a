"""Tiny generated data for the training tests: synthetic 3D clips and source files of every flavour."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from kasf.training.mocap import MocapClip, render_split

# A standing person, mm, world Z up (x forward, y left).
REST_POSE = np.array([
    [0, 0, 950], [0, -90, 940], [10, -95, 520], [0, -100, 90], [0, 90, 940], [10, 95, 520], [0, 100, 90],
    [0, 0, 1150], [0, 0, 1400], [10, 0, 1550], [0, 0, 1680], [0, 170, 1400], [0, 200, 1130], [20, 210, 880],
    [0, -170, 1400], [0, -200, 1130], [20, -210, 880]], dtype=np.float64)


def synthetic_clip(frames: int = 60, seed: int = 0, subject: str = "s1", action: str = "walk") -> MocapClip:
    """A walking-like motion: the body moves forward while limbs swing (smooth, deterministic by seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None] / 50.0
    phase = rng.uniform(0, 2 * np.pi)
    pose = np.repeat(REST_POSE[None], frames, axis=0)
    swing = 150 * np.sin(2 * np.pi * 1.2 * t + phase)
    for joint, sign in ((2, 1), (3, 1), (5, -1), (6, -1), (12, 1), (13, 1), (15, -1), (16, -1)):
        pose[:, joint, 0] += sign * swing[:, 0] * (1.0 if joint in (3, 6, 13, 16) else 0.5)
    pose[:, :, 0] += 1200 * t  # walking forward at 1.2 m/s
    pose[:, :, 2] += 20 * np.sin(2 * np.pi * 2.4 * t + phase)
    return MocapClip(name=f"{subject}_{action}_{seed}", joints3d=pose, subject=subject, action=action, fps=50.0)


def write_mocap_folder(folder: Path, subjects: tuple[str, ...] = ("s1", "s2", "s3"), frames: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, subject in enumerate(subjects):
        for k, action in enumerate(("walk", "jump")):
            clip = synthetic_clip(frames, seed=10 * i + k, subject=subject, action=action)
            np.savez(folder / f"{clip.name}.npz", joints3d=clip.joints3d.astype(np.float32),
                     subject=np.array(subject), action=np.array(action), fps=np.float32(50))
    return folder


def generic_source(seed: int = 0, frames: int = 60, clips_per_split: int = 2) -> dict:
    """A generic-flavour source dict (both splits) rendered from synthetic clips."""
    rng = np.random.default_rng(seed)
    train = render_split([synthetic_clip(frames, seed=seed + i, subject="a") for i in range(clips_per_split)], rng)
    test = render_split([synthetic_clip(frames, seed=seed + 50 + i, subject="b", action=("walk", "jump")[i % 2])
                         for i in range(clips_per_split)], rng, camera_prefix="test")
    return {"train": train, "test": test}


def flavoured_source(flavour: str, seed: int = 0, frames: int = 60) -> dict:
    """The same data laid out as SportsPose (camera_name gives the resolution) or WorldPose (1920x1080) publish it:
    no image_wh, confidence (F, 17, 1)."""
    data = generic_source(seed, frames)
    for split in data.values():
        wh = {"sportspose": (1312, 1216), "worldpose": (1920, 1080), "generic": None}[flavour]
        if wh is None:
            continue
        scale = wh[0] / split["image_wh"][:, :1]  # re-express pixels for the fixed resolution
        for key in ("joint_2d", "joint3d_image"):
            split[key] = split[key] * scale[:, :, None]
        split["2.5d_factor"] = split["2.5d_factor"] / scale[:, 0]
        del split["image_wh"]
        split["confidence"] = split["confidence"][..., None]
        if flavour == "sportspose":
            split["camera_name"] = np.full(len(split["joint_2d"]), "outdoors")
    return data


def write_pickle(data: dict, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path
