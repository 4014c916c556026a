"""Where frames come from: the bundled sample, a recorded keypoint file, a video, an image folder, a camera.

Every source yields :class:`Frame` objects with a 0-based ``index`` (the number written as "frame" in the
output) and either an image (for a 2D detector) or Human3.6M-17 keypoints already. OpenCV is imported only by
the sources that need it, so the sample and keypoint files run without it.

The camera reads on its own thread and keeps only the newest frame: a slow consumer never builds a queue (whose
delay would grow without bound); frames it did not take are counted as dropped.
"""

from __future__ import annotations

import abc
import os
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from kasf.runtime.keypoints import FORMATS, to_h36m

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OPENCV_HINT = "pip install 'kasf[stream]' (or pip install opencv-python)"


class SourceError(RuntimeError):
    """The source cannot deliver frames (cannot open, disconnected, malformed file)."""


@dataclass
class Frame:
    """One input frame. ``keypoints`` (P, 17, 2) pixels and ``scores`` (P, 17) are Human3.6M-17 with missing
    keypoints marked (score 0, (-1, -1)); ``factor`` is the 2.5D mm factor when the metric scale is known."""

    index: int
    time: float
    captured: float
    image: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    scores: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    factor: float | None = None
    capture_ms: float = 0.0


def import_cv2() -> Any:
    """OpenCV, or a SourceError that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise SourceError(f"this needs OpenCV, which is not installed: {OPENCV_HINT}") from None
    return cv2


class Source(abc.ABC):
    """Base: iterate frames; ``image_wh``, ``fps``, ``dropped`` and ``name`` describe the stream."""

    name = "source"
    image_wh: tuple[int, int] = (0, 0)
    fps: float = 30.0
    dropped: int = 0

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """Frames in order, until the stream ends."""

    def close(self) -> None:
        """Release devices and threads (safe to call twice)."""


class KeypointSource(Source):
    """Recorded 2D keypoints: arrays in memory or an .npz with 'keypoints', 'scores', 'image_wh', 'fps',
    optional 'format' ('h36m' default, 'coco', 'blazepose') and 'track_ids' (F, P) (-1 = no person)."""

    def __init__(self, keypoints: np.ndarray, scores: np.ndarray, image_wh: tuple[int, int], fps: float,
                 fmt: str = "h36m", track_ids: np.ndarray | None = None, factor: np.ndarray | None = None,
                 name: str = "keypoints") -> None:
        keypoints = np.asarray(keypoints, dtype=np.float32)
        scores = np.asarray(scores, dtype=np.float32)
        n_kpt = 33 if fmt == "blazepose" else 17
        if fmt not in FORMATS:
            raise SourceError(f"{name}: unknown keypoint format {fmt!r}; choose one of {FORMATS}")
        given_shape, given_scores = keypoints.shape, scores.shape
        if keypoints.ndim == 3:
            keypoints, scores = keypoints[:, None], scores[:, None] if scores.ndim == 2 else scores
            if track_ids is not None and np.ndim(track_ids) == 1:
                track_ids = np.asarray(track_ids)[:, None]
        if keypoints.ndim != 4 or keypoints.shape[2:] != (n_kpt, 2):
            raise SourceError(f"{name}: 'keypoints' must be (F, {n_kpt}, 2) or (F, P, {n_kpt}, 2) pixels for format "
                              f"{fmt!r}; got {given_shape}")
        if scores.shape != keypoints.shape[:3]:
            raise SourceError(f"{name}: 'scores' must be {given_shape[:-1]} to match 'keypoints'; got "
                              f"{given_scores}")
        if track_ids is not None and np.shape(track_ids) != keypoints.shape[:2]:
            raise SourceError(f"{name}: 'track_ids' must be {keypoints.shape[:2]} (frames, people); got "
                              f"{np.shape(track_ids)}")
        wh = np.asarray(image_wh).reshape(-1)
        if wh.shape != (2,) or not (wh > 0).all():
            raise SourceError(f"{name}: 'image_wh' must be two positive numbers (width, height); got {image_wh}")
        if not np.isfinite(fps) or fps <= 0:
            raise SourceError(f"{name}: 'fps' must be positive; got {fps}")
        self.keypoints, self.scores = to_h36m(keypoints, scores, fmt)
        self.track_ids = None if track_ids is None else np.asarray(track_ids, dtype=np.int64)
        self.factor = None if factor is None else np.asarray(factor, dtype=np.float32)
        self.image_wh = (int(wh[0]), int(wh[1]))
        self.fps = float(fps)
        self.name = name

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "KeypointSource":
        path = Path(path)
        if not path.exists():
            raise SourceError(f"keypoint file not found: {path}")
        if path.is_dir() or not zipfile.is_zipfile(path):
            raise SourceError(f"{path}: not an .npz file (NumPy's zip of arrays, as np.savez writes); a keypoint file "
                              "holds 'keypoints', 'scores', 'image_wh', 'fps' (docs/streaming.md)")
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise SourceError(f"{path}: not a readable .npz keypoint file ({err})") from None
        missing = [k for k in ("keypoints", "scores", "image_wh", "fps") if k not in fields]
        if missing:
            raise SourceError(f"{path}: missing field(s) {', '.join(missing)}; a keypoint file needs 'keypoints', "
                              "'scores', 'image_wh', 'fps' (optional 'format', 'track_ids')")
        fmt = str(fields["format"]) if "format" in fields else "h36m"
        return cls(fields["keypoints"], fields["scores"], tuple(fields["image_wh"]), float(fields["fps"]), fmt,
                   fields.get("track_ids"), fields.get("factor"), name=path.name)

    loop = False  # replay from the start at the end, frame numbers going on (a demo for --serve)
    realtime = False  # deliver frames at the file's frame rate, as a camera would, not as fast as they are taken

    def __len__(self) -> int:
        return len(self.keypoints)

    def __iter__(self) -> Iterator[Frame]:
        index, clock = 0, time.perf_counter()
        while True:
            for i in range(len(self.keypoints)):
                if self.realtime:
                    time.sleep(max(0.0, clock + index / self.fps - time.perf_counter()))
                start = time.perf_counter()
                frame = Frame(index, index / self.fps, start, keypoints=self.keypoints[i], scores=self.scores[i],
                              track_ids=None if self.track_ids is None else self.track_ids[i],
                              factor=None if self.factor is None else float(self.factor[i]))
                frame.capture_ms = (time.perf_counter() - start) * 1000
                yield frame
                index += 1
            if not self.loop or not len(self.keypoints):
                return


def sample_source() -> tuple[KeypointSource, np.ndarray]:
    """The bundled sample as a keypoint stream, and its 3D truth (F, 17, 3) root-relative mm."""
    from kasf.data.sample import load_sample

    sample = load_sample()
    source = KeypointSource(sample.keypoints, sample.scores, sample.image_wh, sample.fps, "h36m",
                            factor=sample.factor, name=f"sample {sample.clip}")
    return source, sample.joints3d_mm


class VideoSource(Source):
    """A video file or stream URL through OpenCV, read in order (every frame is processed)."""

    def __init__(self, path: str) -> None:
        cv2 = import_cv2()
        if "://" not in path and not Path(path).exists():
            raise SourceError(f"video not found: {path}")
        self.capture = cv2.VideoCapture(path)
        ok, first = self.capture.read() if self.capture.isOpened() else (False, None)
        if not ok:
            self.capture.release()
            raise SourceError(f"cannot read video {path}: OpenCV could not open or decode it (is it a video, and "
                              "does this OpenCV build have its codec?)")
        self.first = first
        self.image_wh = (first.shape[1], first.shape[0])
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.name = path

    def __iter__(self) -> Iterator[Frame]:
        index, image, start, capture_ms = 0, self.first, time.perf_counter(), 0.0
        while True:
            yield Frame(index, index / self.fps, start, image=image, capture_ms=capture_ms)
            index += 1
            start = time.perf_counter()
            ok, image = self.capture.read()
            if not ok:
                return
            capture_ms = (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.capture.release()


class ImageFolderSource(Source):
    """Images of a folder in name order, one frame each (all must have the first image's size)."""

    def __init__(self, folder: str | os.PathLike, fps: float = 30.0) -> None:
        self.cv2 = import_cv2()
        folder = Path(folder)
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        first = self._read(self.paths[0])
        self.image_wh = (first.shape[1], first.shape[0])
        self.fps = fps
        self.name = str(folder)

    def _read(self, path: Path) -> np.ndarray:
        image = self.cv2.imread(str(path))
        if image is None:
            raise SourceError(f"cannot read image {path}")
        return image

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            start = time.perf_counter()
            image = self._read(path)
            if (image.shape[1], image.shape[0]) != self.image_wh:
                raise SourceError(f"{path} is {image.shape[1]}x{image.shape[0]}, the folder's first image is "
                                  f"{self.image_wh[0]}x{self.image_wh[1]}: one stream needs one image size")
            yield Frame(index, index / self.fps, start, image=image, capture_ms=(time.perf_counter() - start) * 1000)


class CameraSource(Source):
    """A live camera read on a background thread; the consumer always gets the newest frame.

    ``open_capture(index)`` returns an object with ``read() -> (ok, image)``, ``release()`` and optionally
    ``get(prop)`` (cv2.VideoCapture by default; tests pass a fake). A failed read is retried ``retries`` times,
    reopening the device each time; then the stream ends with a SourceError that says how many frames were read.
    """

    def __init__(self, index: int = 0, retries: int = 3, retry_wait_s: float = 0.5,
                 open_capture: Callable[[int], Any] | None = None, fps: float | None = None) -> None:
        if open_capture is None:
            cv2 = import_cv2()

            def open_capture(i: int) -> Any:
                return cv2.VideoCapture(i)

        self.open_capture = open_capture
        self.index = index
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.name = f"camera {index}"
        self.capture = open_capture(index)
        ok, image = self.capture.read()
        if not ok:
            self.capture.release()
            raise SourceError(f"cannot open camera {index} (no frame from it); check the index (--camera N), that no "
                              "other program holds it, and the permission to use it")
        self.image_wh = (image.shape[1], image.shape[0])
        reported = self.capture.get(5) if hasattr(self.capture, "get") else 0  # 5 = cv2.CAP_PROP_FPS
        self.fps = float(fps or (reported if reported and reported > 0 else 30.0))
        self.dropped = 0
        self._start_clock = time.perf_counter()  # frame times count from the first frame
        self._latest: tuple[np.ndarray, float, float] | None = (image, self._start_clock, 0.0)
        self._error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Condition()
        self.captured = 1  # frames read from the device (taken + dropped + the one waiting)
        self._thread = threading.Thread(target=self._reader, name=f"kasf-camera-{index}", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        failures = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                ok, image = self.capture.read()
            except Exception as err:  # a driver error is a failed read like any other
                ok, image = False, None
                last_error = str(err)
            else:
                last_error = ""
            if not ok:
                failures += 1
                if failures > self.retries:
                    with self._ready:
                        self._error = (f"camera {self.index} stopped delivering frames after {self.captured} frames "
                                       f"({self.retries} reconnect attempts failed{': ' + last_error if last_error else ''})")
                        self._ready.notify_all()
                    return
                self.capture.release()
                time.sleep(self.retry_wait_s)
                self.capture = self.open_capture(self.index)
                continue
            failures = 0
            now = time.perf_counter()
            with self._ready:
                if self._latest is not None:
                    self.dropped += 1  # the previous frame was never taken
                self._latest = (image, now, (now - start) * 1000)
                self.captured += 1
                self._ready.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            with self._ready:
                while self._latest is None and self._error is None and not self._stop.is_set():
                    self._ready.wait(0.1)
                if self._latest is None:
                    if self._error is not None:
                        raise SourceError(self._error)
                    return
                image, captured, capture_ms = self._latest
                self._latest = None
            yield Frame(index, captured - self._start_clock, captured, image=image, capture_ms=capture_ms)
            index += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.capture.release()
