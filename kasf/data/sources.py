"""Source files (SportsPose, WorldPose, generic) and clip cutting into memory-mapped contiguous arrays.

A source is a dict with 'train' and 'test', each a dict of per-frame arrays (the MotionBERT-style layout the
KASportsFormer authors publish):

    joint_2d        (F, 17, 2)          2D keypoints in pixels
    confidence      (F, 17, 1) or (F, 17), optional: detector confidence in [0, 1] (1.0 when absent)
    joint3d_image   (F, 17, 3)          projected pixel x, y and depth z in the same pixel scale
    source          (F,)                sequence id per frame (windows never cross a change of id)
    image_wh        (F, 2)              image width and height in pixels (generic; SportsPose derives it from
                                        camera_name, WorldPose is 1920x1080)
    test only: joints_2.5d_image (F, 17, 3) mm, 2.5d_factor (F,), action (F,), camera_name (F,)

Flavours: 'sportspose' (resolution by camera_name: outdoors 1312x1216, indoors 1216x1936), 'worldpose'
(1920x1080), 'generic' (image_wh per frame). :func:`build_clip_store` normalises once, cuts windows once and writes
contiguous .npy arrays (temporary names, then renamed) that :class:`ClipStore` opens memory-mapped: DataLoader
workers then share the page cache instead of holding a copy each.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kasf import skeleton
from kasf.atomic import atomic_path, write_bytes_atomic
from kasf.conventions import normalize_screen

FLAVOURS = ("sportspose", "worldpose", "generic")
SPORTSPOSE_RESOLUTIONS = {"outdoors": (1312, 1216), "indoors": (1216, 1936)}
WORLDPOSE_RESOLUTION = (1920, 1080)
TEST_FIELDS = ("joints_2.5d_image", "2.5d_factor", "action", "camera_name")
STORE_VERSION = 1


class SourceError(ValueError):
    """A source file that cannot be used; the message names the file, the split and the field."""


def read_source_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a source pickle (or .npz with 'train/...' and 'test/...' keys) without interpreting it."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: source file not found")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; expected a source file (.pkl)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw: dict[str, Any] = {}
                for key in data.files:
                    split, _, field = key.partition("/")
                    raw.setdefault(split, {})[field] = data[key]
        else:
            with open(path, "rb") as f:
                raw = pickle.load(f)
    except Exception as err:  # truncated pickle, wrong format: all mean the same to the user
        raise SourceError(f"{path}: not a readable source file ({type(err).__name__}: {err})") from None
    if not isinstance(raw, Mapping):
        raise SourceError(f"{path}: a source file must hold a dict with 'train' and 'test', found "
                          f"{type(raw).__name__}")
    return dict(raw)


def _resolutions(split: Mapping[str, Any], flavour: str, where: str, frames: int) -> np.ndarray:
    if "image_wh" in split:
        wh = np.asarray(split["image_wh"], dtype=np.float32)
        if wh.shape == (2,):
            wh = np.tile(wh, (frames, 1))
        if wh.shape != (frames, 2):
            raise SourceError(f"{where}: field 'image_wh' must have shape ({frames}, 2), got {wh.shape}")
        if not (np.isfinite(wh).all() and (wh > 0).all()):
            raise SourceError(f"{where}: field 'image_wh' must be positive and finite")
        return wh
    if flavour == "worldpose":
        return np.tile(np.array(WORLDPOSE_RESOLUTION, np.float32), (frames, 1))
    if flavour == "sportspose":
        if "camera_name" not in split:
            raise SourceError(f"{where}: missing field 'camera_name' (SportsPose takes the resolution from it)")
        names = np.asarray(split["camera_name"]).astype(str)
        bad = sorted(set(names) - set(SPORTSPOSE_RESOLUTIONS))
        if bad:
            raise SourceError(f"{where}: field 'camera_name' has unknown values {bad[:5]}; SportsPose knows "
                              f"{sorted(SPORTSPOSE_RESOLUTIONS)}")
        table = {k: np.array(v, np.float32) for k, v in SPORTSPOSE_RESOLUTIONS.items()}
        return np.stack([table[n] for n in names]) if frames else np.zeros((0, 2), np.float32)
    raise SourceError(f"{where}: missing field 'image_wh' (F, 2): the generic flavour needs each frame's "
                      "image size")


def _array(split: Mapping[str, Any], field: str, where: str, shape: tuple[int | None, ...],
           dtype: Any = np.float32) -> np.ndarray:
    if field not in split:
        raise SourceError(f"{where}: missing field '{field}'; found {sorted(map(str, split))}")
    try:
        value = np.asarray(split[field], dtype=dtype)
    except (TypeError, ValueError) as err:
        raise SourceError(f"{where}: field '{field}' is not a numeric array ({err})") from None
    expected = "(" + ", ".join("F" if s is None else str(s) for s in shape) + ")"
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise SourceError(f"{where}: field '{field}' must have shape {expected}, got {value.shape}")
    return value


def _finite(value: np.ndarray, field: str, where: str) -> None:
    bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    if bad.any():
        frames = np.flatnonzero(bad)
        raise SourceError(f"{where}: field '{field}' has NaN or infinite values in {len(frames)} frame(s), first "
                          f"at frame {frames[0]}; drop or fill those frames before training")


@dataclass
class SplitFrames:
    """One split, validated and normalised, frame by frame."""

    inputs: np.ndarray  # (F, 17, 3) normalised x, y and confidence
    targets: np.ndarray  # (F, 17, 3) normalised 2.5D (not yet root-relative)
    source: np.ndarray  # (F,) sequence id as str
    image_wh: np.ndarray  # (F, 2)
    extras: dict[str, np.ndarray]  # test: joints_2.5d_image, 2.5d_factor, action, camera_name


def validate_split(split: Any, flavour: str, where: str, test: bool) -> SplitFrames:
    """Check one split and normalise it (docs/conventions.md); each failure is one clear SourceError."""
    if flavour not in FLAVOURS:
        raise SourceError(f"{where}: unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    if not isinstance(split, Mapping):
        raise SourceError(f"{where}: must be a dict of per-frame arrays, found {type(split).__name__}")
    j2d = _array(split, "joint_2d", where, (None, skeleton.NUM_JOINTS, None))
    if j2d.shape[2] < 2:
        raise SourceError(f"{where}: field 'joint_2d' must have shape (F, 17, 2), got {j2d.shape}")
    j2d = j2d[..., :2]
    frames = len(j2d)
    if frames == 0:
        raise SourceError(f"{where}: field 'joint_2d' holds no frames")
    _finite(j2d, "joint_2d", where)
    j3d = _array(split, "joint3d_image", where, (frames, skeleton.NUM_JOINTS, 3))
    _finite(j3d, "joint3d_image", where)
    if "confidence" in split and split["confidence"] is not None:
        conf = np.asarray(split["confidence"], dtype=np.float32)
        if conf.shape == (frames, skeleton.NUM_JOINTS, 1):
            conf = conf[..., 0]
        if conf.shape != (frames, skeleton.NUM_JOINTS):
            raise SourceError(f"{where}: field 'confidence' must have shape (F, 17, 1) or (F, 17) with F={frames}, "
                              f"got {conf.shape}")
        _finite(conf, "confidence", where)
    else:
        conf = np.ones((frames, skeleton.NUM_JOINTS), np.float32)
    if "source" not in split:
        raise SourceError(f"{where}: missing field 'source' (sequence id per frame, used to cut clips)")
    source = np.asarray(split["source"]).astype(str)
    if source.shape != (frames,):
        raise SourceError(f"{where}: field 'source' must have shape ({frames},), got {source.shape}")
    wh = _resolutions(split, flavour, where, frames)
    width, height = wh[:, 0], wh[:, 1]
    inputs = np.concatenate([normalize_screen(j2d, width, height), conf[..., None]], axis=-1)
    targets = normalize_screen(j3d, width, height)
    extras: dict[str, np.ndarray] = {}
    if test:
        extras["joints_2.5d_image"] = _array(split, "joints_2.5d_image", where, (frames, skeleton.NUM_JOINTS, 3))
        _finite(extras["joints_2.5d_image"], "joints_2.5d_image", where)
        extras["2.5d_factor"] = _array(split, "2.5d_factor", where, (frames,))
        _finite(extras["2.5d_factor"], "2.5d_factor", where)
        for field in ("action", "camera_name"):
            if field not in split:
                raise SourceError(f"{where}: missing field '{field}' (needed for evaluation)")
            extras[field] = np.asarray(split[field]).astype(str)
            if extras[field].shape != (frames,):
                raise SourceError(f"{where}: field '{field}' must have shape ({frames},), got {extras[field].shape}")
    return SplitFrames(inputs.astype(np.float32), targets.astype(np.float32), source, wh, extras)


def sequence_bounds(source: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal sequence ids."""
    if len(source) == 0:
        return []
    change = np.flatnonzero(source[1:] != source[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(source)]])
    return list(zip(starts.tolist(), stops.tolist()))


def cut_windows(source: np.ndarray, n_frames: int, stride: int, short: str = "resample",
                where: str = "source") -> np.ndarray:
    """Frame indices (N, n_frames) of the windows of every sequence.

    Windows start every ``stride`` frames and never cross a change of sequence id. A sequence shorter than a
    window is resampled to n_frames (the reference behaviour, ``short='resample'``), dropped (``'drop'``) or
    refused (``'error'``).
    """
    if n_frames < 1 or stride < 1:
        raise ValueError(f"n_frames and stride must be >= 1, got {n_frames}, {stride}")
    if short not in ("resample", "drop", "error"):
        raise ValueError(f"short must be 'resample', 'drop' or 'error', got {short!r}")
    windows = []
    for start, stop in sequence_bounds(source):
        length = stop - start
        if length >= n_frames:
            for s in range(start, stop - n_frames + 1, stride):
                windows.append(np.arange(s, s + n_frames))
        elif short == "resample":
            windows.append(start + np.linspace(0, length, n_frames, endpoint=False).astype(np.int64))
        elif short == "error":
            raise SourceError(f"{where}: field 'source': sequence {str(source[start])!r} has {length} frames, shorter "
                              f"than a window of {n_frames} (set short_clips: resample or drop)")
    if not windows:
        raise SourceError(f"{where}: no window of {n_frames} frames could be cut (every sequence is too short)")
    return np.stack(windows).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Memory-mapped store


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


class Windows:
    """Frames of one split plus the window index (N, n_frames): ``arrays['inputs'][windows[i]]`` is window i."""

    TEST_ARRAYS = ("joints_2.5d_image", "2.5d_factor", "action", "camera_name")

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.arrays = arrays
        self.meta = meta

    @classmethod
    def from_frames(cls, frames: SplitFrames, windows: np.ndarray, test: bool) -> "Windows":
        """In memory (the mocap data, redrawn every epoch, is small)."""
        arrays = {"inputs": frames.inputs, "targets": frames.targets, "image_wh": frames.image_wh,
                  "windows": windows}
        if test:
            arrays.update({k: frames.extras[k] for k in cls.TEST_ARRAYS})
        return cls(arrays, {"test": test, "frames": len(frames.inputs), "windows": len(windows)})

    @property
    def windows(self) -> np.ndarray:
        return self.arrays["windows"]

    @property
    def is_test(self) -> bool:
        return bool(self.meta.get("test"))

    def __len__(self) -> int:
        return len(self.windows)

    def window_field(self, name: str, index: np.ndarray | int) -> np.ndarray:
        """The frames of windows ``index`` of one per-frame array, e.g. ('inputs', [3, 7]) -> (2, T, 17, 3)."""
        return np.asarray(self.arrays[name][self.windows[index]])


class ClipStore(Windows):
    """A split written by :func:`write_clip_store`, opened memory-mapped (nothing copied until a batch)."""

    ARRAYS = ("inputs", "targets", "image_wh", "windows")

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise SourceError(f"{self.directory}: not a clip store (no meta.json)")
        meta = json.loads(meta_path.read_text())
        names = self.ARRAYS + (self.TEST_ARRAYS if meta.get("test") else ())
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            file = self.directory / f"{name}.npy"
            if not file.exists():
                raise SourceError(f"{self.directory}: clip store lacks {file.name}; delete the folder to rebuild it")
            arrays[name] = np.load(file, mmap_mode=None if name in ("action", "camera_name") else "r")
        super().__init__(arrays, meta)


def write_clip_store(directory: str | os.PathLike, frames: SplitFrames, windows: np.ndarray, test: bool,
                     meta: Mapping[str, Any]) -> ClipStore:
    """Write a split (each array to a temporary name, then renamed; meta.json last marks it complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)
    _atomic_save_npy(directory / "inputs.npy", frames.inputs)
    _atomic_save_npy(directory / "targets.npy", frames.targets)
    _atomic_save_npy(directory / "image_wh.npy", frames.image_wh.astype(np.float32))
    _atomic_save_npy(directory / "windows.npy", windows)
    if test:
        for name in Windows.TEST_ARRAYS:
            value = frames.extras[name]
            _atomic_save_npy(directory / f"{name}.npy", value.astype(np.float32) if value.dtype.kind == "f" else value)
    text = json.dumps({**meta, "test": test, "frames": len(frames.inputs), "windows": len(windows),
                       "store_version": STORE_VERSION}, indent=1)
    write_bytes_atomic(directory / "meta.json", text.encode())
    return ClipStore(directory)


def default_cache_dir() -> Path:
    """Where prepared clip stores go unless the config says otherwise (KASF_CACHE or ~/.cache/kasf)."""
    return Path(os.environ.get("KASF_CACHE", Path.home() / ".cache" / "kasf")) / "clips"


def build_clip_store(source_file: str | os.PathLike, flavour: str, n_frames: int, stride_train: int | None = None,
                     stride_test: int | None = None, cache_dir: str | os.PathLike | None = None,
                     short_clips: str = "resample") -> dict[str, ClipStore]:
    """Validate a source file once, cut its windows once, and return memory-mapped stores {'train', 'test'}.

    The store is keyed by the file's path, size and modification time and the cutting parameters, so a second
    run (or every DDP rank and DataLoader worker) reuses it.
    """
    source_file = Path(source_file)
    if flavour not in FLAVOURS:
        raise SourceError(f"{source_file}: unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    stride_train = stride_train or max(n_frames // 3, 1)
    stride_test = stride_test or n_frames
    if not source_file.exists():
        raise SourceError(f"{source_file}: source file not found")
    stat = source_file.stat()
    key = json.dumps([str(source_file.resolve()), stat.st_size, stat.st_mtime_ns, flavour, n_frames, stride_train,
                      stride_test, short_clips, STORE_VERSION])
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / f"{source_file.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    stores: dict[str, ClipStore] = {}
    if all((folder / s / "meta.json").exists() for s in ("train", "test")):
        return {s: ClipStore(folder / s) for s in ("train", "test")}
    raw = read_source_file(source_file)
    for split in ("train", "test"):
        if split not in raw:
            raise SourceError(f"{source_file}: missing split '{split}'; found {sorted(map(str, raw))}")
    for split, stride in (("train", stride_train), ("test", stride_test)):
        where = f"{source_file} [{split}]"
        frames = validate_split(raw[split], flavour, where, test=split == "test")
        windows = cut_windows(frames.source, n_frames, stride, short=short_clips, where=where)
        short = sum(1 for a, b in sequence_bounds(frames.source) if b - a < n_frames)
        if short and short_clips == "resample":
            warnings.warn(f"{where}: {short} sequence(s) shorter than {n_frames} frames were resampled to a window",
                          stacklevel=2)
        meta = {"source_file": str(source_file), "flavour": flavour, "n_frames": n_frames, "stride": stride}
        stores[split] = write_clip_store(folder / split, frames, windows, split == "test", meta)
    return stores

