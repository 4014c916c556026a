"""Does watching slow the stream? kasf-stream's poses/s with and without ``--serve`` and viewers attached.

Each run is ``kasf-stream --max-frames N --stats FILE`` on the bundled sample (looped, as fast as it goes);
poses/s = poses_out / wall_s from its --stats file. With ``--serve``, 4 viewers read /events all along and a fifth
stops reading for 10 s (a frozen browser tab) then reads again. The viewers run in this process, on the same
machine: a harder case than viewers on other machines. Runs alternate (plain, served, plain, ...) so a change
in the machine's load hits both alike.

    python benchmarks/serve_load.py --frames 600 --repeats 2 --json benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit

from kasf.hardware import cpu_model

REPO = Path(__file__).resolve().parents[1]
STALL_S = 10.0


def viewer(host: str, port: int, path: str, stop: threading.Event, received: list[int], stall_after_s: float | None,
           stall_s: float = STALL_S) -> None:
    """Read /events until ``stop``; with ``stall_after_s``, stop reading for ``stall_s`` after that long."""
    sock = socket.socket()
    if stall_after_s is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so that the server really blocks on it
    sock.connect((host, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    sock.settimeout(0.5)
    start, stalled = time.perf_counter(), False
    try:
        while not stop.is_set():
            if stall_after_s is not None and not stalled and time.perf_counter() - start > stall_after_s:
                stalled = True
                stop.wait(stall_s)
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not data:
                return
            received[0] += len(data)
    finally:
        sock.close()


def one_run(frames: int, serve: bool, model: str, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        cmd = [sys.executable, "-m", "kasf.runtime.cli", "--loop", "--max-frames", str(frames), "--model", model,
               "--threads", str(threads), "--stats", str(stats)]
        if serve:
            cmd += ["--serve", "127.0.0.1:0"]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = Path(tmp) / "stderr.txt"
        stop, workers, counts = threading.Event(), [], []
        with log.open("w") as err:
            proc = subprocess.Popen(cmd, stderr=err, env=env, cwd=REPO)
        try:
            if serve:
                while not (match := re.search(r"live view at (\S+)", log.read_text())):
                    if proc.poll() is not None:
                        raise RuntimeError(f"kasf-stream failed: {log.read_text()}")
                    time.sleep(0.05)
                url = urlsplit(match.group(1))
                for i in range(5):
                    counts.append([0])
                    workers.append(threading.Thread(target=viewer, daemon=True, args=(
                        url.hostname, url.port, "/events", stop, counts[-1], 2.0 if i == 4 else None)))
                    workers[-1].start()
            if proc.wait() != 0:
                raise RuntimeError(f"kasf-stream failed: {log.read_text()}")
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
        summary = json.loads(stats.read_text())
    return {"serve": serve, "frames_in": summary["frames_in"], "poses_out": summary["poses_out"],
            "wall_s": round(summary["wall_s"], 2), "poses_per_s": round(summary["poses_out"] / summary["wall_s"], 2),
            "lift_p50_ms": round(summary["stages"]["lift"]["p50_ms"], 2),
            "output_p95_ms": round(summary["stages"]["output"]["p95_ms"], 3),
            "viewer_bytes": [c[0] for c in counts]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="demo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the runs and the summary here")
    args = p.parse_args()
    runs = []
    for _ in range(args.repeats):
        for serve in (False, True):
            runs.append(one_run(args.frames, serve, args.model, args.threads))
            print(json.dumps(runs[-1]), flush=True)
    plain = median(r["poses_per_s"] for r in runs if not r["serve"])
    served = median(r["poses_per_s"] for r in runs if r["serve"])
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                          "python": platform.python_version()},
              "frames": args.frames, "model": args.model, "threads": args.threads, "viewers": "4 reading + 1 stalled "
              f"{STALL_S:.0f} s", "runs": runs, "median_poses_per_s": {"plain": plain, "served": served},
              "change_pct": round(100 * (served - plain) / plain, 1)}
    print(json.dumps({k: result[k] for k in ("machine", "median_poses_per_s", "change_pct")}))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
