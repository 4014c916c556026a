"""Streaming units: keypoint mapping, missing keypoints, ring buffer, tracker, window modes (hand-checked indices)."""

from __future__ import annotations

import numpy as np
import pytest

from kasf.runtime.keypoints import coco_to_h36m, fill_missing, missing_mask, to_h36m
from kasf.runtime.lifter import Lifter
from kasf.runtime.sources import Frame, KeypointSource, SourceError
from kasf.runtime.stream import OneEuro, Pipeline, run
from kasf.runtime.tracking import RingBuffer, Tracker

W, H = 1000, 800


def coco_pose() -> tuple[np.ndarray, np.ndarray]:
    """A hand-made upright COCO-17 person (pixels): hips at y=500, shoulders at y=300, eyes/ears at y=220."""
    k = np.zeros((17, 2), np.float32)
    k[0] = (500, 230)                                   # nose
    k[1], k[2] = (510, 220), (490, 220)                 # l eye, r eye
    k[3], k[4] = (520, 222), (480, 222)                 # l ear, r ear
    k[5], k[6] = (560, 300), (440, 300)                 # l shoulder, r shoulder
    k[7], k[8] = (580, 400), (420, 400)                 # l elbow, r elbow
    k[9], k[10] = (590, 480), (410, 480)                # l wrist, r wrist
    k[11], k[12] = (540, 500), (460, 500)               # l hip, r hip
    k[13], k[14] = (545, 620), (455, 620)               # l knee, r knee
    k[15], k[16] = (550, 740), (450, 740)               # l ankle, r ankle
    s = np.linspace(0.5, 0.9, 17).astype(np.float32)
    return k, s


def test_coco_to_h36m_by_hand():
    k, s = coco_pose()
    out, conf = coco_to_h36m(k, s)
    np.testing.assert_allclose(out[0], (500, 500))      # pelvis = mean of hips
    np.testing.assert_allclose(out[8], (500, 300))      # thorax = mean of shoulders
    np.testing.assert_allclose(out[7], (500, 400))      # spine = mean of pelvis and thorax
    np.testing.assert_allclose(out[9], k[0])            # neck/nose <- nose
    np.testing.assert_allclose(out[1], k[12])           # right hip <- COCO 12
    np.testing.assert_allclose(out[16], k[10])          # right wrist <- COCO 10
    np.testing.assert_allclose(out[13], k[9])           # left wrist <- COCO 9
    # head top: centre of eyes/ears (500, 221) + 0.6 * ((500, 221) - thorax (500, 300)) = (500, 173.6)
    np.testing.assert_allclose(out[10], (500, 173.6), atol=1e-3)
    assert out[10, 1] < out[9, 1]                       # above the nose
    assert conf[0] == pytest.approx((s[11] + s[12]) / 2)
    assert conf[7] == pytest.approx(((s[11] + s[12]) / 2 + (s[5] + s[6]) / 2) / 2)


def test_missing_keypoints_never_become_positions():
    k, s = coco_pose()
    k[12] = (-1, -1)                                    # rtmlib's marker for the right hip
    s[12] = 0.0
    s[9] = -0.2                                         # left wrist: negative score
    h36m, conf = coco_to_h36m(k, s)
    assert conf[1] == 0 and conf[0] == 0 and conf[7] == 0  # right hip, pelvis and spine depend on it
    assert conf[13] == 0
    filled, conf2, missing = fill_missing(h36m, conf)
    assert missing[[0, 1, 7, 13]].all() and not missing[[2, 8, 16]].any()
    assert (conf2[missing] == 0).all()
    assert not np.any(filled == -1)                     # the marker is never a position
    np.testing.assert_allclose(filled[13], h36m[12])    # left wrist <- its neighbour, the left elbow
    np.testing.assert_allclose(filled[1], h36m[2])      # right hip <- right knee (nearest valid neighbour)
    last = np.full((17, 2), np.nan, np.float32)
    last[1] = (455, 505)
    filled, _, _ = fill_missing(h36m, conf, last)
    np.testing.assert_allclose(filled[1], (455, 505))   # the track's last valid value wins
    with pytest.raises(ValueError, match="no valid keypoint"):
        fill_missing(np.full((17, 2), -1, np.float32), np.zeros(17, np.float32))


def test_h36m_missing_mask_and_blazepose():
    k = np.ones((17, 2), np.float32)
    s = np.ones(17, np.float32)
    k[3] = (-1, -1)
    k[4] = (np.nan, 1)
    s[5] = 0
    assert list(np.flatnonzero(missing_mask(k, s))) == [3, 4, 5]
    out, conf = to_h36m(k, s, "h36m")
    assert (out[[3, 4, 5]] == -1).all() and (conf[[3, 4, 5]] == 0).all()
    blaze = np.zeros((33, 2), np.float32)
    vis = np.zeros(33, np.float32)
    coco, cs = coco_pose()
    blaze[[0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]] = coco
    vis[[0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]] = cs
    np.testing.assert_allclose(to_h36m(blaze, vis, "blazepose")[0], coco_to_h36m(coco, cs)[0])
    with pytest.raises(ValueError, match="unknown keypoint format"):
        to_h36m(k, s, "openpose")


def test_ring_buffer_padding_and_wrap():
    ring = RingBuffer(5, W, H)
    pose = np.zeros((17, 2), np.float32)
    for f in range(10, 13):
        ring.push(f, pose + f, np.full(17, 0.5, np.float32))
    win = ring.window(np.arange(8, 13))                  # causal window of frame 12: two slots before the track
    x_px = (win[:, 0, 0] + 1) * W / 2
    np.testing.assert_allclose(x_px, [10, 10, 10, 11, 12], atol=1e-4)  # start-up: the first frame repeated
    for f in range(13, 20):
        ring.push(f, pose + f, np.full(17, 0.5, np.float32))
    assert ring.oldest == 15 and len(ring) == 5
    np.testing.assert_allclose((ring.window(np.arange(15, 20))[:, 0, 0] + 1) * W / 2, range(15, 20), atol=1e-4)
    np.testing.assert_allclose((ring.window(np.arange(17, 22), last=18)[:, 0, 0] + 1) * W / 2, [17, 18, 18, 18, 18], atol=1e-4)
    with pytest.raises(ValueError, match="consecutive"):
        ring.push(25, pose, np.ones(17, np.float32))
    with pytest.raises(IndexError):
        ring.entry(3)


def person(cx: float, cy: float, size: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (np.array([cx, cy]) + rng.uniform(-size / 2, size / 2, (17, 2))).astype(np.float32)


def test_tracker_keeps_ids_through_crossing_and_gap_then_drops():
    tracker = Tracker(27, (W, H), hold=4)
    ones = np.ones((2, 17), np.float32)
    ids_a, ids_b = [], []
    for f in range(30):
        a = person(200 + 20 * f, 400)                    # walks right
        b = person(800 - 20 * f, 440, 90)                # walks left, a little lower: they cross at f = 15
        order = [a, b] if f % 2 else [b, a]              # detections come in any order
        live, _ = tracker.update(f, np.stack(order), ones)
        by_pos = {t.track_id: t.ring.entry(f)[1][:, 0].mean() for t in live}
        ids_a.append(min(by_pos, key=lambda i: abs(by_pos[i] - a[:, 0].mean())))
        ids_b.append(min(by_pos, key=lambda i: abs(by_pos[i] - b[:, 0].mean())))
    assert len(set(ids_a)) == 1 and len(set(ids_b)) == 1 and ids_a[0] != ids_b[0]
    # A short gap (3 frames <= hold 4): same id, and the gap is interpolated in the ring.
    tracker = Tracker(27, (W, H), hold=4)
    for f in range(12):
        seen = f not in (5, 6, 7)
        kp = person(300 + 10 * f, 400)[None] if seen else np.zeros((0, 17, 2), np.float32)
        live, dropped = tracker.update(f, kp, np.ones((len(kp), 17), np.float32))
        assert [t.track_id for t in live] == [0] and not dropped
    track = tracker.tracks[0]
    xs = [track.ring.entry(f)[1][:, 0].mean() for f in range(4, 9)]
    np.testing.assert_allclose(np.diff(xs), 10, atol=1e-3)   # straight path through the gap
    assert (track.ring.entry(6)[1][:, 2] == 0).all()         # filled frames carry confidence 0
    # Gone longer than the hold: dropped, memory released; a return is a new id.
    drops = []
    for f in range(12, 18):
        _, dropped = tracker.update(f, np.zeros((0, 17, 2), np.float32), np.zeros((0, 17), np.float32))
        drops += [(f, t.track_id) for t in dropped]
    assert drops == [(16, 0)] and not tracker.tracks
    live, _ = tracker.update(18, person(420, 400)[None], np.ones((1, 17), np.float32))
    assert [t.track_id for t in live] == [1]
    with pytest.raises(ValueError, match="hold"):
        Tracker(27, (W, H), hold=26)


def index_lifter(n: int = 27) -> Lifter:
    """A stand-in lifter that reveals what it was given: joint 7 = its own input (the slot's frame index),
    joint 9 = the largest and joint 10 = the smallest frame index anywhere in the window."""

    def run_fn(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, :, 9, 0] = x[:, :, 7, 0].max(axis=1, keepdims=True)
        out[:, :, 10, 0] = x[:, :, 7, 0].min(axis=1, keepdims=True)
        return out

    return Lifter(run_fn, "numpy", "cpu", "fp32", n, {"normalization": "screen-width-v1"})


def index_source(frames: int, people: int = 1, absent: dict[int, list[int]] | None = None) -> KeypointSource:
    """Person p's joint 7 sits frame-index pixels right of the pelvis (at x = 100 + 300 p)."""
    k = np.zeros((frames, people, 17, 2), np.float32)
    for p in range(people):
        k[:, p] = np.array([100 + 300 * p, 400], np.float32)
        k[:, p, 7, 0] += np.arange(frames)
        k[:, p, 8, 1] -= 50  # a non-degenerate pose
    s = np.full((frames, people, 17), 0.9, np.float32)
    for p, gone in (absent or {}).items():
        s[gone, p] = 0
    return KeypointSource(k, s, (W, H), 30.0, track_ids=np.tile(np.arange(people), (frames, 1)))


def decode(pose) -> tuple[int, int, int]:
    """(slot frame, max frame, min frame) a pose was computed from (normalised units -> pixels)."""
    return tuple(int(round(pose.joints3d[j, 0] * W / 2)) for j in (7, 9, 10))


def test_causal_mode_emits_every_frame_without_future_input():
    result = run(index_source(40), Pipeline(index_lifter(), (W, H), mode="causal"), keep_poses=True)
    assert [p.frame for p in result.poses] == list(range(40))
    for p in result.poses:
        own, hi, lo = decode(p)
        assert own == p.frame and hi == p.frame      # nothing after t
        assert lo == max(0, p.frame - 26)            # start-up: frame 0 repeated
    assert result.stats.lift_calls == 40 and result.stats.poses_out == 40


def test_centre_mode_delay_and_end_padding():
    pipe = Pipeline(index_lifter(), (W, H), mode="centre")
    source = index_source(40)
    emitted_at = {}
    for frame in source:
        for pose in pipe.step(frame):
            emitted_at[pose.frame] = (frame.index, decode(pose))
    for pose in pipe.finish():
        emitted_at[pose.frame] = (None, decode(pose))
    assert sorted(emitted_at) == list(range(40))
    for f, (at, (own, hi, lo)) in emitted_at.items():
        assert own == f and hi == min(f + 13, 39) and lo == max(f - 13, 0)
        assert at == (f + 13 if f + 13 <= 39 else None)   # 13 frames later; the last 13 at the end
    assert pipe.delay_frames == 13


def test_chunk_mode_stride():
    pipe = Pipeline(index_lifter(), (W, H), mode="chunk", stride=5)
    emitted = []
    for frame in index_source(23):
        emitted += [(frame.index, p.frame, decode(p)) for p in pipe.step(frame)]
    emitted += [(None, p.frame, decode(p)) for p in pipe.finish()]
    assert [e[1] for e in emitted] == list(range(23))
    assert [e[0] for e in emitted[:5]] == [4] * 5 and [e[0] for e in emitted[20:]] == [None] * 3
    assert all(own == f and hi == (at if at is not None else 22) for at, f, (own, hi, _) in emitted)
    assert pipe.stats.lift_calls == 5
    with pytest.raises(ValueError, match="stride"):
        Pipeline(index_lifter(), (W, H), mode="chunk", stride=28)


def test_multi_person_one_batched_call_and_absent_frames():
    calls = []
    base = index_lifter()

    def counting(x):
        calls.append(len(x))
        return base.run(x)

    lifter = Lifter(counting, "numpy", "cpu", "fp32", 27, {})
    source = index_source(12, people=3, absent={1: [4, 5]})
    result = run(source, Pipeline(lifter, (W, H), mode="causal"), keep_poses=True)
    assert calls == [3, 3, 3, 3, 2, 2, 3, 3, 3, 3, 3, 3]   # one call per frame, all live people in it
    assert result.stats.poses_out == 12 * 3 - 2              # no pose for a frame where the person was absent
    assert {(p.track, p.frame) for p in result.poses} == {(t, f) for t in range(3) for f in range(12)} - {(1, 4), (1, 5)}


def test_flip_tta_doubles_the_batch_not_the_calls():
    calls = []

    def identity(x):
        calls.append(len(x))
        return x.copy()

    lifter = Lifter(identity, "numpy", "cpu", "fp32", 27, {})
    flipped = run(index_source(5, people=2), Pipeline(lifter, (W, H), flip=True), keep_poses=True)
    plain = run(index_source(5, people=2), Pipeline(index_lifter(), (W, H)), keep_poses=True)
    assert calls == [4] * 5
    for a, b in zip(flipped.poses, plain.poses):  # identity is flip-equivariant: the average is the input
        np.testing.assert_allclose(a.joints3d[[0, 7, 8]], b.joints3d[[0, 7, 8]], atol=1e-6)


def test_one_euro_smooths_noise_and_follows_steps():
    rng = np.random.default_rng(1)
    filt = OneEuro(min_cutoff=1.0, beta=0.0)
    noisy = [filt(np.zeros((17, 3)) + rng.normal(0, 10, (17, 3)), t / 30) for t in range(60)]
    assert np.std(noisy[30:]) < 10 / 2
    filt = OneEuro(min_cutoff=1.0, beta=1.0)
    out = [filt(np.full((17, 3), 100.0 if t >= 10 else 0.0), t / 30) for t in range(40)]
    assert out[-1][0, 0] == pytest.approx(100.0, abs=1.0)


def test_keypoint_source_rejects_bad_shapes(tmp_path):
    with pytest.raises(SourceError, match="'keypoints' must be"):
        KeypointSource(np.zeros((5, 16, 2)), np.zeros((5, 16)), (W, H), 30)
    with pytest.raises(SourceError, match="'scores' must be"):
        KeypointSource(np.zeros((5, 17, 2)), np.zeros((5, 3)), (W, H), 30)
    with pytest.raises(SourceError, match="'track_ids' must be"):
        KeypointSource(np.zeros((5, 2, 17, 2)), np.zeros((5, 2, 17)), (W, H), 30, track_ids=np.zeros((5, 3)))
    with pytest.raises(SourceError, match="unknown keypoint format"):
        KeypointSource(np.zeros((5, 17, 2)), np.zeros((5, 17)), (W, H), 30, fmt="openpose")
    bad = tmp_path / "bad.npz"
    np.savez(bad, keypoints=np.zeros((5, 17, 2)), image_wh=np.array([W, H]))
    with pytest.raises(SourceError, match="missing field"):
        KeypointSource.from_file(bad)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(SourceError, match="not an .npz file"):
        KeypointSource.from_file(tmp_path / "junk.npz")


def test_frame_indices_are_zero_based_times_from_fps():
    frames = list(index_source(3))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.time for f in frames] == pytest.approx([0, 1 / 30, 2 / 30])
    assert isinstance(frames[0], Frame)


def test_stats_memory_is_fixed_and_percentiles_use_recent_samples():
    from kasf.runtime.stream import Stats

    stats = Stats(keep=100)
    for i in range(1000):
        stats.add("lift", float(i))
    assert stats.values("lift").shape == (100,) and stats.values("lift").min() == 900
    summary = stats.summary()["stages"]["lift"]
    assert summary["n"] == 1000 and summary["p50_ms"] == pytest.approx(949.5)


def test_pipeline_refuses_a_model_with_other_conventions():
    for meta, message in (({"normalization": "pixels"}, "normalisation"), ({"skeleton": "coco-17"}, "skeleton")):
        lifter = Lifter(lambda x: x, "numpy", "cpu", "fp32", 27, meta)
        with pytest.raises(ValueError, match=message):
            Pipeline(lifter, (W, H))
