"""The Triton lifter's address parsing and its error for a server that is not there (no server needed)."""

from __future__ import annotations

import pytest

from kasf.runtime.lifter import Lifter, LifterError, backend_for
from kasf.runtime.triton_client import parse_triton_url


def test_addresses():
    grpc = parse_triton_url("triton://gpu-box:8001/kasf?timeout=2.5&retries=4")
    assert (grpc.protocol, grpc.host_port, grpc.model, grpc.timeout_s, grpc.retries) == ("grpc", "gpu-box:8001",
                                                                                         "kasf", 2.5, 4)
    assert parse_triton_url("triton+http://10.0.0.2:8000/lifter").protocol == "http"
    assert backend_for("triton://h:1/m") == "triton" and backend_for("model.onnx") == "onnxruntime"


@pytest.mark.parametrize("url,message", [
    ("triton://gpu-box/kasf", "is not triton://HOST:PORT/MODEL"),
    ("triton://gpu-box:8001/", "is not triton://HOST:PORT/MODEL"),
    ("triton://gpu-box:8001/kasf?timeout=soon", "timeout takes seconds"),
    ("triton://gpu-box:8001/kasf?retry=1", "unknown option 'retry'"),
])
def test_bad_addresses_are_one_clear_error(url, message):
    with pytest.raises(LifterError, match=message):
        Lifter.load(url)


@pytest.mark.parametrize("scheme", ["triton", "triton+http"])
def test_server_down_is_one_clear_error(scheme):
    pytest.importorskip("tritonclient.grpc" if scheme == "triton" else "tritonclient.http")
    from kasf.runtime.triton_server import free_port

    with pytest.raises(LifterError, match=r"Triton server 127\.0\.0\.1:\d+ \((grpc|http)\) is unreachable"):
        Lifter.load(f"{scheme}://127.0.0.1:{free_port()}/kasf?timeout=2")
    with pytest.raises(LifterError, match="runs where its server's config puts it"):
        Lifter.load(f"{scheme}://127.0.0.1:{free_port()}/kasf", device="cpu")
