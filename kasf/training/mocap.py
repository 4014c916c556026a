"""Real motion capture seen through virtual cameras, with detector-like 2D noise.

3D clips (npz with 'joints3d' (T, 17, 3) in mm, world Z up; 'action'; 'subject') become the generic source
layout of :mod:`kasf.data.sources`: a camera is placed around the subject (any yaw, elevation 2-40 degrees,
distance so the person covers 10-80 % of the image height, the focal length of a real lens for a broadcast
1920x1080 or handheld 1280x720 image), it follows the subject as an operator would, the joints are projected,
and the 2D is corrupted the way a 2D detector corrupts it (jitter scaled to the person's size, bursts of large
errors on wrists, ankles and elbows, occasional left/right swaps, confidences that drop where the error is
large). Everything is driven by a numpy Generator, so a seed reproduces it exactly; training draws new cameras
every epoch from the same 3D clips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from kasf import skeleton
from kasf.data.sample import SAMPLE_PATH

# Joints a 2D detector gets wrong most often (extremities), and how much noisier they are than the torso.
_EXTREMITIES = (3, 6, 12, 13, 15, 16)
_JOINT_NOISE = np.ones(skeleton.NUM_JOINTS, dtype=np.float64)
_JOINT_NOISE[[3, 6, 13, 16]] = 1.6  # ankles, wrists
_JOINT_NOISE[[2, 5, 12, 15]] = 1.3  # knees, elbows
_JOINT_NOISE[[9, 10]] = 1.2  # head
_JOINT_NOISE[[0, 7]] = 1.1  # pelvis and spine are not detector keypoints: derived from hips / shoulders


class MocapError(ValueError):
    """A motion-capture clip that cannot be used (missing file or key, wrong shape, non-finite values)."""


@dataclass
class MocapClip:
    """One 3D clip in mm, world Z up."""

    name: str
    joints3d: np.ndarray  # (T, 17, 3) float64
    subject: str
    action: str
    fps: float


def load_clip(path: str | os.PathLike) -> MocapClip:
    """Read and validate one clip; every failure names the file and the field."""
    path = Path(path)
    if not path.exists():
        raise MocapError(f"{path}: motion-capture clip not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except Exception as err:  # zipfile.BadZipFile, ValueError, OSError: all mean "not a readable npz"
        raise MocapError(f"{path}: not a readable npz file ({err})") from None
    if "joints3d" not in fields:
        raise MocapError(f"{path}: missing field 'joints3d' (T, 17, 3) in mm; found {sorted(fields)}")
    joints = np.asarray(fields["joints3d"], dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (skeleton.NUM_JOINTS, 3):
        raise MocapError(f"{path}: field 'joints3d' must have shape (T, 17, 3), got {joints.shape}")
    if not np.isfinite(joints).all():
        raise MocapError(f"{path}: field 'joints3d' holds NaN or infinite values")
    subject = str(fields.get("subject", path.stem))
    action = str(fields.get("action", "unknown"))
    fps = float(fields.get("fps", 50.0))
    return MocapClip(name=path.stem, joints3d=joints, subject=subject, action=action, fps=fps)


def load_clips(root: str | os.PathLike) -> list[MocapClip]:
    """All clips of a folder (or its clips/ subfolder), sorted by name for reproducibility."""
    root = Path(root)
    if (root / "clips").is_dir():
        root = root / "clips"
    if not root.is_dir():
        raise MocapError(f"{root}: motion-capture folder not found")
    files = sorted(root.glob("*.npz"))
    if not files:
        raise MocapError(f"{root}: no .npz clips found")
    return [load_clip(f) for f in files]


def split_by_subject(clips: Sequence[MocapClip], val_subjects: Iterable[str]) -> tuple[list[MocapClip],
                                                                                      list[MocapClip]]:
    """Training and validation clips; validation subjects never appear in training."""
    val = set(val_subjects)
    known = {c.subject for c in clips}
    unknown = val - known
    if unknown:
        raise MocapError(f"validation subjects {sorted(unknown)} are not in the data (subjects: {sorted(known)})")
    return [c for c in clips if c.subject not in val], [c for c in clips if c.subject in val]


# ---------------------------------------------------------------------------------------------------------------
# 3D augmentation: other bodies and other tempi of the same motions


def _bone_of_joint() -> np.ndarray:
    """For each joint, the index of the left/right-symmetric bone group that ends at it (-1 for the root)."""
    groups = np.full(skeleton.NUM_JOINTS, -1)
    mirror = dict(zip(skeleton.FLIP_RIGHT, skeleton.FLIP_LEFT))
    for joint in range(1, skeleton.NUM_JOINTS):
        groups[joint] = mirror.get(joint, joint)  # a right bone shares its left twin's factor
    return groups


_BONE_GROUP = _bone_of_joint()


def augment_clip(clip: MocapClip, rng: np.random.Generator, bone_scale: float = 0.0,
                 speed: Sequence[float] = (1.0, 1.0)) -> MocapClip:
    """The same motion by another body at another tempo, for training only.

    Why: 7 training subjects and 27 clips are few bodies and few tempi; a temporal model can learn them by heart.
    ``bone_scale``: standard deviation of the log of a factor per bone (left and right bones share theirs) and of
    one factor for the whole body; bones are rebuilt from the root outwards, so angles are kept. ``speed``: the
    clip is resampled at a tempo drawn log-uniformly in [low, high] (linear interpolation; 2 plays twice as fast).
    """
    joints = clip.joints3d
    low, high = float(speed[0]), float(speed[1])
    if high > low or low != 1.0:
        rate = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if high > low else low
        times = np.arange(0.0, len(joints) - 1 + 1e-9, rate)
        if len(times) >= 2:
            base = np.minimum(np.floor(times).astype(int), len(joints) - 2)
            frac = (times - base)[:, None, None]
            joints = joints[base] * (1.0 - frac) + joints[base + 1] * frac
    if bone_scale > 0:
        factors = np.exp(rng.normal(0.0, bone_scale, skeleton.NUM_JOINTS)) * np.exp(rng.normal(0.0, bone_scale))
        rebuilt = joints.copy()
        for joint, parent in enumerate(skeleton.PARENTS):  # parents come before their children
            if parent >= 0:
                bone = joints[:, joint] - joints[:, parent]
                rebuilt[:, joint] = rebuilt[:, parent] + bone * factors[_BONE_GROUP[joint]]
        # keep the lowest point where it was (feet stay on the ground)
        rebuilt[..., 2] += joints[..., 2].min() - rebuilt[..., 2].min()
        joints = rebuilt
    return MocapClip(name=clip.name, joints3d=joints, subject=clip.subject, action=clip.action, fps=clip.fps)


# ---------------------------------------------------------------------------------------------------------------
# Cameras


@dataclass
class VirtualCamera:
    """A pinhole camera: per-frame world-to-camera rotations (camera x right, y down, z forward)."""

    rotations: np.ndarray  # (T, 3, 3), rows = camera axes in world coordinates
    position: np.ndarray  # (3,) world mm
    focal: float  # px
    center: tuple[float, float]  # principal point, px
    image_wh: tuple[int, int]
    kind: str  # "broadcast" or "handheld"

    def to_camera(self, joints_world: np.ndarray) -> np.ndarray:
        """World points (T, J, 3) -> camera coordinates (T, J, 3), mm."""
        return np.einsum("tij,tkj->tki", self.rotations, joints_world - self.position)

    def project(self, joints_cam: np.ndarray) -> np.ndarray:
        """Camera-space mm (..., 3) -> pixels (..., 2): u = f X/Z + cx, v = f Y/Z + cy."""
        z = joints_cam[..., 2:3]
        return self.focal * joints_cam[..., :2] / z + np.asarray(self.center)

    def unproject(self, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) at camera depth Z (...) -> camera-space mm (..., 3); inverse of :meth:`project`."""
        xy = (pixels - np.asarray(self.center)) * depth[..., None] / self.focal
        return np.concatenate([xy, depth[..., None]], axis=-1)


def _look_at(position: np.ndarray, targets: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotations (T, 3, 3) of a camera at ``position`` looking at ``targets`` (T, 3), rolled by ``roll`` (T,)."""
    forward = targets - position
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def _smooth(track: np.ndarray, window: int) -> np.ndarray:
    """Moving average along time with edge padding (a camera operator's lag)."""
    if window <= 1 or len(track) < 2:
        return track.copy()
    pad = window // 2
    padded = np.concatenate([np.repeat(track[:1], pad, 0), track, np.repeat(track[-1:], pad, 0)])
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, i], kernel, mode="valid")[:len(track)]
                     for i in range(track.shape[1])], axis=1)


def random_camera(joints_world: np.ndarray, rng: np.random.Generator, fps: float = 50.0,
                  kind: str | None = None) -> VirtualCamera:
    """A plausible camera for this clip: broadcast (long lens, slow pan) or handheld (wide lens, shake)."""
    frames = len(joints_world)
    kind = kind or ("broadcast" if rng.random() < 0.5 else "handheld")
    if kind == "broadcast":
        width, height = 1920, 1080
        focal = width * rng.uniform(0.9, 3.0)  # 35 mm-equivalent ~32-105 mm
    elif kind == "handheld":
        width, height = (1280, 720) if rng.random() < 0.7 else (720, 1280)  # landscape or portrait phone
        focal = width * rng.uniform(0.65, 1.2)
    else:
        raise ValueError(f"camera kind must be 'broadcast' or 'handheld', got {kind!r}")
    pelvis = joints_world[:, skeleton.ROOT_JOINT]
    person_height = float(np.percentile(joints_world[..., 2].max(1) - joints_world[..., 2].min(1), 90))
    person_height = max(person_height, 800.0)
    fraction = rng.uniform(0.1, 0.8)  # of the image height
    distance = focal * person_height / (fraction * height)
    yaw = rng.uniform(0, 2 * np.pi)
    elevation = np.deg2rad(rng.uniform(2, 40))
    centre = pelvis.mean(0)
    direction = np.array([np.cos(yaw) * np.cos(elevation), np.sin(yaw) * np.cos(elevation), np.sin(elevation)])
    position = centre + distance * direction
    position[2] = max(position[2], 300.0)  # never below the floor
    # The operator follows the pelvis with a lag; the subject may sit off-centre in the frame.
    follow = _smooth(pelvis, int(fps * (0.8 if kind == "broadcast" else 0.3)) | 1)
    half_fov_y = np.arctan(height / 2 / focal)
    margin = max(half_fov_y - np.arctan(fraction * height / 2 / focal), 0.0)
    offset_angles = rng.uniform(-0.6, 0.6, size=2) * margin
    roll = np.full(frames, rng.normal(0, np.deg2rad(1.0)))
    if kind == "handheld":
        shake = np.cumsum(rng.normal(0, 1, size=(frames, 3)), axis=0)
        shake = _smooth(shake - shake.mean(0), 5) * rng.uniform(0.5, 3.0) * distance / 1000
        follow = follow + shake
        roll = roll + _smooth(np.cumsum(rng.normal(0, np.deg2rad(0.1), size=(frames, 1)), 0), 5)[:, 0]
    rotations = _look_at(position, follow, roll)
    # Tilt/pan the view so the subject is not always at the image centre.
    cx, cy = np.cos(offset_angles), np.sin(offset_angles)
    pan = np.array([[cx[0], 0, -cy[0]], [0, 1, 0], [cy[0], 0, cx[0]]])
    tilt = np.array([[1, 0, 0], [0, cx[1], -cy[1]], [0, cy[1], cx[1]]])
    rotations = np.einsum("ij,jk,tkl->til", tilt, pan, rotations)
    center = (width / 2 + rng.normal(0, width * 0.005), height / 2 + rng.normal(0, height * 0.005))
    return VirtualCamera(rotations=rotations, position=position, focal=float(focal), center=center,
                         image_wh=(width, height), kind=kind)


# ---------------------------------------------------------------------------------------------------------------
# Detector noise


def detector_noise(pixels: np.ndarray, rng: np.random.Generator, level: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt clean 2D joints (T, 17, 2) like a 2D detector; returns (noisy pixels, confidences (T, 17)).

    Jitter is a fraction of the person's size (white plus slow drift), extremities get bursts of large errors,
    left/right limbs swap now and then, and the confidence falls with the error. ``level`` (0.5-2) scales it all;
    by default each call draws one, like detectors of different quality.
    """
    frames = len(pixels)
    level = float(rng.uniform(0.5, 1.6)) if level is None else float(level)
    size = np.linalg.norm(pixels.max(1) - pixels.min(1), axis=-1)  # (T,) bounding-box diagonal
    size = np.maximum(_smooth(size[:, None], 9)[:, 0], 20.0)
    scale = size[:, None, None] * _JOINT_NOISE[None, :, None]
    white = rng.normal(0, 0.010 * level, size=pixels.shape)
    drift = _smooth(rng.normal(0, 0.02 * level, size=(frames, skeleton.NUM_JOINTS * 2)), 7)
    error = (white + drift.reshape(pixels.shape)) * scale + rng.normal(0, 0.5, size=pixels.shape)
    # Bursts of large errors (occlusion, motion blur) on extremities.
    burst = np.zeros((frames, skeleton.NUM_JOINTS))
    n_bursts = rng.poisson(0.015 * level * frames * len(_EXTREMITIES) / 5)
    for _ in range(n_bursts):
        joint = _EXTREMITIES[rng.integers(len(_EXTREMITIES))]
        start, length = rng.integers(frames), rng.integers(1, 8)
        magnitude = rng.uniform(0.05, 0.25) * size[start]
        angle = rng.uniform(0, 2 * np.pi)
        stop = min(start + length, frames)
        error[start:stop, joint] += magnitude * np.array([np.cos(angle), np.sin(angle)])
        burst[start:stop, joint] = 1.0
    noisy = pixels + error
    # Left/right confusions: a whole limb pair swaps for a few frames.
    swapped = np.zeros((frames, skeleton.NUM_JOINTS))
    pairs = [((1, 2, 3), (4, 5, 6)), ((14, 15, 16), (11, 12, 13)), ((3,), (6,)), ((16,), (13,))]
    for _ in range(rng.poisson(0.004 * level * frames)):
        right, left = pairs[rng.integers(len(pairs))]
        start = rng.integers(frames)
        stop = min(start + rng.integers(1, 10), frames)
        idx_r, idx_l = list(right), list(left)
        noisy[start:stop, idx_r + idx_l] = noisy[start:stop, idx_l + idx_r]
        swapped[start:stop, idx_r + idx_l] = 1.0
    relative = np.linalg.norm(noisy - pixels, axis=-1) / size[:, None]
    base = rng.uniform(0.8, 0.97)
    confidence = base - 2.5 * relative - 0.25 * burst - 0.2 * swapped + rng.normal(0, 0.03, relative.shape)
    return noisy.astype(np.float32), np.clip(confidence, 0.05, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Clip -> generic layout


def render_clip(clip: MocapClip, rng: np.random.Generator, kind: str | None = None, noise: bool = True,
                noise_level: float | None = None) -> dict[str, np.ndarray]:
    """One clip through one random camera: the per-frame fields of the generic source layout (plus truth).

    Fields: joint_2d (T,17,2) px, confidence (T,17), joint3d_image (T,17,3), joints_2.5d_image (T,17,3) mm,
    2.5d_factor (T,), image_wh (T,2), joints3d_camera (T,17,3) mm (camera space, not root-relative).
    """
    camera = random_camera(clip.joints3d, rng, fps=clip.fps, kind=kind)
    cam = camera.to_camera(clip.joints3d)
    cam[..., 2] = np.maximum(cam[..., 2], 100.0)  # a joint behind the lens would never be seen: keep it ahead
    pixels = camera.project(cam)
    z_root = cam[:, skeleton.ROOT_JOINT, 2]
    depth = camera.focal * (cam[..., 2] - z_root[:, None]) / z_root[:, None]
    joint3d_image = np.concatenate([pixels, depth[..., None]], axis=-1)
    factor = z_root / camera.focal
    if noise:
        joint_2d, confidence = detector_noise(pixels, rng, level=noise_level)
    else:
        joint_2d, confidence = pixels.astype(np.float32), np.ones(pixels.shape[:2], np.float32)
    frames = len(pixels)
    return {
        "joint_2d": joint_2d, "confidence": confidence,
        "joint3d_image": joint3d_image.astype(np.float32),
        "joints_2.5d_image": (joint3d_image * factor[:, None, None]).astype(np.float32),
        "2.5d_factor": factor.astype(np.float32),
        "image_wh": np.tile(np.array(camera.image_wh, np.float32), (frames, 1)),
        "joints3d_camera": cam.astype(np.float32),
    }


def render_split(clips: Sequence[MocapClip], rng: np.random.Generator, cameras_per_clip: int = 1,
                 noise: bool = True, camera_prefix: str = "cam") -> dict[str, np.ndarray]:
    """Many clips x cameras, concatenated into one split of the generic layout ('source' ids per frame)."""
    parts: dict[str, list[np.ndarray]] = {}
    for clip in clips:
        for k in range(cameras_per_clip):
            fields = render_clip(clip, rng, noise=noise)
            frames = len(fields["joint_2d"])
            fields["source"] = np.full(frames, f"{clip.name}/{camera_prefix}{k}")
            fields["action"] = np.full(frames, clip.action)
            fields["camera_name"] = np.full(frames, f"{camera_prefix}{k}")
            fields["subject"] = np.full(frames, clip.subject)
            for key, value in fields.items():
                parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


def prepare_mocap(root: str | os.PathLike, val_subjects: Sequence[str], seed: int = 0, train_cameras: int = 4,
                  test_cameras: int = 4) -> dict[str, dict[str, np.ndarray]]:
    """The generic source dict {'train', 'test'} from a folder of clips, split by subject, reproducible by seed."""
    clips = load_clips(root)
    train, test = split_by_subject(clips, val_subjects)
    if not train:
        raise MocapError(f"{root}: every subject is held out; nothing left to train on")
    # Separate generators: the test cameras do not depend on how many training cameras were drawn.
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return {"train": render_split(train, train_rng, train_cameras, camera_prefix="train_cam"),
            "test": render_split(test, test_rng, test_cameras, camera_prefix="test_cam") if test else {}}



def make_sample(clip_path: str | os.PathLike, out: str | os.PathLike = SAMPLE_PATH, seed: int = 16) -> Path:
    """Render one mocap clip through a broadcast camera with detector noise and save it as the bundled sample
    (the fields :func:`kasf.data.sample.load_sample` reads)."""
    clip = load_clip(clip_path)
    fields = render_clip(clip, np.random.default_rng(seed), kind="broadcast")
    mm = fields["joints_2.5d_image"]
    truth = mm - mm[:, skeleton.ROOT_JOINT:skeleton.ROOT_JOINT + 1]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, keypoints=fields["joint_2d"].astype(np.float32), scores=fields["confidence"].astype(np.float32),
        image_wh=np.asarray(fields["image_wh"][0], dtype=np.int32), fps=np.float32(clip.fps),
        joints3d_mm=truth.astype(np.float32), factor=fields["2.5d_factor"].astype(np.float32),
        clip=np.str_(clip.name), subject=np.str_(clip.subject), action=np.str_(clip.action))
    return out


if __name__ == "__main__":
    import sys

    print(make_sample(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cmu_mocap/clips/cmu_16_03.npz"))
