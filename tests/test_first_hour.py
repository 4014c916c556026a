"""The first hour of a new user (issue 12): one line and the same exit code for every fixable error, nothing
lost on Ctrl-C, files others can read, third-party noise hidden."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kasf.runtime.lifter import Lifter
from kasf.runtime.sources import KeypointSource, SourceError
from kasf.runtime.stream import Pipeline, run
from tests.test_stream_units import index_lifter, index_source

REPO = Path(__file__).resolve().parents[1]


def _ctrl_c_during_lift(lifter: Lifter, at_call: int) -> Lifter:
    """The lifter, with a real SIGINT delivered to this process in the middle of its ``at_call``-th predict."""
    calls = [0]
    inner = lifter.predict

    def predict(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signal.SIGINT)
        return inner(x)

    lifter.predict = predict  # type: ignore[method-assign]
    return lifter


@pytest.mark.parametrize("mode, at_call", [("causal", 20), ("centre", 10), ("chunk", 4)])
def test_ctrl_c_inside_a_lift_loses_no_pose(mode, at_call):
    frames = 40
    pipeline = Pipeline(_ctrl_c_during_lift(index_lifter(), at_call), (1000, 800), mode=mode, stride=5)
    result = run(index_source(frames), pipeline, keep_poses=True)
    assert result.interrupted
    read = result.stats.frames_in
    assert read < frames  # it stopped early ...
    assert sorted(p.frame for p in result.poses) == list(range(read))  # ... and every frame read came out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_keypoint_file_that_is_not_an_npz(tmp_path):
    text = tmp_path / "x.npz"
    text.write_text("frame,x,y\n0,1,2\n")
    with pytest.raises(SourceError) as err:
        KeypointSource.from_file(text)
    assert "not an .npz file" in str(err.value) and "pickle" not in str(err.value)


def test_keypoint_shape_error_names_the_shape_given():
    with pytest.raises(SourceError, match=r"got \(50, 17, 3\)"):
        KeypointSource(np.zeros((50, 17, 3)), np.zeros((50, 17)), (640, 480), 30)
    with pytest.raises(SourceError, match=r"'scores' must be \(50, 17\).*got \(50, 16\)"):
        KeypointSource(np.zeros((50, 17, 2)), np.zeros((50, 16)), (640, 480), 30)
