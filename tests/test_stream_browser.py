"""kasf-stream --serve in a real browser: headless Chromium loads the page against a stream of the bundled sample.

The page records what it received in attributes of <body> (updates, tracks, first and last pose frame) and
``?stop_after=N`` makes it stop listening after N updates, so ``--dump-dom`` and ``--screenshot`` return once the
stream has been watched for a while. CI installs Debian's chromium (.ci/run); without it this test skips.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SKELETON_COLOURS = ((0x4A, 0xA3, 0xFF), (0xFF, 0x5A, 0x4A), (0x7A, 0xD6, 0x7A))  # the page's left, right, centre
SCREENSHOT_SIZE = (1280, 720)


@pytest.fixture(scope="module")
def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs Debian's chromium for the headless browser test (apt-get install -y chromium; .ci/run "
                    "installs it)")
    return found


def browse(browser: str, profile: Path, url: str, *extra: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=1000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def page_counters(dom: str) -> dict[str, int]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(-?\d+)"', body.group(1))}


@pytest.fixture(scope="module")
def live_stream(browser, tmp_path_factory):
    """``kasf-stream --serve`` on the looping, real-time sample; yields the page URL."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path_factory.mktemp("stream") / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kasf.runtime.cli", "--serve", "127.0.0.1:0", "--loop",
                                 "--realtime", "--serve-token", "t0k"], stderr=err, cwd=REPO, env=env)
    try:
        url = None
        for _ in range(600):
            match = re.search(r"live view at (\S+)", log.read_text())
            if match or proc.poll() is not None:
                url = match and match.group(1)
                break
            time.sleep(0.1)
        assert url, f"kasf-stream did not start serving: {log.read_text()}"
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()  # Ctrl-C: outputs flushed, the server stopped


def test_page_shows_the_live_skeleton(browser, live_stream, tmp_path):
    first = page_counters(browse(browser, tmp_path / "profile", live_stream + "&stop_after=20", "--dump-dom"))
    assert first["states"] == 20 and first["tracks"] == 1 and first["drawn"] == 1
    assert first["last-frame"] > first["first-frame"] >= 0  # frames arrived while the page watched
    again = page_counters(browse(browser, tmp_path / "profile", live_stream + "&stop_after=5", "--dump-dom"))
    assert again["first-frame"] > first["last-frame"]  # and the stream went on between the two visits

    shot = tmp_path / "page.png"
    browse(browser, tmp_path / "profile", live_stream + "&stop_after=20", f"--screenshot={shot}",
           "--window-size={},{}".format(*SCREENSHOT_SIZE))
    import cv2

    image = cv2.imread(str(shot))[:, :, ::-1]  # RGB
    assert image.shape[:2] == SCREENSHOT_SIZE[::-1]
    view3d = image[40:, : int(0.6 * image.shape[1])].astype(int)  # the 3D view: left of the side panel
    skeleton = sum((np.abs(view3d - colour).sum(-1) < 30).sum() for colour in SKELETON_COLOURS)
    assert skeleton > 300, f"only {skeleton} skeleton-coloured pixels in the 3D view"
    if os.environ.get("KASF_SCREENSHOT"):  # docs/streaming.md's picture: KASF_SCREENSHOT=docs/... pytest ...
        shutil.copyfile(shot, os.environ["KASF_SCREENSHOT"])


def test_page_refuses_a_missing_token(browser, live_stream, tmp_path):
    dom = browse(browser, tmp_path / "profile", live_stream.split("?")[0], "--dump-dom")
    assert "forbidden" in dom and "data-states" not in dom
