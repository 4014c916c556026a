"""Streaming benchmark: the kasf-stream pipeline fed from a keypoint stream as fast as it can go.

Measures, in one run: new poses per second and per-stage latency (p50/p95/p99) for 1 and for 4 people in causal
mode, and resident memory at the start and end of a long run (does it grow per frame or per track?). The input
is the bundled sample (1 person) and four shifted copies of it with people entering and leaving (4 people).
Timings are host wall-clock around synchronous calls (the CPU lifter returns numpy arrays, so every call has
finished when it returns).

    python benchmarks/stream_bench.py --model demo --threads 1 --seconds 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from kasf.hardware import cpu_flags, cpu_model


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc; MB)."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def people_stream(frames: int, people: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[int, int], float]:
    """(F, P, 17, 2) keypoints and (F, P, 17) scores: the sample looped, each person shifted sideways; from the
    second person on, each leaves for 40 frames every 400 (tracks dropped and new ones made)."""
    from kasf.data.sample import load_sample

    sample = load_sample()
    reps = -(-frames // len(sample.keypoints))
    base_k = np.concatenate([sample.keypoints] * reps)[:frames]
    base_s = np.concatenate([sample.scores] * reps)[:frames]
    width = sample.image_wh[0]
    k = np.stack([base_k + [(p - (people - 1) / 2) * width / (people + 1), 0] for p in range(people)], axis=1)
    s = np.stack([base_s] * people, axis=1).copy()
    for p in range(1, people):
        for start in range(100 * p, frames, 400):
            s[start:start + 40, p] = 0
    return k.astype(np.float32), s.astype(np.float32), sample.image_wh, sample.fps


def one_run(lifter: Any, people: int, frames: int, mode: str = "causal") -> dict[str, Any]:
    from kasf.runtime.sources import KeypointSource
    from kasf.runtime.stream import Pipeline, run

    k, s, wh, fps = people_stream(frames, people)
    source = KeypointSource(k, s, wh, fps)
    pipeline = Pipeline(lifter, wh, mode=mode)
    start = time.perf_counter()
    result = run(source, pipeline)
    wall = time.perf_counter() - start
    summary = result.stats.summary()
    return {"people": people, "frames": frames, "mode": mode, "poses_out": summary["poses_out"],
            "poses_per_s": summary["poses_out"] / wall, "frames_per_s": frames / wall,
            "lift_calls": summary["lift_calls"], "stages": summary["stages"]}


def table(paths: list[str]) -> str:
    """One markdown table of several runs' JSON files (stream_cpu.md), with each run's machine and load."""
    rows = ["| model | backend, precision | people | new poses/s | frames/s | lift p50 ms | lift p95 ms | load 1m "
            "start → end |", "|---|---|---|---|---|---|---|---|"]
    machines, notes = set(), []
    for path in paths:
        with open(path) as fh:
            r = json.load(fh)
        m = r["machine"]
        machines.add(f"{m['cpu']}, {m['cores']} logical CPUs, {m['torch_threads']} threads"
                     + (f", flags {' '.join(m['cpu_flags'])}" if m.get("cpu_flags") else ""))
        load = f"{m['load_avg_1m_at_start']:.2f} → {r['load_avg_1m_at_end']:.2f}"
        for run in r["runs"]:
            lift = run["stages"]["lift"]
            workers = f", {r['workers']} sessions" if r.get("workers", 1) > 1 else ""
            path = f" {r['inference_path']}" if r.get("inference_path") not in (None, "reference") else ""
            backend = f"{r.get('backend', '?')}{path}, {r.get('precision', '?')}{workers}"
            rows.append(f"| `{os.path.basename(r['model'])}` | {backend} | "
                        f"{run['people']} | {run['poses_per_s']:.1f} | {run['frames_per_s']:.1f} | {lift['p50_ms']:.2f} | "
                        f"{lift['p95_ms']:.2f} | {load} |")
        if "memory" in r:
            mem = r["memory"]
            notes.append(f"Resident memory with `{os.path.basename(r['model'])}` over a {mem['seconds']:.0f} s stream "
                         f"({mem['frames']} frames, {mem['tracks_made']} tracks made and dropped): "
                         f"{mem['rss_mb'][0][2]} -> {mem['rss_mb'][-1][2]} MB.")
    head = (f"kasf-stream fed from the bundled keypoint sample as fast as it goes (causal mode, one batched lift per "
            f"frame for all people), `python benchmarks/stream_bench.py`; machine: {'; '.join(sorted(machines))}. "
            f"JSON beside this file.")
    return "\n\n".join([head, "\n".join(rows), *notes])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--threads", type=int, default=1, help="PyTorch and ONNX Runtime intra-op threads")
    p.add_argument("--precision", help="as Lifter.load takes it: fp32, bf16, auto (checkpoints on the CPU)")
    p.add_argument("--inference-path", default="reference", choices=("reference", "fused", "native", "auto"),
                   help="for a checkpoint: which forward (kasf-stream's default is auto)")
    p.add_argument("--workers", type=int, default=1,
                   help="ONNX Runtime: split each frame's batch over this many single-threaded sessions")
    p.add_argument("--frames", type=int, default=600, help="frames per throughput run")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the memory run (0 skips it)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of these results and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return {}
    import torch

    torch.set_num_threads(args.threads)
    from kasf.runtime.lifter import Lifter

    lifter = Lifter.load(args.model, device="cpu", precision=args.precision, threads=args.threads,
                         workers=args.workers, inference_path=args.inference_path)
    lifter.predict(np.zeros((4, lifter.n_frames, 17, 3), np.float32))  # warm-up
    results: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
                    "torch_threads": torch.get_num_threads(), "load_avg_1m_at_start": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "onnxruntime": _version("onnxruntime")},
        "model": args.model, "preset": lifter.metadata.get("preset"), "backend": lifter.backend,
        "precision": lifter.precision, "choice": lifter.choice, "workers": args.workers,
        "inference_path": lifter.metadata.get("inference_path"), "runs": []}
    for people in (1, 4):
        results["runs"].append(one_run(lifter, people, args.frames))
        r = results["runs"][-1]
        print(f"{people} people: {r['poses_per_s']:.1f} poses/s, {r['frames_per_s']:.1f} frames/s, lift p50 "
              f"{r['stages']['lift']['p50_ms']:.2f} ms p95 {r['stages']['lift']['p95_ms']:.2f} ms", flush=True)
    if args.seconds > 0:
        from kasf.runtime.sources import KeypointSource
        from kasf.runtime.stream import Pipeline

        k, s, wh, fps = people_stream(2000, 4)
        pipeline = Pipeline(lifter, wh)
        marks = [(0.0, 0, round(rss_mb(), 1))]
        start = time.perf_counter()
        frames = 0
        while time.perf_counter() - start < args.seconds:
            source = KeypointSource(k, s, wh, fps)
            # one long stream: the same pipeline (tracks, rings, stats) carries on over every pass
            for frame in source:
                frame.index = frames
                frames += 1
                pipeline.step(frame)
                if frames % 100 == 0:
                    marks.append((round(time.perf_counter() - start, 1), frames, round(rss_mb(), 1)))
                if time.perf_counter() - start >= args.seconds:
                    break
        results["memory"] = {"seconds": args.seconds, "frames": frames, "rss_mb": marks,
                             "tracks_made": pipeline.tracker.next_id}
        print(f"memory: {marks[0]} -> {marks[-1]} "
              f"(t s, frames, RSS MB); {pipeline.tracker.next_id} tracks made", flush=True)
    results["load_avg_1m_at_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
