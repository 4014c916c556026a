"""kasf-stream end to end on CPU without OpenCV: keypoint files, the sample, JSONL/UDP outputs, failures."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

from kasf.runtime.cli import main
from kasf.runtime.lifter import Lifter
from kasf.runtime.outputs import POSE_KEYS, JsonlSink
from kasf.runtime.sources import CameraSource, KeypointSource, SourceError
from kasf.runtime.stream import Pipeline, run
from tests.conftest import save_tiny_stream_checkpoint

W, H = 640, 480


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_stream_checkpoint(tmp_path_factory.mktemp("stream"))


def walkers(frames: int, people: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 people walking across the image with jitter: (F, P, 17, 2) pixels and (F, P, 17) scores."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-40, 40, (people, 17, 2))
    k = np.zeros((frames, people, 17, 2), np.float32)
    for p in range(people):
        k[:, p] = base[p] + np.array([100 + 200 * p, 240]) + np.arange(frames)[:, None, None] * [2.0, 0.0]
    k += rng.normal(0, 1.0, k.shape)
    return k.astype(np.float32), rng.uniform(0.5, 1.0, (frames, people, 17)).astype(np.float32)


def write_npz(path, frames=30, people=2, **extra):
    k, s = walkers(frames, people)
    fields = dict(keypoints=k, scores=s, image_wh=np.array([W, H]), fps=np.float32(25), format=np.str_("coco"))
    fields.update(extra)
    np.savez(path, **fields)
    return k, s


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode,extra", [("causal", []), ("centre", []), ("chunk", ["--stride", "4"])])
def test_keypoint_file_end_to_end_jsonl(tmp_path, tiny_checkpoint, mode, extra):
    npz = tmp_path / "kp.npz"
    k, s = write_npz(npz, frames=30, people=2)
    s[10:13, 1] = 0                                   # person 1 out of view for 3 frames: no pose there
    np.savez(npz, keypoints=k, scores=s, image_wh=np.array([W, H]), fps=np.float32(25), format=np.str_("coco"))
    out, stats = tmp_path / "poses.jsonl", tmp_path / "stats.json"
    rc = main(["--keypoints", str(npz), "--model", str(tiny_checkpoint), "--mode", mode, *extra,
               "--out", str(out), "--stats", str(stats)])
    assert rc == 0
    rows = read_jsonl(out)
    assert len(rows) == 30 * 2 - 3                    # frames in = poses out (per person seen)
    assert all(tuple(r) == POSE_KEYS for r in rows)
    by_track = {}
    for r in rows:
        by_track.setdefault(r["track"], []).append(r["frame"])
        assert np.shape(r["joints3d"]) == (17, 3) and np.shape(r["joints2d"]) == (17, 2) and len(r["scores"]) == 17
        assert r["joints3d"][0] == [0.0, 0.0, 0.0] and r["units"] == "normalised"
        assert r["time"] == pytest.approx(r["frame"] / 25, abs=1e-5) and r["latency_ms"] >= 0
    assert sorted(by_track) == [0, 1]
    assert by_track[0] == list(range(30))
    assert by_track[1] == [f for f in range(30) if f not in (10, 11, 12)]
    summary = json.loads(stats.read_text())
    assert summary["frames_in"] == 30 and summary["poses_out"] == 57 and summary["mode"] == mode
    assert {"track", "lift", "post", "output", "end_to_end"} <= set(summary["stages"])


def test_batched_lifting_equals_per_track_lifting(tiny_checkpoint):
    lifter = Lifter.load(tiny_checkpoint, device="cpu")
    k, s = walkers(20, 3, seed=3)
    ids = np.tile(np.arange(3), (20, 1))
    together = run(KeypointSource(k, s, (W, H), 25, "coco", ids), Pipeline(lifter, (W, H)), keep_poses=True)
    assert together.stats.lift_calls == 20
    for p in range(3):
        alone = run(KeypointSource(k[:, p], s[:, p], (W, H), 25, "coco"), Pipeline(lifter, (W, H)), keep_poses=True)
        mine = [q for q in together.poses if q.track == p]
        assert [q.frame for q in mine] == [q.frame for q in alone.poses] == list(range(20))
        np.testing.assert_allclose(np.stack([q.joints3d for q in mine]), np.stack([q.joints3d for q in alone.poses]),
                                   atol=1e-5)


def test_sample_runs_with_no_source_and_reports_mpjpe(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "sample.jsonl"
    rc = main(["--model", str(tiny_checkpoint), "--max-frames", "30", "--out", str(out), "--flip",
               "--smooth", "1.0,0.01", "--stats", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "MPJPE vs the sample's 3D truth" in err and "30 frames in, 30 poses out" in err
    rows = read_jsonl(out)
    assert len(rows) == 30 and all(r["units"] == "mm" for r in rows)
    mpjpe = json.loads((tmp_path / "s.json").read_text())["mpjpe_mm"]
    assert np.isfinite(mpjpe) and mpjpe > 0


def test_udp_datagrams_reach_a_local_socket(tmp_path, tiny_checkpoint):
    npz = tmp_path / "kp.npz"
    write_npz(npz, frames=12, people=1)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    try:
        assert main(["--keypoints", str(npz), "--model", str(tiny_checkpoint), "--udp", f"127.0.0.1:{port}"]) == 0
        got = [json.loads(receiver.recv(65536)) for _ in range(12)]
    finally:
        receiver.close()
    assert [g["frame"] for g in got] == list(range(12)) and all(tuple(g) == POSE_KEYS for g in got)


def test_keypoint_modes_need_no_opencv(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)     # import cv2 now raises ImportError
    npz = tmp_path / "kp.npz"
    write_npz(npz, frames=5, people=1)
    assert main(["--keypoints", str(npz), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert main(["--video", str(tmp_path / "clip.mp4"), "--model", str(tiny_checkpoint)]) == 2
    assert "pip install 'kasf[stream]'" in capsys.readouterr().err


@pytest.mark.parametrize("fields,message", [
    (dict(keypoints=np.zeros((5, 17, 3))), "'keypoints' must be"),
    (dict(scores=np.zeros((5, 2))), "'scores' must be"),
    (dict(format=np.str_("openpose")), "unknown keypoint format"),
    (dict(image_wh=np.array([0, 480])), "'image_wh' must be"),
])
def test_bad_keypoint_files_give_one_clear_error(tmp_path, tiny_checkpoint, capsys, fields, message):
    npz = tmp_path / "bad.npz"
    base = dict(keypoints=np.zeros((5, 17, 2)), scores=np.ones((5, 17)), image_wh=np.array([W, H]), fps=25.0)
    base.update(fields)
    np.savez(npz, **base)
    assert main(["--keypoints", str(npz), "--model", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kasf-stream: error:") and message in err and "Traceback" not in err


def test_missing_model_and_bad_flags(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope.pt")]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["--smooth", "fast", "--model", str(tmp_path / "nope.pt")]) == 2
    assert "--smooth wants" in capsys.readouterr().err


class FailingCamera:
    """A capture that delivers ``frames`` frames, then fails on every read (a camera unplugged mid-stream)."""

    opened = 0

    def __init__(self, frames: int) -> None:
        FailingCamera.opened += 1
        self.left = frames

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((H, W, 3), np.uint8)

    def get(self, prop):
        return 25.0

    def release(self):
        pass


def test_camera_lost_mid_stream_keeps_what_was_processed(tmp_path, tiny_checkpoint):
    FailingCamera.opened = 0
    budget = iter([40])
    camera = CameraSource(0, retries=2, retry_wait_s=0.0, open_capture=lambda i: FailingCamera(next(budget, 0)))
    k, s = walkers(1, 1)

    def detector(image):
        from kasf.runtime.keypoints import to_h36m
        return to_h36m(k[0], s[0], "coco")

    out = tmp_path / "cam.jsonl"
    result = run(camera, Pipeline(Lifter.load(tiny_checkpoint, device="cpu"), camera.image_wh), detector,
                 [JsonlSink(str(out))])
    assert result.error is not None and "camera 0 stopped delivering frames after 40 frames" in result.error
    assert FailingCamera.opened == 3                  # the first open and two reconnect attempts
    assert not camera._thread.is_alive()
    rows = read_jsonl(out)
    assert 0 < len(rows) == result.stats.poses_out == result.stats.frames_in
    assert result.stats.frames_in + result.stats.dropped_frames == 40   # every frame taken or counted as dropped
    assert [r["frame"] for r in rows] == list(range(len(rows)))


def test_camera_that_cannot_open():
    with pytest.raises(SourceError, match="cannot open camera 3"):
        CameraSource(3, open_capture=lambda i: FailingCamera(0))


def test_ctrl_c_flushes_pending_poses(tmp_path, tiny_checkpoint):
    k, s = walkers(20, 1)
    source = KeypointSource(k[:, 0], s[:, 0], (W, H), 25, "coco")

    def interrupted():
        for frame in source:
            if frame.index == 6:
                raise KeyboardInterrupt
            yield frame

    out = tmp_path / "ctrl_c.jsonl"
    result = run(interrupted(), Pipeline(Lifter.load(tiny_checkpoint, device="cpu"), (W, H), mode="centre"), None,
                 [JsonlSink(str(out))])
    assert result.interrupted and result.error is None
    assert [r["frame"] for r in read_jsonl(out)] == list(range(6))   # centre mode's pending poses were emitted
