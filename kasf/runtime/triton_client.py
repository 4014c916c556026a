"""A lifter on a Triton Inference Server: ``Lifter.load("triton://HOST:PORT/MODEL")``, same ``predict`` as local.

One server batches the windows of many streams (its dynamic batcher), so many cameras share one GPU. Addresses::

    triton://HOST:PORT/MODEL          gRPC (Triton's port 8001), the default
    triton+http://HOST:PORT/MODEL     HTTP/REST (port 8000)
    ...?timeout=10&retries=2          per-request timeout in seconds; reconnect attempts after a lost connection

The model's kasf metadata (n_frames, skeleton, normalisation, precision) comes from the ``kasf_*`` parameters of
its config on the server (written by ``kasf-export --format triton``), so a client needs nothing but the address.
Failures are one line each: server unreachable, model not ready, input refused, request timed out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

import numpy as np

from kasf.artefact import INPUT_NAME, OUTPUT_NAME, parse_metadata
from kasf.runtime.errors import LifterError

PROTOCOLS = {"triton": "grpc", "triton+grpc": "grpc", "triton+http": "http"}
PARAMETER_PREFIX = "kasf_"  # config.pbtxt parameters that carry kasf's metadata
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 2
RECONNECT_BACKOFF_S = 0.5


class TritonLifterError(LifterError):
    """The server or the model cannot serve the request; the message is one line saying which and why."""


def is_triton_url(path: object) -> bool:
    return str(path).split("://", 1)[0] in PROTOCOLS and "://" in str(path)


@dataclass(frozen=True)
class TritonAddress:
    protocol: str  # grpc | http
    host_port: str
    model: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES

    def __str__(self) -> str:
        scheme = "triton" if self.protocol == "grpc" else "triton+http"
        return f"{scheme}://{self.host_port}/{self.model}"


def parse_triton_url(url: str) -> TritonAddress:
    """``triton[+http]://HOST:PORT/MODEL[?timeout=S&retries=N]``; raises ValueError with the expected form."""
    form = "triton://HOST:PORT/MODEL (gRPC) or triton+http://HOST:PORT/MODEL, optionally ?timeout=S&retries=N"
    parts = urlsplit(url)
    model = parts.path.strip("/")
    if parts.scheme not in PROTOCOLS or not parts.hostname or not parts.port or not model or "/" in model:
        raise ValueError(f"Triton address {url!r} is not {form}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"timeout", "retries"}
    if unknown:
        raise ValueError(f"Triton address {url!r}: unknown option {sorted(unknown)[0]!r} (timeout, retries)")
    try:
        timeout_s = float(query.get("timeout", DEFAULT_TIMEOUT_S))
        retries = int(query.get("retries", DEFAULT_RETRIES))
    except ValueError:
        raise ValueError(f"Triton address {url!r}: timeout takes seconds, retries a count") from None
    if timeout_s <= 0 or retries < 0:
        raise ValueError(f"Triton address {url!r}: timeout must be > 0 and retries >= 0")
    return TritonAddress(PROTOCOLS[parts.scheme], parts.netloc, model, timeout_s, retries)


def metadata_from_parameters(parameters: Mapping[str, Any]) -> dict[str, str]:
    """kasf metadata from a model config's parameters (JSON form: ``{key: {"string_value": value}}``)."""
    return {key[len(PARAMETER_PREFIX):]: (value["string_value"] if isinstance(value, Mapping) else str(value))
            for key, value in parameters.items() if key.startswith(PARAMETER_PREFIX)}


def _import_client(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError:
        raise TritonLifterError(f"tritonclient[{protocol}] is not installed: pip install "
                                f"'tritonclient[{protocol}]' (or 'kasf[triton]')") from None
    return client


class TritonSession:
    """One client connection to one model; sends windows, reconnects (``retries`` times) when the link drops."""

    def __init__(self, address: TritonAddress) -> None:
        self.address = address
        self.module = _import_client(address.protocol)
        self.client: Any = None
        self.connect()

    def connect(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # a dead connection may fail to close; it is dropped either way
                pass
        if self.address.protocol == "grpc":
            self.client = self.module.InferenceServerClient(self.address.host_port)
        else:
            self.client = self.module.InferenceServerClient(self.address.host_port,
                                                            connection_timeout=self.address.timeout_s,
                                                            network_timeout=self.address.timeout_s)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A client method with the timeout applied; errors become one TritonLifterError line."""
        if self.address.protocol == "grpc":
            kwargs["client_timeout"] = self.address.timeout_s
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:
            raise _explain(err, self.address) from None

    def infer(self, windows: np.ndarray) -> np.ndarray:
        m = self.module
        attempt = 0
        while True:
            request = m.InferInput(INPUT_NAME, list(windows.shape), "FP32")
            request.set_data_from_numpy(windows)
            try:
                result = self.call("infer", self.address.model, [request],
                                   outputs=[m.InferRequestedOutput(OUTPUT_NAME)])
                return result.as_numpy(OUTPUT_NAME).astype(np.float32, copy=False)
            except _Unreachable as err:
                if attempt >= self.address.retries:
                    raise TritonLifterError(f"{err} (gave up after {attempt} reconnect attempts)") from None
                attempt += 1
                time.sleep(RECONNECT_BACKOFF_S * attempt)
                self.connect()


class _Unreachable(TritonLifterError):
    """The connection failed (server down, restarting, network): worth a reconnect."""


def _explain(err: Exception, address: TritonAddress) -> TritonLifterError:
    status = str(getattr(err, "status", lambda: "")() or "")
    message = err.message() if callable(getattr(err, "message", None)) else str(err)
    message = " ".join(str(message or type(err).__name__).split()).split(" NOTE: ")[0]  # Triton appends advice
    where = f"Triton server {address.host_port} ({address.protocol})"
    if "DEADLINE_EXCEEDED" in status or "timed out" in message.lower() or isinstance(err, TimeoutError):
        return TritonLifterError(f"{where}: no answer within {address.timeout_s:g} s (raise ?timeout=S in the "
                                 "address, or check the server's load)")
    if ("UNAVAILABLE" in status or isinstance(err, OSError) or "failed to connect" in message.lower()
            or "connection" in message.lower()):
        return _Unreachable(f"{where} is unreachable: {message}")
    if "INVALID_ARG" in status or status == "400":
        return TritonLifterError(f"{where} refused the input for model {address.model!r}: {message}")
    return TritonLifterError(f"{where}, model {address.model!r}: {message}")


def load_triton(url: str, precision: str | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any],
                                                                  int | None]:
    """Connect, check the model is ready and takes kasf windows; returns (run, metadata, max batch).

    The caller (``Lifter.load``) wraps these in a Lifter, so remote and local lifters share one ``predict``.
    """
    address = parse_triton_url(url)
    session = TritonSession(address)
    if not session.call("is_server_live"):
        raise TritonLifterError(f"Triton server {address.host_port} answers but is not live")
    if not session.call("is_model_ready", address.model):
        index = session.call("get_model_repository_index", **({"as_json": True} if address.protocol == "grpc"
                                                                 else {}))
        models = index.get("models", []) if isinstance(index, dict) else index
        ready = sorted(m["name"] for m in models if m.get("state") == "READY")
        raise TritonLifterError(f"model {address.model!r} is not ready on Triton server {address.host_port} "
                                f"(ready: {', '.join(ready) or 'none'})")
    config = session.call("get_model_config", address.model, **({"as_json": True} if address.protocol == "grpc"
                                                                  else {}))
    config = config.get("config", config)
    try:
        meta = parse_metadata(metadata_from_parameters(config.get("parameters", {})))
    except ValueError as err:
        raise TritonLifterError(f"{address}: {err}") from None
    inputs = {i["name"]: [int(d) for d in i["dims"]] for i in config.get("input", [])}
    expected = [meta["n_frames"], 17, 3]
    if inputs.get(INPUT_NAME) != expected:
        raise TritonLifterError(f"{address}: the model's input is {inputs}; kasf sends {INPUT_NAME} of "
                                f"(batch, {', '.join(map(str, expected))})")
    if precision and precision != meta["precision"]:
        raise TritonLifterError(f"{address} serves a {meta['precision']} model, not {precision}")
    meta["triton_url"] = str(address)
    max_batch = int(config.get("max_batch_size") or 0) or None
    return session.infer, meta, max_batch
