"""People over time: stable track ids, one fixed-size ring buffer per track, gap filling and eviction.

Why a ring per track: the lifter needs the last ``n_frames`` (27) inputs of *one* person. A fixed array indexed
by frame number modulo its size costs no allocation per frame and cannot grow, however long the stream runs.
Every frame of a live track has an entry: a frame where the person was seen holds the detection; a frame where
they were not (a short occlusion) holds their last pose with confidence 0, and when they come back within the
hold the gap is rewritten by linear interpolation, so later windows see a smooth path. A track unseen for more
than ``hold`` frames is dropped and its memory released.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kasf import skeleton
from kasf.conventions import normalize_screen
from kasf.runtime.keypoints import fill_missing


class RingBuffer:
    """The last ``capacity`` per-frame entries of one track: model input (17, 3) and pixels + scores (17, 3).

    Entries are addressed by absolute frame index; ``first`` is the track's first frame and ``newest`` its
    latest entry, and every frame in between that is still in the ring is present.
    """

    def __init__(self, capacity: int, width: float, height: float) -> None:
        self.capacity = capacity
        self.width = float(width)
        self.height = float(height)
        self.inputs = np.zeros((capacity, skeleton.NUM_JOINTS, 3), np.float32)
        self.pixels = np.zeros((capacity, skeleton.NUM_JOINTS, 3), np.float32)
        self.first = -1
        self.newest = -1

    def __len__(self) -> int:
        return 0 if self.newest < 0 else min(self.newest - self.first + 1, self.capacity)

    @property
    def oldest(self) -> int:
        """Oldest frame index still held."""
        return max(self.first, self.newest - self.capacity + 1)

    def push(self, frame: int, pixels: np.ndarray, scores: np.ndarray) -> None:
        """Append the entry of ``frame`` (must be newest + 1, or any frame for the first push)."""
        if self.newest >= 0 and frame != self.newest + 1:
            raise ValueError(f"ring buffer entries must be consecutive: got frame {frame} after {self.newest}")
        if self.newest < 0:
            self.first = frame
        self.newest = frame
        self.set(frame, pixels, scores)

    def set(self, frame: int, pixels: np.ndarray, scores: np.ndarray) -> None:
        """Overwrite the entry of a held frame (used to interpolate a gap)."""
        slot = frame % self.capacity
        self.pixels[slot, :, :2] = pixels
        self.pixels[slot, :, 2] = scores
        self.inputs[slot, :, :2] = normalize_screen(pixels, self.width, self.height)
        self.inputs[slot, :, 2] = scores

    def entry(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(model input (17, 3), pixels + scores (17, 3)) of a held frame."""
        if not self.oldest <= frame <= self.newest:
            raise IndexError(f"frame {frame} is not in the ring (holds {self.oldest}..{self.newest})")
        slot = frame % self.capacity
        return self.inputs[slot], self.pixels[slot]

    def window(self, frames: np.ndarray, last: int | None = None) -> np.ndarray:
        """Model inputs for the absolute frame indices ``frames``; indices outside [oldest, last] repeat the edge.

        Repeating the edge is the start-up padding of causal mode (the first frame repeated) and the end padding
        of centre mode at the end of a track.
        """
        last = self.newest if last is None else last
        clamped = np.clip(np.asarray(frames), self.oldest, last)
        return self.inputs[clamped % self.capacity]


@dataclass
class Track:
    """One person: id, ring buffer, the frames it was seen and is waiting to be emitted in."""

    track_id: int
    ring: RingBuffer
    last_seen: int
    last_valid: np.ndarray  # (17, 2) last valid pixel position of each joint, NaN where never seen
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))
    pending: list[int] = field(default_factory=list)
    observed: bool = False  # seen in the current frame

    @property
    def centre(self) -> np.ndarray:
        _, pix = self.ring.entry(self.last_seen)
        return pix[:, :2].mean(0)

    def scale(self) -> float:
        _, pix = self.ring.entry(self.last_seen)
        span = pix[:, :2].max(0) - pix[:, :2].min(0)
        return float(max(np.hypot(*span), 1.0))


def _box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Tracker:
    """Greedy association of detections to tracks by keypoint distance after a constant-velocity prediction.

    Why keypoint distance and a velocity: when two people cross, their boxes overlap (IoU cannot tell them
    apart) but each keeps moving the way it was; predicting each track forward and matching whole poses keeps
    the ids. IoU of the keypoint boxes is used as a second cue and as the gate for slow, overlapping people.
    """

    def __init__(self, n_frames: int, image_wh: tuple[int, int], hold: int = 10, max_distance: float = 0.5,
                 min_iou: float = 0.5) -> None:
        if not 0 <= hold < n_frames - 1:
            raise ValueError(f"hold must be in [0, {n_frames - 2}] frames (a held track must still have its last "
                             f"detection in its {n_frames}-frame ring); got {hold}")
        self.n_frames = n_frames
        self.image_wh = image_wh
        self.hold = hold
        self.max_distance = max_distance
        self.min_iou = min_iou
        self.tracks: dict[int, Track] = {}
        self.next_id = 0

    def update(self, frame: int, keypoints: np.ndarray, scores: np.ndarray,
               ids: np.ndarray | None = None) -> tuple[list[Track], list[Track]]:
        """Feed one frame of H36M detections (P, 17, 2) pixels and (P, 17) scores (missing marked, not filled).

        ``ids`` (P,) from an upstream tracker are used as they are. Returns (live tracks, tracks dropped now).
        """
        for track in self.tracks.values():
            track.observed = False
        people = [p for p in range(len(keypoints)) if (scores[p] > 0).any()]
        if ids is not None:
            assignment = {p: int(ids[p]) for p in people if int(ids[p]) >= 0}
        else:
            assignment = self._associate(frame, keypoints, scores, people)
        for p, track_id in assignment.items():
            self._observe(frame, track_id, keypoints[p], scores[p])
        dropped = []
        for track_id, track in list(self.tracks.items()):
            if track.observed:
                continue
            if frame - track.last_seen > self.hold:
                dropped.append(self.tracks.pop(track_id))
            elif track.ring.newest < frame:
                _, pix = track.ring.entry(track.ring.newest)
                track.ring.push(frame, pix[:, :2], np.zeros(skeleton.NUM_JOINTS, np.float32))
        return list(self.tracks.values()), dropped

    def _associate(self, frame: int, keypoints: np.ndarray, scores: np.ndarray, people: list[int]) -> dict[int, int]:
        pairs = []
        for track_id, track in self.tracks.items():
            gap = frame - track.last_seen
            _, pix = track.ring.entry(track.last_seen)
            predicted = pix[:, :2] + track.velocity * gap
            scale = track.scale()
            for p in people:
                valid = scores[p] > 0
                both = valid & (pix[:, 2] > 0)
                use = both if both.any() else valid
                dist = float(np.linalg.norm(keypoints[p][use] - predicted[use], axis=-1).mean()) / scale
                iou = box_iou(_box(keypoints[p][valid]), _box(predicted))
                if dist <= self.max_distance or iou >= self.min_iou:
                    pairs.append((dist - 0.25 * iou, track_id, p))
        pairs.sort()
        taken_tracks: set[int] = set()
        assignment: dict[int, int] = {}
        for _, track_id, p in pairs:
            if track_id in taken_tracks or p in assignment:
                continue
            taken_tracks.add(track_id)
            assignment[p] = track_id
        for p in people:
            if p not in assignment:
                assignment[p] = self.next_id
                self.next_id += 1
        return assignment

    def _observe(self, frame: int, track_id: int, keypoints: np.ndarray, scores: np.ndarray) -> None:
        track = self.tracks.get(track_id)
        last_valid = track.last_valid if track is not None else None
        filled, conf, missing = fill_missing(keypoints, scores, last_valid)
        if track is None:
            self.next_id = max(self.next_id, track_id + 1)
            ring = RingBuffer(self.n_frames, *self.image_wh)
            nan = np.full((skeleton.NUM_JOINTS, 2), np.nan, np.float32)
            track = Track(track_id, ring, last_seen=frame, last_valid=nan)
            self.tracks[track_id] = track
            ring.push(frame, filled, conf)
        else:
            if frame <= track.ring.newest:
                raise ValueError(f"track {track_id} seen twice in frame {frame}")
            gap = frame - track.last_seen
            _, held = track.ring.entry(track.last_seen)
            before = held.copy()
            old_centre = before[:, :2].mean(0)
            while track.ring.newest < frame - 1:
                track.ring.push(track.ring.newest + 1, before[:, :2], np.zeros(skeleton.NUM_JOINTS, np.float32))
            # Frames since last_seen were held (confidence 0); rewrite them as a straight path to this detection.
            for k in range(1, gap):
                if track.last_seen + k >= track.ring.oldest:
                    alpha = k / gap
                    track.ring.set(track.last_seen + k, (1 - alpha) * before[:, :2] + alpha * filled,
                                   np.zeros(skeleton.NUM_JOINTS, np.float32))
            track.ring.push(frame, filled, conf)
            track.velocity = ((filled.mean(0) - old_centre) / gap).astype(np.float32)
        track.last_valid = np.where(missing[:, None], track.last_valid, keypoints).astype(np.float32)
        track.last_seen = frame
        track.observed = True
        track.pending.append(frame)
