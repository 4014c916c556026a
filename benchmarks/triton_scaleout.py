"""Scale-out: N concurrent camera streams against one Triton server vs one local Lifter per stream.

Each stream sends one causal window (batch 1, one person) at a time, as kasf-stream does, as fast as answers come
back, for ``--seconds``; streams are threads (ONNX Runtime and gRPC release the GIL while they wait). "local" gives
every stream its own ONNX Runtime session (1 intra-op thread each, so N streams use N threads, as N kasf-stream
processes would); "triton" gives every stream its own gRPC connection to one server whose dynamic batcher merges
their windows. Reported per row: windows/s over all streams, p50/p95 latency per window, and for Triton the mean
batch the server ran (requests / executions from its metrics endpoint).

    python benchmarks/triton_scaleout.py                           # local tritonserver (nvidia-pytriton wheel, CPU)
    python benchmarks/triton_scaleout.py --url triton://gpu:8001/kasf --model-onnx kasf-demo.onnx   # any server
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def export_demo(folder: Path, threads: int | None) -> tuple[Path, Path]:
    """The demo checkpoint as ONNX and as a Python-backend Triton repository; returns (onnx, repository)."""
    from kasf.checkpoint import load_checkpoint, read_checkpoint, resolve_checkpoint_path
    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnx
    from kasf.export.triton import write_python_model

    checkpoint = resolve_checkpoint_path("demo")
    model = load_checkpoint(checkpoint, device="cpu")
    meta = build_metadata(model.config, read_checkpoint(checkpoint).preset, "fp32", "decomposed", (1, 8, 64),
                          str(checkpoint))
    onnx_path = export_onnx(model, folder / "kasf-demo.onnx", meta)
    model_dir = write_python_model(folder / "repo", "kasf", onnx_path, model.n_frames, 64, meta, threads=threads)
    return onnx_path, model_dir.parent


def run_streams(predictors: list[Callable[[np.ndarray], np.ndarray]], windows: np.ndarray,
                seconds: float) -> dict[str, float]:
    """Every predictor in its own thread, one window per call, for ``seconds``; totals and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in predictors]
    start_line = threading.Barrier(len(predictors) + 1)
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        predict, lat = predictors[i], latencies[i]
        predict(windows[i % len(windows)][None])  # warm-up
        start_line.wait()
        deadline = time.perf_counter() + seconds
        k = i
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                predict(windows[k % len(windows)][None])
                lat.append((time.perf_counter() - t0) * 1000)
                k += 1
        except BaseException as err:  # reported after the join
            errors.append(err)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(predictors))]
    for t in threads:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    every = np.concatenate([np.asarray(lat) for lat in latencies])
    return {"windows": int(every.size), "wall_s": wall, "windows_per_s": every.size / wall,
            "p50_ms": float(np.percentile(every, 50)), "p95_ms": float(np.percentile(every, 95))}


def _counters(metrics_url: str | None) -> tuple[float, float] | None:
    if not metrics_url:
        return None
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    totals = {"nv_inference_request_success": 0.0, "nv_inference_exec_count": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["nv_inference_request_success"], totals["nv_inference_exec_count"]


def benchmark(onnx: Path, url: str, metrics_url: str | None, streams: list[int], seconds: float
              ) -> list[dict[str, Any]]:
    from kasf.export.windows import load_real_windows
    from kasf.runtime.lifter import Lifter

    windows = load_real_windows(27).inputs.astype(np.float32)
    rows = []
    for n in streams:
        local = [Lifter.load(onnx, device="cpu", threads=1).predict for _ in range(n)]
        rows.append({"streams": n, "backend": "local Lifter per stream", **run_streams(local, windows, seconds)})
        print(rows[-1], flush=True)
        remote = [Lifter.load(url).predict for _ in range(n)]
        before = _counters(metrics_url)
        row = {"streams": n, "backend": "one Triton server", **run_streams(remote, windows, seconds)}
        after = _counters(metrics_url)
        if before and after and after[1] > before[1]:
            row["mean_server_batch"] = (after[0] - before[0]) / (after[1] - before[1])
        rows.append(row)
        print(rows[-1], flush=True)
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs (shared with other jobs while this ran), GPU "
             f"{m['gpu'] or 'none'}; Python {m['python']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, "
             f"tritonserver {s['tritonserver']} (Python backend, kasf's Lifter on ONNX Runtime CPU, "
             f"{s['server_threads'] or 'default'} intra-op threads, 1 instance), tritonclient {s['tritonclient']} "
             f"(gRPC); model {s['model']} ({s['precision']}), dynamic batching max batch {s['max_batch']}, max "
             f"queue delay {s['max_queue_delay_us']} us; {s['seconds']:g} s per row, one window (batch 1) per "
             "request per stream, local streams 1 ORT thread each.",
             "",
             "| streams | backend | windows/s (all streams) | p50 ms / window | p95 ms / window | mean server batch |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        batch = f"{r['mean_server_batch']:.2f}" if "mean_server_batch" in r else "-"
        lines.append(f"| {r['streams']} | {r['backend']} | {r['windows_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {batch} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,4,16")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per row")
    p.add_argument("--url", help="an already running server's model (default: start the local tritonserver)")
    p.add_argument("--metrics", help="its metrics URL, e.g. http://gpu:8002/metrics (for the mean batch)")
    p.add_argument("--model-onnx", help="the ONNX that server serves, for the local rows (with --url)")
    p.add_argument("--server-threads", type=int, help="ONNX Runtime threads of the local server's model")
    p.add_argument("--out", default=str(RESULTS / "triton_scaleout_cpu"), help="results: OUT.json and OUT.md")
    args = p.parse_args(argv)
    from importlib.metadata import version

    from kasf.export.triton import MAX_QUEUE_DELAY_US
    from kasf.hardware import machine_info

    streams = [int(n) for n in args.streams.split(",")]
    settings = {"streams": streams, "seconds": args.seconds, "model": "demo (kasportsformer-t)", "precision": "fp32",
                "max_batch": 64, "max_queue_delay_us": MAX_QUEUE_DELAY_US, "server_threads": args.server_threads,
                "tritonclient": version("tritonclient")}
    with tempfile.TemporaryDirectory(prefix="kasf-scaleout-") as tmp:
        if args.url:
            if not args.model_onnx:
                p.error("--url needs --model-onnx (the served model, for the local rows)")
            onnx, url, metrics = Path(args.model_onnx), args.url, args.metrics
            settings.update(tritonserver="remote", model=onnx.name)
            rows = benchmark(onnx, url, metrics, streams, args.seconds)
        else:
            from kasf.runtime.triton_server import LocalTritonServer

            onnx, repo = export_demo(Path(tmp), args.server_threads)
            with LocalTritonServer(repo) as server:
                import tritonclient.grpc as grpcclient

                meta = grpcclient.InferenceServerClient(server.grpc_url).get_server_metadata(as_json=True)
                settings["tritonserver"] = meta["version"]
                rows = benchmark(onnx, server.model_url("kasf"), f"http://127.0.0.1:{server.metrics_port}/metrics",
                                 streams, args.seconds)
    report = {"machine": machine_info(), "settings": settings, "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    Path(args.out + ".md").write_text(to_markdown(report) + "\n")
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
