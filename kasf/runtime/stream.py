"""The streaming pipeline: frames -> 2D keypoints -> tracks -> one batched lift per frame -> poses.

Window modes (``docs/streaming.md``; frame numbers are 0-based input frames):

- ``causal``: at frame t each person seen at t gets the window t-26..t and the pose of its last frame. No delay
  beyond compute. At start-up the missing past is the first frame repeated, so the first pose is frame 0's and
  frames in = poses out.
- ``centre``: the pose of frame t-13 is emitted at frame t from the window t-26..t (13 frames later, the accuracy
  the model was trained for). At the end of a track the missing future is its last frame repeated.
- ``chunk`` with stride S: every S frames a person's window ending at the newest frame is lifted once and its last
  S frames are emitted together (delay up to S-1 frames; S times fewer lifts).

The windows of every person that is due at a frame go through ``Lifter.predict`` in one batch (flip test-time
augmentation doubles that batch, it does not add a call). Each stage is timed per frame: capture, 2D, track,
lift, post (smoothing, units), output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import numpy as np

from kasf import skeleton
from kasf.conventions import NORMALIZATION_NAME, flip_pose, to_millimetres
from kasf.interrupts import ctrl_c_deferred
from kasf.runtime.sources import Frame, Source
from kasf.runtime.tracking import Track, Tracker

MODES = ("causal", "centre", "chunk")
STAGES = ("capture", "2d", "track", "lift", "post", "output", "end_to_end")


@dataclass
class Pose:
    """One person's 3D pose for one input frame."""

    frame: int
    time: float
    track: int
    joints3d: np.ndarray  # (17, 3) root-relative, in ``units``
    units: str
    joints2d: np.ndarray  # (17, 2) pixels fed to the lifter (missing joints stood in)
    scores: np.ndarray  # (17,) confidences fed to the lifter (0 = missing)
    latency_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"frame": int(self.frame), "time": round(float(self.time), 6), "track": int(self.track),
                "joints3d": np.round(self.joints3d.astype(np.float64), 3).tolist(), "units": self.units,
                "joints2d": np.round(self.joints2d.astype(np.float64), 2).tolist(),
                "scores": np.round(self.scores.astype(np.float64), 4).tolist(),
                "latency_ms": round(float(self.latency_ms), 3)}


class Stats:
    """Per-stage latencies (ms) over the last ``keep`` samples, and the counts reported at exit.

    Each stage writes into a preallocated array used as a ring, so a stream of any length uses the same memory.
    """

    def __init__(self, keep: int = 20_000) -> None:
        self.keep = keep
        self.samples: dict[str, np.ndarray] = {stage: np.zeros(keep, np.float64) for stage in STAGES}
        self.counts: dict[str, int] = {stage: 0 for stage in STAGES}
        self.frames_in = 0
        self.poses_out = 0
        self.dropped_frames = 0
        self.lift_calls = 0
        self.wall_s = 0.0

    def add(self, stage: str, ms: float) -> None:
        self.samples[stage][self.counts[stage] % self.keep] = ms
        self.counts[stage] += 1

    def values(self, stage: str) -> np.ndarray:
        """The samples held for ``stage`` (the most recent ``keep``; order not kept)."""
        return self.samples[stage][:min(self.counts[stage], self.keep)]

    def summary(self) -> dict[str, Any]:
        stages = {}
        for stage in STAGES:
            arr = self.values(stage)
            if arr.size:
                stages[stage] = {"n": self.counts[stage], "mean_ms": float(arr.mean()),
                                 **{f"p{q}_ms": float(np.percentile(arr, q)) for q in (50, 95, 99)}}
        return {"frames_in": self.frames_in, "poses_out": self.poses_out, "dropped_frames": self.dropped_frames,
                "lift_calls": self.lift_calls, "wall_s": self.wall_s,
                "frames_per_s": self.frames_in / self.wall_s if self.wall_s > 0 else None, "stages": stages}


class OneEuro:
    """One-Euro filter over a (17, 3) pose: low-pass whose cut-off rises with speed (little lag when moving,
    little jitter when still). Cost: about 0.008 ms per pose on this CPU (docs/streaming.md)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx = None
        self.t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        if self.x is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x
        dt = t - self.t
        dx = (x - self.x) / dt
        self.dx = self.dx + self._alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.x + self._alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x.copy()


@dataclass
class _Due:
    track: Track
    targets: list[int]
    frames: np.ndarray  # (n_frames,) absolute frame index of each window slot
    last: int  # newest entry that may be used (later slots repeat it)


@dataclass
class _FrameInfo:
    time: float
    captured: float
    factor: float | None


class Pipeline:
    """Frames with H36M keypoints in, :class:`Pose` lists out (see the module doc for the modes)."""

    def __init__(self, lifter: Any, image_wh: tuple[int, int], mode: str = "causal", stride: int = 1,
                 flip: bool = False, smooth: tuple[float, float] | None = None, hold: int = 10,
                 stats: Stats | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.n = int(lifter.n_frames)
        if mode == "chunk" and not 1 <= stride <= self.n:
            raise ValueError(f"--stride must be in 1..{self.n} for chunk mode; got {stride}")
        normalization = lifter.metadata.get("normalization")
        if normalization not in (None, NORMALIZATION_NAME):
            raise ValueError(f"the model was trained with normalisation {normalization!r}; this runtime implements "
                             f"{NORMALIZATION_NAME!r} only")
        if lifter.metadata.get("skeleton") not in (None, skeleton.SKELETON_NAME):
            raise ValueError(f"the model's skeleton is {lifter.metadata['skeleton']!r}; the stream feeds "
                             f"{skeleton.SKELETON_NAME!r} keypoints")
        self.lifter = lifter
        self.image_wh = image_wh
        self.mode = mode
        self.stride = stride if mode == "chunk" else 1
        self.flip = flip
        self.smooth = smooth
        self.stats = stats or Stats()
        self.tracker = Tracker(self.n, image_wh, hold=hold)
        self.filters: dict[int, OneEuro] = {}
        self.info: dict[int, _FrameInfo] = {}
        self.half = self.n // 2

    @property
    def delay_frames(self) -> int:
        """Frames between an input frame and the frame at which its pose is emitted (worst case)."""
        return {"causal": 0, "centre": self.half, "chunk": self.stride - 1}[self.mode]

    def step(self, frame: Frame) -> list[Pose]:
        """Feed one frame (keypoints already H36M); returns the poses that became due."""
        start = time.perf_counter()
        self.info[frame.index] = _FrameInfo(frame.time, frame.captured, frame.factor)
        for old in [i for i in self.info if i < frame.index - 2 * self.n]:
            del self.info[old]
        kpts = frame.keypoints if frame.keypoints is not None else np.zeros((0, 17, 2), np.float32)
        scores = frame.scores if frame.scores is not None else np.zeros((0, 17), np.float32)
        live, dropped = self.tracker.update(frame.index, kpts, scores, frame.track_ids)
        due = [d for track in live if (d := self._due(track, frame.index)) is not None]
        due += [d for track in dropped if (d := self._flush(track)) is not None]
        for track in dropped:
            self.filters.pop(track.track_id, None)
        self.stats.add("track", (time.perf_counter() - start) * 1000)
        return self._lift(due)

    def finish(self) -> list[Pose]:
        """End of stream: emit every pose still waiting (centre and chunk modes)."""
        due = [d for track in self.tracker.tracks.values() if (d := self._flush(track)) is not None]
        self.tracker.tracks.clear()
        self.filters.clear()
        return self._lift(due)

    def _due(self, track: Track, t: int) -> _Due | None:
        if not track.pending:
            return None
        if self.mode == "causal":
            targets, end = [track.pending[-1]], track.ring.newest
        elif self.mode == "centre":
            ready = [f for f in track.pending if f + self.half <= track.ring.newest]
            if not ready:
                return None
            return self._centre(track, ready, track.ring.newest)
        else:
            if track.ring.newest - track.pending[0] < self.stride - 1:
                return None
            targets, end = list(track.pending), track.ring.newest
        track.pending = [f for f in track.pending if f not in targets]
        return _Due(track, targets, np.arange(end - self.n + 1, end + 1), end)

    def _centre(self, track: Track, targets: list[int], last: int) -> _Due:
        # One target per frame in steady state; at a flush several, each with its own centred window.
        track.pending = [f for f in track.pending if f not in targets]
        return _Due(track, targets, np.stack([np.arange(f - self.half, f - self.half + self.n) for f in targets]),
                    last)

    def _flush(self, track: Track) -> _Due | None:
        if not track.pending:
            return None
        last = track.last_seen
        if self.mode == "centre":
            return self._centre(track, list(track.pending), last)
        targets = list(track.pending)
        track.pending = []
        return _Due(track, targets, np.arange(last - self.n + 1, last + 1), last)

    def _lift(self, due: list[_Due]) -> list[Pose]:
        if not due:
            return []
        start = time.perf_counter()
        windows, where = [], []
        for d in due:
            frames = d.frames if d.frames.ndim == 2 else d.frames[None]
            for row in frames:
                windows.append(d.track.ring.window(row, d.last))
                where.append(row)
        batch = np.stack(windows)
        if self.flip:
            out = self.lifter.predict(np.concatenate([batch, flip_pose(batch)]))
            pred = (out[:len(batch)] + flip_pose(out[len(batch):])) / 2
        else:
            pred = self.lifter.predict(batch)
        self.stats.lift_calls += 1
        lift_ms = (time.perf_counter() - start) * 1000
        self.stats.add("lift", lift_ms)
        start = time.perf_counter()
        poses, row = [], 0
        for d in due:
            n_rows = d.frames.shape[0] if d.frames.ndim == 2 else 1
            for f in sorted(d.targets):
                r = row + (d.targets.index(f) if n_rows > 1 else 0)
                slot = int(np.flatnonzero(where[r] == f)[0])
                poses.append(self._pose(d.track, f, pred[r, slot]))
            row += n_rows
        self.stats.add("post", (time.perf_counter() - start) * 1000)
        return poses

    def _pose(self, track: Track, f: int, joints: np.ndarray) -> Pose:
        joints = joints - joints[skeleton.ROOT_JOINT]
        info = self.info.get(f)
        units = "normalised"
        if info is not None and info.factor is not None:
            joints = to_millimetres(joints[None, None], np.asarray([self.image_wh], np.float64),
                                    np.asarray([[info.factor]], np.float64))[0, 0]
            units = "mm"
        t = info.time if info is not None else f / 30.0
        if self.smooth is not None:
            filt = self.filters.setdefault(track.track_id, OneEuro(*self.smooth))
            joints = filt(np.asarray(joints, np.float64), t)
        _, pix = track.ring.entry(f)
        latency = (time.perf_counter() - info.captured) * 1000 if info is not None else float("nan")
        return Pose(f, t, track.track_id, np.asarray(joints, np.float32), units, pix[:, :2].copy(),
                    pix[:, 2].copy(), latency)


class Detector(Protocol):
    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) BGR -> H36M keypoints (P, 17, 2) pixels and scores (P, 17); P may be 0."""


class Sink(Protocol):
    def write(self, poses: list[Pose], frame: Frame | None) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunResult:
    stats: Stats
    poses: list[Pose] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False


def run(source: Source | Iterable[Frame], pipeline: Pipeline, detector: Detector | None = None,
        sinks: list[Sink] | None = None, keep_poses: bool = False, max_frames: int | None = None) -> RunResult:
    """Drive the pipeline over a source until it ends, fails or is interrupted; outputs are always flushed.

    A source error (camera lost, unreadable file) or Ctrl-C ends the loop; poses already due are still
    emitted and written, sinks are closed, and the result says what happened. Ctrl-C takes effect between frames
    (kasf.interrupts), so every frame that was read comes out as a pose.
    """
    sinks = sinks or []
    stats = pipeline.stats
    result = RunResult(stats)
    wall = time.perf_counter()

    def emit(poses: list[Pose], frame: Frame | None) -> None:
        start = time.perf_counter()
        for sink in sinks:
            sink.write(poses, frame)
        now = time.perf_counter()
        stats.add("output", (now - start) * 1000)
        for pose in poses:
            info = pipeline.info.get(pose.frame)
            if info is not None:
                stats.add("end_to_end", (now - info.captured) * 1000)
        stats.poses_out += len(poses)
        if keep_poses:
            result.poses.extend(poses)

    try:
        with ctrl_c_deferred() as stop_requested:  # a frame in hand is finished, then the stream ends
            for frame in source:
                stats.frames_in += 1
                stats.add("capture", frame.capture_ms)
                if frame.image is not None and frame.keypoints is None:
                    if detector is None:
                        raise ValueError("image frames need a 2D detector (--detector rtmlib or mediapipe)")
                    start = time.perf_counter()
                    frame.keypoints, frame.scores = detector(frame.image)
                    stats.add("2d", (time.perf_counter() - start) * 1000)
                emit(pipeline.step(frame), frame)
                if stop_requested():
                    raise KeyboardInterrupt
                if max_frames is not None and stats.frames_in >= max_frames:
                    break
    except KeyboardInterrupt:
        result.interrupted = True
    except Exception as err:
        from kasf.runtime.sources import SourceError

        if not isinstance(err, SourceError):
            _close(source, sinks, pipeline, emit, stats, wall)
            raise
        result.error = str(err)
    _close(source, sinks, pipeline, emit, stats, wall)
    return result


def _close(source: Any, sinks: list[Sink], pipeline: Pipeline, emit: Any, stats: Stats, wall: float) -> None:
    try:
        emit(pipeline.finish(), None)
    finally:
        for sink in sinks:
            sink.close()
        if hasattr(source, "close"):
            source.close()
        stats.dropped_frames = int(getattr(source, "dropped", 0))
        stats.wall_s = time.perf_counter() - wall
