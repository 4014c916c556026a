"""Where poses go: JSON lines (file or stdout), UDP datagrams, and a rendered video / live window.

One JSON object per person per emitted frame, the same for every sink, so a file written today and a game engine
listening on UDP read the same schema (``POSE_KEYS``). Rendering runs on its own thread with OpenCV (imported only
when asked for), so drawing never delays the lifting of the next frame.
"""

from __future__ import annotations

import json
import math
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from kasf import skeleton
from kasf.runtime.sources import Frame, import_cv2
from kasf.runtime.stream import Pose

POSE_KEYS = ("frame", "time", "track", "joints3d", "units", "joints2d", "scores", "latency_ms")
MAX_DATAGRAM = 65_000


class JsonlSink:
    """``--out FILE.jsonl`` or ``-`` (stdout): one line per pose, flushed after every frame so that a crash or a
    lost camera leaves every pose emitted so far on disk."""

    def __init__(self, target: str) -> None:
        self.target = target
        if target == "-":
            self.handle: IO[str] = sys.stdout
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("w", encoding="utf-8")

    def write(self, poses: list[Pose], frame: Frame | None) -> None:
        if not poses:
            return
        self.handle.write("".join(json.dumps(p.to_json(), separators=(",", ":")) + "\n" for p in poses))
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not sys.stdout and not self.handle.closed:
            self.handle.close()
        elif self.handle is sys.stdout:
            self.handle.flush()


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--udp wants HOST:PORT (e.g. 127.0.0.1:9000); got {text!r}")
    return host.strip("[]"), int(port)


class UdpSink:
    """``--udp HOST:PORT``: each pose as one UTF-8 JSON datagram (about 1.5 kB), fire and forget, for live
    consumers that prefer a dropped pose to a late one."""

    def __init__(self, address: str) -> None:
        self.address = parse_host_port(address)
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sent = 0

    def write(self, poses: list[Pose], frame: Frame | None) -> None:
        for pose in poses:
            payload = json.dumps(pose.to_json(), separators=(",", ":")).encode()
            if len(payload) > MAX_DATAGRAM:
                raise ValueError(f"pose datagram of {len(payload)} bytes exceeds {MAX_DATAGRAM}")
            self.sock.sendto(payload, self.address)
            self.sent += 1

    def close(self) -> None:
        self.sock.close()


LEFT = set(skeleton.FLIP_LEFT)
RIGHT = set(skeleton.FLIP_RIGHT)


def _colour(joint: int) -> tuple[int, int, int]:
    return (255, 128, 0) if joint in LEFT else (0, 0, 255) if joint in RIGHT else (0, 200, 0)


def draw_2d(cv2: Any, canvas: np.ndarray, joints2d: np.ndarray, scores: np.ndarray, scale: float) -> None:
    """The H36M skeleton over the frame; joints with confidence 0 (stand-ins) are drawn hollow."""
    pts = np.round(joints2d * scale).astype(int)
    for child, parent in skeleton.DRAW_EDGES:
        cv2.line(canvas, tuple(pts[child]), tuple(pts[parent]), _colour(child), 2, cv2.LINE_AA)
    for j, p in enumerate(pts):
        cv2.circle(canvas, tuple(p), 3, _colour(j), -1 if scores[j] > 0 else 1, cv2.LINE_AA)


def draw_3d(cv2: Any, panel: np.ndarray, poses: list[np.ndarray], yaw_deg: float = 30.0,
            elevation_deg: float = 15.0, tracks: list[int] | None = None) -> None:
    """Root-relative 3D skeletons (camera axes: x right, y down, z away) seen from a camera turned by yaw and
    elevation, side by side, scaled to the panel; each stands on a ground grid at its lowest joint, carries its
    track id, and an axes marker in the corner shows which way x, y and z point."""
    h, w = panel.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(panel, "3D (camera axes)", (10, 25), font, 0.6, (200, 200, 200), 1, cv2.LINE_AA)
    yaw, elev = math.radians(yaw_deg), math.radians(elevation_deg)
    rot_y = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(elev), -math.sin(elev)], [0, math.sin(elev), math.cos(elev)]])
    rot = rot_x @ rot_y
    origin = np.array([40.0, h - 40.0])
    for axis, (name, colour) in enumerate((("x", (60, 60, 255)), ("y", (60, 220, 60)), ("z", (255, 140, 60)))):
        tip = np.round(origin + 28 * (rot @ np.eye(3)[axis])[:2]).astype(int)
        cv2.arrowedLine(panel, tuple(origin.astype(int)), tuple(tip), colour, 2, cv2.LINE_AA, tipLength=0.25)
        cv2.putText(panel, name, (int(tip[0]) + 3, int(tip[1]) + 3), font, 0.45, colour, 1, cv2.LINE_AA)
    if not poses:
        return
    cell = w / len(poses)
    for i, pose in enumerate(poses):
        pose = np.asarray(pose, np.float64)
        span = max(float(np.ptp(pose, axis=0).max()), 1e-6)
        floor = float(pose[:, 1].max())  # y points down: the lowest joint has the largest y
        grid = np.linspace(-0.5, 0.5, 5) * span
        ground = [np.array([[a, floor, grid[0]], [a, floor, grid[-1]]]) for a in grid]
        ground += [np.array([[grid[0], floor, b], [grid[-1], floor, b]]) for b in grid]
        points = np.concatenate([pose] + ground)
        view = points @ rot.T
        extent = max(float(np.abs(view[:, :2]).max()), 1e-6)
        scale = 0.40 * min(cell, h) / extent
        centre = np.array([cell * (i + 0.5), h / 2])
        pts = np.round(view[:, :2] * scale + centre).astype(int)
        for k in range(len(pose), len(points), 2):
            cv2.line(panel, tuple(pts[k]), tuple(pts[k + 1]), (80, 80, 80), 1, cv2.LINE_AA)
        for child, parent in skeleton.DRAW_EDGES:
            cv2.line(panel, tuple(pts[child]), tuple(pts[parent]), _colour(child), 2, cv2.LINE_AA)
        if tracks is not None:
            cv2.putText(panel, f"track {tracks[i]}", (int(cell * i) + 10, 50), font, 0.5, (230, 230, 230), 1,
                        cv2.LINE_AA)


def rendering_fps(times: list[float]) -> float | None:
    """Frames per second over the render times of the last second; None until two frames give a rate (a count of
    the frames so far would start at a meaningless "1 fps")."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


class VideoSink:
    """``--save FILE.mp4`` and/or ``--show``: frame with 2D skeletons, 3D panel beside it, live FPS.

    Frames are drawn once all their poses are due (``delay`` frames after they arrive), on a render thread fed
    through a queue; ``--save`` never drops a frame (the queue blocks when full), ``--show`` alone drops frames
    the screen cannot keep up with.
    """

    def __init__(self, save: str | None, show: bool, image_wh: tuple[int, int], fps: float, delay: int,
                 max_height: int = 720) -> None:
        self.cv2 = import_cv2()
        self.save, self.show = save, show
        self.scale = min(1.0, max_height / image_wh[1])
        self.size = (int(image_wh[0] * self.scale), int(image_wh[1] * self.scale))
        self.fps = fps
        self.delay = delay
        self.images: dict[int, np.ndarray | None] = {}
        self.poses: dict[int, list[Pose]] = {}
        self.writer = None
        if save:
            Path(save).parent.mkdir(parents=True, exist_ok=True)
            self.writer = self.cv2.VideoWriter(save, self.cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                               (self.size[0] + self.size[1], self.size[1]))
            if not self.writer.isOpened():
                raise ValueError(f"OpenCV cannot write {save} (mp4v codec missing in this build?)")
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.error: BaseException | None = None
        self.written = 0
        self.views_skipped = 0  # --show without --save: frames the window could not keep up with
        self._times: list[float] = []
        self.thread = threading.Thread(target=self._render_loop, name="kasf-render", daemon=True)
        self.thread.start()

    def write(self, poses: list[Pose], frame: Frame | None) -> None:
        for pose in poses:
            self.poses.setdefault(pose.frame, []).append(pose)
        if frame is not None:
            self.images[frame.index] = frame.image
            ready = [i for i in self.images if i <= frame.index - self.delay]
        else:
            ready = list(self.images)
        for i in sorted(ready):
            self._enqueue((self.images.pop(i), self.poses.pop(i, [])))
        for i in [i for i in self.poses if i not in self.images]:
            del self.poses[i]  # poses of frames already drawn (late flushes) are not drawn twice

    def _enqueue(self, item: tuple[np.ndarray | None, list[Pose]]) -> None:
        if self.error is not None:
            raise RuntimeError(f"rendering failed: {self.error}")
        if self.writer is None:
            try:
                self.queue.put_nowait(item)
            except queue.Full:  # --show only: the window shows the newest frames it can, and says so at close
                self.views_skipped += 1
        else:
            self.queue.put(item)

    def _render_loop(self) -> None:
        cv2 = self.cv2
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                image, poses = item
                if image is None:
                    canvas = np.zeros((self.size[1], self.size[0], 3), np.uint8)
                else:
                    canvas = cv2.resize(image, self.size) if self.scale != 1.0 else image.copy()
                for pose in poses:
                    draw_2d(cv2, canvas, pose.joints2d, pose.scores, self.scale)
                panel = np.full((self.size[1], self.size[1], 3), 30, np.uint8)
                draw_3d(cv2, panel, [p.joints3d for p in poses], tracks=[p.track for p in poses])
                view = np.concatenate([canvas, panel], axis=1)
                now = time.perf_counter()
                self._times = [t for t in self._times if now - t < 1.0] + [now]
                fps = rendering_fps(self._times)
                cv2.putText(view, f"{fps:.0f} fps" if fps is not None else "-- fps", (10, 25),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
                if self.writer is not None:
                    self.writer.write(view)
                    self.written += 1
                if self.show:
                    cv2.imshow("kasf-stream", view)
                    cv2.waitKey(1)
        except BaseException as err:  # reported to the producer on its next write and at close
            self.error = err

    def close(self) -> None:
        self.write([], None)
        self.queue.put(None)
        self.thread.join()
        if self.writer is not None:
            self.writer.release()
        if self.show:
            self.cv2.destroyAllWindows()
        if self.views_skipped:
            print(f"kasf-stream: the --show window skipped {self.views_skipped} frames it could not draw in time "
                  "(poses and other outputs are complete)", file=sys.stderr)
        if self.error is not None:
            raise RuntimeError(f"rendering failed: {self.error}")
