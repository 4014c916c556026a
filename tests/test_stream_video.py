"""kasf-stream on images: a generated video through rtmlib with stand-in ONNX models that keep rtmlib's real
contracts (so its own pre- and post-processing run), and the --save renderer
(MediaPipe on a real person: tests/test_mediapipe_real_person.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kasf.runtime.cli import main
from tests.conftest import save_tiny_stream_checkpoint

cv2 = pytest.importorskip("cv2", reason="video, images and --save need OpenCV: pip install 'kasf[stream]'")

W, H = 640, 480
DET_SIZE = 416                 # rtmlib 'lightweight' YOLOX input
POSE_W, POSE_H = 192, 256      # rtmlib RTMPose input (w, h)
BOX = [104.0, 52.0, 312.0, 260.0]  # in the detector's input pixels; x 1/0.65 in the 640x480 frame
MISSING_COCO = 9               # the stand-in pose model gives the left wrist a negative score (rtmlib marks it -1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_stream_checkpoint(tmp_path_factory.mktemp("video"))


def _save(graph, path):
    from onnx import checker, helper, save

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    save(model, str(path))
    return path


def stand_in_detector(path):
    """YOLOX with NMS inside: dets (1, 1, 5) = one fixed box whose score is the image's mean brightness / 255
    (a dark frame has no person), labels (1, 1)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Div", ["mean", "c255"], ["score"]),
        helper.make_node("Reshape", ["score", "shape111"], ["score3"]),
        helper.make_node("Concat", ["box", "score3"], ["dets"], axis=2),
        helper.make_node("Identity", ["label"], ["labels"]),
    ]
    inits = [numpy_helper.from_array(np.float32(255.0), "c255"),
             numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape111"),
             numpy_helper.from_array(np.array([[BOX]], np.float32), "box"),
             numpy_helper.from_array(np.zeros((1, 1), np.int64), "label")]
    graph = helper.make_graph(
        nodes, "yolox_standin", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 1, 5]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1])], inits)
    return _save(graph, path)


def crop_pose() -> np.ndarray:
    """An upright COCO-17 person in the pose model's crop pixels (192 x 256)."""
    return np.array([[96, 50], [100, 45], [92, 45], [104, 47], [88, 47], [116, 75], [76, 75], [122, 110],
                     [70, 110], [125, 140], [67, 140], [108, 140], [84, 140], [110, 185], [82, 185], [111, 225],
                     [81, 225]], np.float32)


def stand_in_pose(path):
    """RTMPose: simcc_x (1, 17, 2W) and simcc_y (1, 17, 2H) peaking at ``crop_pose`` (SimCC split ratio 2)."""
    from onnx import TensorProto, helper, numpy_helper

    pts = crop_pose()
    sx = np.zeros((1, 17, 2 * POSE_W), np.float32)
    sy = np.zeros((1, 17, 2 * POSE_H), np.float32)
    for k, (x, y) in enumerate(pts):
        sx[0, k, int(2 * x)] = 0.9
        sy[0, k, int(2 * y)] = 0.9
    sx[0, MISSING_COCO] = -1.0
    sy[0, MISSING_COCO] = -1.0
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["cx", "nothing"], ["simcc_x"]),
             helper.make_node("Add", ["cy", "nothing"], ["simcc_y"])]
    inits = [numpy_helper.from_array(np.float32(0.0), "zero"), numpy_helper.from_array(sx, "cx"),
             numpy_helper.from_array(sy, "cy")]
    graph = helper.make_graph(
        nodes, "rtmpose_standin", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, POSE_H, POSE_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 17, 2 * POSE_W]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 17, 2 * POSE_H])], inits)
    return _save(graph, path)


def write_video(path, dark: int, bright: int):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    assert writer.isOpened()
    for i in range(dark + bright):
        writer.write(np.full((H, W, 3), 0 if i < dark else 230, np.uint8))
    writer.release()
    return path


def test_video_through_rtmlib_stand_ins(tmp_path, tiny_checkpoint, capsys):
    pytest.importorskip("rtmlib", reason="the rtmlib detector needs rtmlib: pip install 'kasf[pose2d]'")
    det = stand_in_detector(tmp_path / "det.onnx")
    pose = stand_in_pose(tmp_path / "pose.onnx")
    video = write_video(tmp_path / "clip.avi", dark=3, bright=6)
    out, saved = tmp_path / "poses.jsonl", tmp_path / "view.mp4"
    rc = main(["--video", str(video), "--detector", "rtmlib", "--det", str(det), "--pose", str(pose),
               "--det-mode", "lightweight", "--det-frequency", "2", "--model", str(tiny_checkpoint),
               "--out", str(out), "--save", str(saved)])
    assert rc == 0
    assert capsys.readouterr().out == ""                      # stdout stays free for --out -
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in rows] == [3, 4, 5, 6, 7, 8]   # dark frames: no detection, so no pose
    ratio = DET_SIZE / W
    x0, y0, x1, y1 = (np.array(BOX) / ratio).tolist()
    for r in rows:
        j2d, scores = np.array(r["joints2d"]), np.array(r["scores"])
        assert scores[13] == 0                                 # H36M left wrist <- the missing COCO keypoint
        np.testing.assert_allclose(j2d[13], j2d[12])           # stood in by its neighbour, not (-1, -1)
        assert (scores[[0, 1, 4, 8, 11, 14]] > 0).all()
        # RTMPose's crop: the box grown by 1.25, then made 192:256 (taller); every keypoint lies inside it.
        cx, cy, half_w = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 1.25 / 2
        half_h = half_w * POSE_H / POSE_W
        assert (np.abs(j2d[:, 0] - cx) < half_w).all() and (np.abs(j2d[:, 1] - cy) < half_h).all()
        assert j2d[10, 1] < j2d[9, 1] < j2d[8, 1] < j2d[0, 1] < j2d[3, 1]   # head top above nose ... above ankle
        assert j2d[1, 0] < j2d[4, 0]                           # right hip on the image's left (facing camera)
    capture = cv2.VideoCapture(str(saved))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, image = capture.read()
    capture.release()
    assert ok and frames == 9 and image.shape[1] == W + H and image.shape[0] == H


def test_unreadable_video_and_images(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    assert main(["--video", str(bad), "--model", str(tiny_checkpoint)]) == 2
    assert "cannot read video" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    assert main(["--images", str(tmp_path / "imgs"), "--model", str(tiny_checkpoint)]) == 2
    assert "holds no images" in capsys.readouterr().err
