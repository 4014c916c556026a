"""kasf against a real Triton Inference Server (the nvidia-pytriton wheel's tritonserver, Python backend, CPU).

.ci/run fetches the server into a cache folder ($KASF_TRITON_HOME); without it these tests skip, saying so. Each
server is started on free loopback ports and stopped by a finalizer, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kasf.runtime.lifter import Lifter, LifterError

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (pip install 'kasf[triton]')")
from kasf.runtime.triton_server import LocalTritonServer, TritonServerUnavailable, check_install, free_port  # noqa: E402,E501

try:
    check_install()
except TritonServerUnavailable as err:
    pytest.skip(f"no runnable Triton server: {err}", allow_module_level=True)

MODEL = "kasf"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The demo checkpoint as kasf-export writes it for Triton: ONNX + both repositories, and the PyTorch model."""
    import torch

    from kasf.checkpoint import load_checkpoint, read_checkpoint, resolve_checkpoint_path
    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnx
    from kasf.export.triton import write_repository

    folder = tmp_path_factory.mktemp("triton")
    checkpoint = resolve_checkpoint_path("demo")
    model = load_checkpoint(checkpoint, device="cpu")
    meta = build_metadata(model.config, read_checkpoint(checkpoint).preset, "fp32", "decomposed", (1, 8, 64),
                          str(checkpoint))
    onnx_path = export_onnx(model, folder / "demo.onnx", meta)
    repos = write_repository(folder / "repo", MODEL, onnx_path, model.n_frames, 64, meta)
    torch.set_num_threads(1)
    return {"folder": folder, "onnx": onnx_path, "repo": repos["python"].parent, "model": model}


def start_server(repo: Path, request: pytest.FixtureRequest) -> LocalTritonServer:
    server = LocalTritonServer(repo)
    request.addfinalizer(server.stop)  # registered before start: a half-started server is stopped too
    return server.start()


@pytest.fixture(scope="module")
def server(exported, request) -> LocalTritonServer:
    return start_server(exported["repo"], request)


def test_predictions_match_pytorch_within_export_parity_rules(server, exported):
    from kasf.export.parity import check_parity, pytorch_references
    from kasf.export.windows import load_real_windows

    model = exported["model"]
    reference, reference64 = pytorch_references(model)

    remote = Lifter.load(server.model_url(MODEL))
    assert (remote.backend, remote.n_frames, remote.precision) == ("triton", 27, "fp32")
    assert remote.metadata["skeleton"] == "h36m-17" and remote.metadata["normalization"]
    report = check_parity(reference, remote.predict, remote.metadata["triton_url"], "triton", "fp32", 27,
                          load_real_windows(27), reference64)
    assert report.passed, report.summary()
    local = Lifter.load(exported["onnx"], device="cpu")
    windows = np.random.default_rng(0).uniform(-0.5, 0.5, (70, 27, 17, 3)).astype(np.float32)  # > max batch 64
    np.testing.assert_allclose(remote.predict(windows), local.predict(windows), rtol=0, atol=1e-6)
    http = Lifter.load(server.model_url(MODEL, "http"))
    np.testing.assert_allclose(http.predict(windows[:3]), local.predict(windows[:3]), rtol=0, atol=1e-6)


def test_clear_errors(server, tmp_path):
    with pytest.raises(LifterError, match="is not ready on Triton server .*ready: kasf"):
        Lifter.load(server.model_url("no_such_model"))
    with pytest.raises(LifterError, match=r"unreachable.*refused"):
        Lifter.load(f"triton://127.0.0.1:{free_port()}/kasf")  # nothing listens there
    with pytest.raises(LifterError, match="is not triton://HOST:PORT/MODEL"):
        Lifter.load("triton://127.0.0.1/kasf")
    remote = Lifter.load(server.model_url(MODEL))
    with pytest.raises(LifterError, match="refused the input .*unexpected shape"):
        remote.run(np.zeros((1, 26, 17, 3), np.float32))  # predict itself refuses this before sending
    with pytest.raises(LifterError, match="NaN or infinite"):
        remote.run(np.full((1, 27, 17, 3), np.nan, np.float32))


def _shifted_sample(path: Path, dx: float, loops: int = 1) -> Path:
    """The bundled sample moved sideways by ``dx`` pixels (each stream its own input), optionally looped."""
    from kasf.data.sample import SAMPLE_PATH

    data = dict(np.load(SAMPLE_PATH))
    data["keypoints"] = np.concatenate([data["keypoints"] + np.float32([dx, 0])] * loops)
    data["scores"] = np.concatenate([data["scores"]] * loops)
    np.savez(path, **{k: data[k] for k in ("keypoints", "scores", "image_wh", "fps")})
    return path


FRAMES = 40  # per stream: enough for the batcher to merge streams, short enough for a CPU shared with others


def _stream_cmd(model: str, keypoints: Path, out: Path, frames: int = FRAMES) -> list[str]:
    return [sys.executable, "-m", "kasf.runtime.cli", "--model", model, "--keypoints", str(keypoints),
            "--out", str(out), "--threads", "1", "--max-frames", str(frames)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def _poses(path: Path) -> list[dict]:
    """JSONL poses without the one field that depends on timing."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.pop("latency_ms")
    return rows


def _assert_same_poses(served: list[dict], local: list[dict], what: str) -> None:
    """Every field equal, the 3D within 0.01 mm: the server runs several streams in one batch, and a batched
    matrix product may round differently in the last bit, which can flip the JSONL's third decimal of a mm."""
    assert len(served) == len(local), what
    for got, want in zip(served, local):
        assert {k: v for k, v in got.items() if k != "joints3d"} == {k: v for k, v in want.items() if k != "joints3d"}
        np.testing.assert_allclose(got["joints3d"], want["joints3d"], atol=0.01, rtol=0, err_msg=what)


def _local_poses(onnx: Path, keypoints: Path, out: Path, frames: int = FRAMES) -> list[dict]:
    from kasf.runtime.cli import main as stream_main

    assert stream_main(["--model", str(onnx), "--device", "cpu", "--keypoints", str(keypoints),
                        "--out", str(out), "--threads", "1", "--max-frames", str(frames)]) == 0
    return _poses(out)


def test_four_streams_at_once_get_their_local_poses_and_the_server_batches(server, exported, tmp_path):
    before = server.metrics()
    inputs = [_shifted_sample(tmp_path / f"cam{i}.npz", dx=40.0 * i) for i in range(4)]
    procs = [subprocess.Popen(_stream_cmd(server.model_url(MODEL), kp, tmp_path / f"cam{i}.jsonl"), env=_env(),
                              stderr=subprocess.PIPE, text=True) for i, kp in enumerate(inputs)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    for i, kp in enumerate(inputs):
        local = _local_poses(exported["onnx"], kp, tmp_path / f"local{i}.jsonl")
        assert len(local) == FRAMES
        _assert_same_poses(_poses(tmp_path / f"cam{i}.jsonl"), local, f"stream {i}")
    after = server.metrics()
    requests = after["nv_inference_request_success"] - before.get("nv_inference_request_success", 0)
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0)
    assert requests == 4 * FRAMES
    assert executions < requests, f"no batching: {executions} executions for {requests} requests"


def test_killing_the_server_mid_stream_is_a_clear_error_and_keeps_the_poses(exported, tmp_path, request):
    own = start_server(exported["repo"], request)  # this test kills its server
    keypoints = _shifted_sample(tmp_path / "long.npz", dx=0.0, loops=3)
    out = tmp_path / "remote.jsonl"
    proc = subprocess.Popen(_stream_cmd(own.model_url(MODEL) + "?retries=1&timeout=5", keypoints, out, 3 * 171),
                            env=_env(), stderr=subprocess.PIPE, text=True)
    request.addfinalizer(proc.kill)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 30):
        time.sleep(0.05)
    own.kill()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("kasf-stream: error after") and "unreachable" in last, stderr
    got = _poses(out)
    assert 30 <= len(got) < 3 * 171, "the server should die mid-stream"
    local = _local_poses(exported["onnx"], keypoints, tmp_path / "local.jsonl", len(got))
    _assert_same_poses(got, local[:len(got)], "poses before the crash")  # every one written, in order
    stats_frames = int(last.split("after ")[1].split(" ")[0])
    assert len(got) == stats_frames - 1  # only the frame in flight when the server died is missing
