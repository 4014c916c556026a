"""``kasf-stream --serve [HOST:]PORT``: a live 3D view of the stream in any browser, from a headless box.

One page (``kasf/runtime/web/index.html``, shipped in the package, nothing fetched from elsewhere) gets the
stream's state over Server-Sent Events from a standard-library HTTP server.

Why it cannot slow the stream: the pipeline only hands its newest poses to a :class:`LivePublisher` (a few
assignments under a lock, then a notify). Each viewer has its own server thread that waits for the next state,
turns it into JSON (once per state, shared by all viewers) and writes it to its socket. A viewer that reads
slowly or not at all blocks only its own thread and simply misses the states published meanwhile. The camera
image is kept by reference and JPEG-encoded on a viewer thread, only while someone watches, a few times a second.
"""

from __future__ import annotations

import base64
import errno
import hmac
import ipaddress
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np

from kasf import skeleton
from kasf.runtime.sources import Frame
from kasf.runtime.stream import Pose, Stats

PAGE_PATH = Path(__file__).resolve().parent / "web" / "index.html"
DEFAULT_HOST = "127.0.0.1"
STATE_RATE_HZ = 20.0  # states sent to one viewer per second at most: smooth enough to watch, and each send
# wakes a thread that competes with the pipeline for the GIL (benchmarks/serve_load.py)
IMAGE_RATE_HZ = 5.0  # camera images sent to one viewer per second at most
IMAGE_WIDTH = 480  # pixels; the image is only a backdrop for the 2D keypoints
HEALTH_EVERY_S = 0.5  # stage percentiles are recomputed at most this often, whoever asks
KEEPALIVE_S = 10.0  # an SSE comment this often keeps proxies from closing an idle stream
VIEWER_SOCKET_TIMEOUT_S = 30.0  # a viewer that reads nothing for this long is disconnected
MAX_VIEWERS = 32


def parse_serve_address(text: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); host defaults to loopback, port 0
    lets the system pick a free one (the URL printed says which)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) < 65536 or (sep and not host):
        raise ValueError(f"--serve wants [HOST:]PORT (e.g. 8080 or 0.0.0.0:8080), port 0-65535; got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, token: str | None) -> str | None:
    """The one-line warning printed when the page is reachable from other machines (None on loopback)."""
    if is_loopback(host):
        return None
    guard = "the --serve-token in the URL is the only guard" if token else "set --serve-token to require a token"
    return (f"kasf-stream: warning: serving on {host}:{port}, not loopback: anyone who can reach this port sees the "
            f"live stream ({guard}; plain HTTP, no encryption)")


class LivePublisher:
    """Holds the newest state of the stream; the pipeline writes it, viewer threads read it.

    ``write`` is the only call on the per-frame path and never waits on a viewer. The state holds each track's
    newest pose (exactly the objects the other sinks write, see ``Pose.to_json``) while it is at most
    ``delay_frames`` behind the newest input frame (the mode's delay: in chunk mode tracks are emitted out of step,
    and a track shows its last chunk until the next); a track with no newer pose has left the view. It also holds
    a reference to the image of the newest pose's frame, so the 2D keypoints are drawn over the image they came
    from (in centre mode that is 13 frames back).
    """

    def __init__(self, config: dict[str, Any], stats: Stats | None = None,
                 dropped: Callable[[], int] | None = None, delay_frames: int = 0) -> None:
        self.config = config
        self.stats = stats
        self.dropped = dropped or (lambda: 0)
        self.delay_frames = delay_frames
        self.changed = threading.Condition()
        self.seq = 0
        self.frame = -1  # newest input frame
        self.pose_frame = -1  # newest frame among the shown poses
        self.poses: dict[int, Pose] = {}  # by track
        self.closed = False
        self.viewers = 0
        self.started = time.perf_counter()
        self._images: dict[int, np.ndarray] = {}  # by frame index, references only, pruned as frames age
        self._image: tuple[int, np.ndarray] | None = None
        self._cache_lock = threading.Lock()
        self._state_json: tuple[int, bytes] | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._health: tuple[float, dict[str, Any]] | None = None

    # ----- the per-frame path (pipeline thread) -----
    def write(self, poses: list[Pose], frame: Frame | None) -> None:
        """Take the poses a frame made due (the same list every sink gets) as the newest state."""
        with self.changed:
            if frame is not None:
                self.frame = frame.index
                if frame.image is not None and self.viewers:
                    self._images[frame.index] = frame.image
            for pose in poses:
                shown = self.poses.get(pose.track)
                if shown is None or pose.frame >= shown.frame:
                    self.poses[pose.track] = pose
            if frame is not None:
                for track in [t for t, p in self.poses.items() if frame.index - p.frame > self.delay_frames]:
                    del self.poses[track]
            if poses:
                self.pose_frame = max(p.frame for p in poses)
                image = self._images.get(self.pose_frame)
                if image is not None:
                    self._image = (self.pose_frame, image)
            horizon = min(self.pose_frame, self.frame - self.delay_frames - 1)
            for old in [i for i in self._images if i <= horizon]:
                del self._images[old]
            self.seq += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    # ----- viewer threads -----
    def wait(self, after: int, timeout: float) -> int:
        """Block until the state is newer than ``after``, the stream ends, or ``timeout``; returns the seq."""
        with self.changed:
            self.changed.wait_for(lambda: self.seq != after or self.closed, timeout)
            return self.seq

    def state(self) -> dict[str, Any]:
        """The newest state as the page gets it (poses exactly as ``Pose.to_json`` writes them to JSONL)."""
        with self.changed:
            seq, frame, pose_frame = self.seq, self.frame, self.pose_frame
            poses = sorted(self.poses.values(), key=lambda p: p.track)
            image_frame = self._image[0] if self._image is not None else None
        return {"seq": seq, "frame": frame, "pose_frame": pose_frame, "image_frame": image_frame,
                "poses": [p.to_json() for p in poses], "health": self.health()}

    def state_json(self) -> tuple[int, bytes]:
        """(seq, JSON) of the newest state, serialised once per state however many viewers ask."""
        with self._cache_lock:
            if self._state_json is None or self._state_json[0] != self.seq:
                state = self.state()
                self._state_json = (state["seq"], json.dumps(state, separators=(",", ":")).encode())
            return self._state_json

    def jpeg(self) -> tuple[int, bytes] | None:
        """(frame, JPEG bytes) of the image under the shown poses, downscaled; encoded once per frame."""
        with self.changed:
            image = self._image
        if image is None:
            return None
        with self._cache_lock:
            if self._jpeg is None or self._jpeg[0] != image[0]:
                self._jpeg = (image[0], encode_jpeg(image[1]))
            return self._jpeg

    def health(self) -> dict[str, Any]:
        """Counts, rates and per-stage p50/p95 (Stats.summary, the numbers --stats writes), refreshed every
        HEALTH_EVERY_S at most: percentiles over 20 000 samples are not free."""
        now = time.perf_counter()
        cached = self._health
        if cached is not None and now - cached[0] < HEALTH_EVERY_S:
            return cached[1]
        health: dict[str, Any] = {"viewers": self.viewers, "uptime_s": round(now - self.started, 2)}
        if self.stats is not None:
            summary = self.stats.summary()
            elapsed = now - self.started
            health.update(frames_in=summary["frames_in"], poses_out=summary["poses_out"],
                          lift_calls=summary["lift_calls"], dropped_frames=int(self.dropped()),
                          frames_per_s=round(summary["frames_in"] / elapsed, 2) if elapsed > 0 else None,
                          stages={stage: {"p50_ms": round(s["p50_ms"], 3), "p95_ms": round(s["p95_ms"], 3)}
                                  for stage, s in summary["stages"].items()})
        self._health = (now, health)
        return health


def encode_jpeg(image: np.ndarray, width: int = IMAGE_WIDTH, quality: int = 70) -> bytes:
    """BGR image -> downscaled JPEG (OpenCV; only image sources have images, and they already need OpenCV)."""
    from kasf.runtime.sources import import_cv2

    cv2 = import_cv2()
    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode the camera image as JPEG")
    return data.tobytes()


def page_config(lifter: Any, pipeline: Any, source: Any) -> dict[str, Any]:
    """What the page needs once: skeleton, image size, and what runs (backend, precision, mode and delay)."""
    return {"joint_names": list(skeleton.JOINT_NAMES), "edges": [list(e) for e in skeleton.DRAW_EDGES],
            "left": list(skeleton.FLIP_LEFT), "right": list(skeleton.FLIP_RIGHT),
            "image_wh": list(source.image_wh), "fps": float(source.fps), "source": str(source.name),
            "backend": lifter.backend, "device": lifter.device, "precision": lifter.precision,
            "mode": pipeline.mode, "delay_frames": pipeline.delay_frames,
            "delay_ms": round(1000 * pipeline.delay_frames / float(source.fps), 1)}


def _sse(event: str, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = VIEWER_SOCKET_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # kasf-stream's stderr is for the stream; one line per request would bury it

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        token = self.server.token
        if token is not None:
            given = parse_qs(url.query).get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), token.encode()):
                return self._plain(403, "forbidden: this stream needs ?token=... (kasf-stream --serve-token)\n")
        if url.path in ("/", "/index.html"):
            return self._send(200, "text/html; charset=utf-8", self.server.page)
        if url.path == "/events":
            return self._events()
        return self._plain(404, "not found\n")

    def _plain(self, code: int, text: str) -> None:
        self._send(code, "text/plain; charset=utf-8", text.encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        publisher = self.server.publisher
        with publisher.changed:
            if publisher.viewers >= MAX_VIEWERS:
                return self._plain(503, f"too many viewers (at most {MAX_VIEWERS})\n")
            publisher.viewers += 1
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(_sse("config", json.dumps(publisher.config)))
            self._stream(publisher)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the viewer went away or stalled past the socket timeout: only this thread ends
        finally:
            with publisher.changed:
                publisher.viewers -= 1

    def _stream(self, publisher: LivePublisher) -> None:
        seq, last_image_frame = -1, None
        last_sent = last_image = last_write = 0.0
        while not self.server.stopping.is_set():
            seq_now = publisher.wait(seq, KEEPALIVE_S)
            if publisher.closed and seq_now == seq:
                self.wfile.write(_sse("end", "{}"))
                return
            now = time.perf_counter()
            if seq_now == seq:
                if now - last_write >= KEEPALIVE_S:
                    self.wfile.write(b": keep-alive\n\n")
                    last_write = now
                continue
            wait = 1.0 / STATE_RATE_HZ - (now - last_sent)
            if wait > 0:  # at most STATE_RATE_HZ states; the newest after the pause, never a backlog
                time.sleep(wait)
            seq, payload = publisher.state_json()
            chunks = [_sse("state", payload)]
            if now - last_image >= 1.0 / IMAGE_RATE_HZ:
                jpeg = publisher.jpeg()
                if jpeg is not None and jpeg[0] != last_image_frame:
                    last_image_frame, last_image = jpeg[0], now
                    data = json.dumps({"frame": jpeg[0], "src": "data:image/jpeg;base64,"
                                       + base64.b64encode(jpeg[1]).decode()})
                    chunks.append(_sse("image", data))
            self.wfile.write(b"".join(chunks))
            self.wfile.flush()
            last_sent = last_write = time.perf_counter()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled viewer's thread must not hold up kasf-stream's exit

    def __init__(self, address: tuple[str, int], publisher: LivePublisher, token: str | None, page: bytes) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.publisher, self.token, self.page = publisher, token, page
        self.stopping = threading.Event()


class LiveServer:
    """The ``--serve`` sink: a :class:`LivePublisher` fed by the pipeline and an HTTP server on its own thread."""

    def __init__(self, address: str, config: dict[str, Any], stats: Stats | None = None,
                 dropped: Callable[[], int] | None = None, token: str | None = None, delay_frames: int = 0,
                 announce: bool = True) -> None:
        host, port = parse_serve_address(address)
        if token is not None and not token:
            raise ValueError("--serve-token must not be empty")
        self.publisher = LivePublisher(config, stats, dropped, delay_frames)
        try:
            self.server = _Server((host, port), self.publisher, token, PAGE_PATH.read_bytes())
        except OSError as err:
            reason = "the port is in use" if err.errno == errno.EADDRINUSE else err.strerror or str(err)
            raise ValueError(f"--serve: cannot listen on {host}:{port}: {reason}") from None
        self.host, self.port = host, self.server.server_address[1]
        self.token = token
        self.thread = threading.Thread(target=self.server.serve_forever, name="kasf-serve", daemon=True)
        self.thread.start()
        if announce:
            warning = exposure_warning(host, self.port, token)
            if warning:
                print(warning, file=sys.stderr)
            print(f"kasf-stream: live view at {self.url}", file=sys.stderr)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def write(self, poses: list[Pose], frame: Frame | None) -> None:
        self.publisher.write(poses, frame)

    def close(self) -> None:
        """End every viewer's stream (they get an 'end' event) and stop listening."""
        self.publisher.close()
        time.sleep(0.2)  # let connected viewers send 'end' before their sockets go
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
