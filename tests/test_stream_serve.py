"""kasf-stream --serve: the state sent equals the JSONL poses, the token, the exposure warning, bad addresses, and a
stalled viewer that does not hold up the pipeline. (The page in a real browser: tests/test_stream_browser.py.)"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from kasf.runtime import serve
from kasf.runtime.lifter import Lifter
from kasf.runtime.outputs import JsonlSink
from kasf.runtime.sources import Frame, KeypointSource
from kasf.runtime.stream import Pipeline, Pose, Stats, run
from tests.conftest import save_tiny_stream_checkpoint
from tests.test_stream_e2e import H, W, read_jsonl, walkers

CONFIG = {"mode": "causal", "delay_frames": 0}


@pytest.fixture(scope="module")
def tiny_lifter(tmp_path_factory):
    return Lifter.load(save_tiny_stream_checkpoint(tmp_path_factory.mktemp("serve")), device="cpu")


class RecordingPublisher(serve.LivePublisher):
    """The publisher as a sink, keeping every state it would send (as the page parses it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[dict] = []

    def write(self, poses, frame) -> None:
        super().write(poses, frame)
        self.sent.append(json.loads(self.state_json()[1]))


@pytest.mark.parametrize("mode,stride", [("causal", 1), ("centre", 1), ("chunk", 4)])
def test_state_holds_exactly_the_jsonl_poses(tmp_path, tiny_lifter, mode, stride):
    k, s = walkers(40, 2)
    s[10:14, 1] = 0  # person 1 leaves for 4 frames
    pipeline = Pipeline(tiny_lifter, (W, H), mode=mode, stride=stride, stats=Stats())
    out = tmp_path / "poses.jsonl"
    publisher = RecordingPublisher(CONFIG, pipeline.stats, delay_frames=pipeline.delay_frames)
    run(KeypointSource(k, s, (W, H), 25.0, "coco"), pipeline, None, [JsonlSink(str(out)), publisher])
    rows = {(r["frame"], r["track"]): r for r in read_jsonl(out)}
    shown = [state for state in publisher.sent if state["poses"]]
    assert len({(p["frame"], p["track"]) for state in shown for p in state["poses"]}) >= 40 // stride
    for state in shown:  # every pose sent is the JSONL line of its frame and track, to the last digit
        assert [p["track"] for p in state["poses"]] == sorted({p["track"] for p in state["poses"]})
        for pose in state["poses"]:
            assert pose == rows[pose["frame"], pose["track"]]
            assert 0 <= state["frame"] - pose["frame"] <= pipeline.delay_frames
    if mode == "causal":  # after frame f the page shows exactly frame f's poses: nobody who left, nobody missing
        for f, state in enumerate(publisher.sent[:40]):
            assert state["frame"] == f and state["pose_frame"] == f
            assert {p["track"] for p in state["poses"]} == {t for (g, t) in rows if g == f}
            assert all(p["frame"] == f for p in state["poses"])
    assert publisher.sent[-1]["health"]["poses_out"] <= len(rows)


def _pose(frame: int, track: int) -> Pose:
    rng = np.random.default_rng(frame * 100 + track)
    return Pose(frame, frame / 25, track, rng.normal(size=(17, 3)).astype(np.float32), "mm",
                rng.uniform(0, 500, (17, 2)).astype(np.float32), np.ones(17, np.float32), 1.0)


def _frame(index: int) -> Frame:
    return Frame(index, index / 25, 0.0)


def _events(response, wanted: int) -> list[tuple[str, dict]]:
    """Read ``wanted`` SSE events (name, parsed data) from an open /events response."""
    events, name = [], None
    while len(events) < wanted:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_viewer_gets_config_then_the_newest_state(capsys):
    server = serve.LiveServer("0", {"mode": "centre"}, Stats())
    try:
        assert f"live view at http://127.0.0.1:{server.port}/" in capsys.readouterr().err
        with urllib.request.urlopen(server.url) as page:
            assert b"EventSource" in page.read()
        with urllib.request.urlopen(server.url + "events", timeout=10) as events:
            (config, settings), (first, empty) = _events(events, 2)  # on connect: the config, then the current state
            assert (config, settings) == ("config", {"mode": "centre"}) and first == "state" and empty["poses"] == []
            poses = [_pose(3, 0), _pose(3, 2)]
            server.write(poses, _frame(3))
            (name, state), = _events(events, 1)
            assert name == "state" and state["pose_frame"] == 3 and state["frame"] == 3
            assert state["poses"] == [json.loads(json.dumps(p.to_json())) for p in poses]
            assert state["health"]["frames_in"] == 0 and state["health"]["viewers"] == 1
    finally:
        server.close()


def test_token_is_required_when_set():
    server = serve.LiveServer("127.0.0.1:0", CONFIG, token="s3cret", announce=False)
    base = f"http://127.0.0.1:{server.port}/"
    try:
        for url in (base, base + "?token=wrong", base + "events", base + "events?token=s3cre"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url)
            assert err.value.code == 403
        with urllib.request.urlopen(base + "?token=s3cret") as page:
            assert page.status == 200
        assert server.url == base + "?token=s3cret"
    finally:
        server.close()


def test_warning_when_not_on_loopback(capsys):
    assert serve.exposure_warning("127.0.0.1", 80, None) is None
    assert serve.exposure_warning("::1", 80, None) is None
    assert serve.exposure_warning("localhost", 80, None) is None
    server = serve.LiveServer("0.0.0.0:0", CONFIG)
    server.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("kasf-stream: warning: serving on 0.0.0.0:")
    assert "anyone who can reach this port" in lines[0] and "--serve-token" in lines[0]


@pytest.mark.parametrize("text,address", [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                          ("[::1]:9000", ("::1", 9000)), ("box.local:1", ("box.local", 1))])
def test_serve_address(text, address):
    assert serve.parse_serve_address(text) == address


@pytest.mark.parametrize("text", ["", "http", "65536", "host:", ":80", "a:b:-1", "8080/x"])
def test_bad_serve_address_is_one_clear_error(text):
    with pytest.raises(ValueError, match=r"--serve wants \[HOST:\]PORT"):
        serve.parse_serve_address(text)


def test_port_in_use_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"--serve: cannot listen on 127.0.0.1:{port}: the port is in use"):
            serve.LiveServer(str(port), CONFIG, announce=False)


def test_cli_reports_serve_errors(capsys):
    from kasf.runtime.cli import main

    assert main(["--serve", "localhost:http"]) == 2
    assert "--serve wants [HOST:]PORT" in capsys.readouterr().err
    assert main(["--serve-token", "x"]) == 2
    assert "--serve-token needs --serve" in capsys.readouterr().err


def test_stalled_viewer_does_not_block_the_pipeline(monkeypatch):
    """One viewer never reads: its socket fills and its thread blocks in write; the publisher keeps taking states
    and a second viewer still gets the newest one."""
    monkeypatch.setattr(serve, "STATE_RATE_HZ", 1e9)  # no pause between states: fill the stalled socket fast
    server = serve.LiveServer("0", CONFIG, announce=False)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        with urllib.request.urlopen(server.url + "events", timeout=30) as healthy:
            _events(healthy, 2)
            crowd = [_pose(0, t) for t in range(16)]  # ~25 kB per state
            done = threading.Event()

            def publish() -> None:
                for i in range(1, 601):  # ~15 MB to each viewer that keeps up: far more than socket buffers
                    server.write([Pose(i, p.time, p.track, p.joints3d, p.units, p.joints2d, p.scores, 1.0)
                                  for p in crowd], _frame(i))
                done.set()

            threading.Thread(target=publish, daemon=True).start()
            assert done.wait(60), "publishing blocked behind a stalled viewer"  # a hang guard, not a timing check
            assert server.publisher.viewers == 2
            stalled.setblocking(False)
            assert len(stalled.recv(1 << 24)) < 5_000_000  # it really stalled: it holds a fraction of the ~15 MB
            newest = -1
            while newest != 600:  # the healthy viewer catches up to the newest state, skipping the rest
                name, state = _events(healthy, 1)[0]
                newest = state["pose_frame"] if name == "state" else newest
    finally:
        stalled.close()
        server.close()


def test_loop_numbers_frames_on_and_realtime_is_for_recordings(capsys):
    from itertools import islice

    from kasf.runtime.cli import main

    k, s = walkers(3, 1)
    source = KeypointSource(k, s, (W, H), 25.0, "coco")
    source.loop = True
    frames = list(islice(source, 7))
    assert [f.index for f in frames] == list(range(7))
    assert np.array_equal(frames[4].keypoints, frames[1].keypoints) and frames[4].time == pytest.approx(4 / 25)
    assert main(["--camera", "0", "--loop"]) == 2
    assert "--realtime and --loop apply to the sample and --keypoints" in capsys.readouterr().err


def test_camera_image_is_kept_and_encoded_only_while_someone_watches():
    pytest.importorskip("cv2")
    publisher = serve.LivePublisher(CONFIG)
    image = np.full((720, 1280, 3), 90, np.uint8)
    publisher.write([_pose(0, 0)], Frame(0, 0.0, 0.0, image=image))
    assert publisher.jpeg() is None  # nobody watching: no image kept, nothing to encode
    publisher.viewers = 1
    publisher.write([_pose(1, 0)], Frame(1, 0.04, 0.0, image=image))
    frame, jpeg = publisher.jpeg()
    assert frame == 1 and jpeg[:2] == b"\xff\xd8"
    import cv2

    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (270, serve.IMAGE_WIDTH, 3)
