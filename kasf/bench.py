"""kasf-bench: lifter latency and throughput per backend x preset x batch, against the eager baseline, in one run.

Every row is timed the same way: warm-up calls, then calls until a minimum time has passed, each call ending
only when its output is on the host (GPU work synchronised). The baseline row - the reference code's eager
PyTorch forward of the same weights - is measured in the same run, so every speed-up is a ratio side by side.
Accuracy beside speed: MPJPE of each backend on the bundled held-out sample (meaningful for trained weights)
and the mean joint distance to the fp32 PyTorch output in mm (meaningful for any weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kasf.cli_errors import report_error, report_interrupt
from kasf.quiet import quiet_third_party

BASELINE = "eager-reference"
BACKENDS = ("eager-reference", "eager-fused", "compile", "compile-cudagraphs", "cudagraph", "cudagraph-fp16",
            "cudagraph-bf16", "bf16", "fp16", "cpu-auto", "native", "native-bf16", "ort-fp32", "ort-int8", "ort-cpu-fp32",
            "ort-cpu-int8", "trt-fp16", "trt-int8", "triton")


@dataclass
class Row:
    backend: str
    preset: str
    batch: int
    precision: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    windows_per_s: float | None = None
    poses_per_s: float | None = None
    speedup: float | None = None
    mpjpe_mm: float | None = None
    delta_vs_fp32_mm: float | None = None
    calls: int = 0
    skipped: str | None = None


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)


def time_calls(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, warmup: int, min_time_s: float,
               min_calls: int = 10) -> np.ndarray:
    """Latencies (ms) of repeated calls; fn must return host data, so GPU work is complete when it returns."""
    for _ in range(warmup):
        fn(x)
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1000


def _runner(backend: str, checkpoint: Path, workdir: Path, device: str, threads: int, triton_url: str | None = None
            ) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A predict function for one backend, and its precision; raises RuntimeError(reason) to skip the row."""
    from kasf.runtime.lifter import Lifter, LifterError

    if backend == "triton":  # the server's model, whatever weights it holds; round trip included
        if not triton_url:
            raise RuntimeError("needs --triton-url triton://HOST:PORT/MODEL (a served kasf-export --format triton)")
        try:
            lifter = Lifter.load(triton_url)
        except LifterError as err:
            raise RuntimeError(str(err)) from None
        return lifter.predict, lifter.precision

    if backend in ("eager-reference", "eager-fused"):
        path = "reference" if backend == "eager-reference" else "fused"
        return Lifter.load(checkpoint, device=device, inference_path=path, cuda_graphs=False).predict, "fp32"
    if backend in ("native", "native-bf16"):  # the whole forward in one C++ call (kasf.model.native_cpu)
        precision = "bf16" if backend == "native-bf16" else "fp32"  # bf16: products on AMX / AVX512-BF16
        try:
            return Lifter.load(checkpoint, device=device, inference_path="native", precision=precision).predict, \
                precision
        except LifterError as err:
            raise RuntimeError(str(err)) from None
    if backend == "compile":
        return Lifter.load(checkpoint, device=device, compile=True).predict, "fp32"
    if backend == "compile-cudagraphs":
        if device != "cuda":
            raise RuntimeError("CUDA graphs need --device cuda")
        return Lifter.load(checkpoint, device=device, compile="reduce-overhead").predict, "fp32"
    if backend.startswith("cudagraph"):
        if device != "cuda":
            raise RuntimeError("CUDA graphs need --device cuda")
        precision = backend.partition("-")[2] or "fp32"
        try:
            return Lifter.load(checkpoint, device=device, precision=precision, cuda_graphs=True).predict, precision
        except LifterError as err:
            raise RuntimeError(str(err)) from None
    if backend == "cpu-auto":  # precision and inference path 'auto': what kasf picks for this CPU (as kasf-stream)
        if device != "cpu":
            raise RuntimeError("precision='auto' chooses among CPU variants: needs --device cpu")
        lifter = Lifter.load(checkpoint, device=device, precision="auto", inference_path="auto")
        return lifter.predict, lifter.precision
    if backend in ("bf16", "fp16"):  # eager; on the CPU bf16 weights converted once, on CUDA autocast
        try:
            return Lifter.load(checkpoint, device=device, precision=backend, cuda_graphs=False).predict, backend
        except LifterError as err:
            raise RuntimeError(str(err)) from None
    if backend.startswith("ort-"):
        onnx_path = onnx_for(checkpoint, workdir, int8=backend.endswith("int8"), cpu_graph="-cpu-" in backend)
        lifter = Lifter.load(onnx_path, device=device, threads=threads)
        return lifter.predict, lifter.precision
    if backend.startswith("trt-"):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise RuntimeError("TensorRT is not installed (needs an NVIDIA GPU: pip install 'kasf[gpu]')") from None
        from kasf.export.cli import main as export_main

        engine = workdir / f"{checkpoint.stem}.{backend}.engine"
        flag = "--half" if backend == "trt-fp16" else "--int8"
        if export_main([str(checkpoint), "--format", "engine", "-o", str(engine), flag, "--device", "cuda"]) not in (0, 3):
            raise RuntimeError("engine build failed")
        lifter = Lifter.load(engine, device="cuda")
        return lifter.predict, lifter.precision
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def onnx_for(checkpoint: Path, workdir: Path, int8: bool, cpu_graph: bool = False, attention: str = "contrib"
             ) -> Path:
    """The portable ONNX export (ort-fp32/int8) or the ORT-CPU one (ort-cpu-*, attention in the given form),
    quantised when int8."""
    from kasf.artefact import build_metadata
    from kasf.checkpoint import load_checkpoint, read_checkpoint
    from kasf.export.onnx_export import export_onnx, export_onnxruntime_cpu, quantize_int8

    stem = f"{checkpoint.stem}.cpu" if cpu_graph else checkpoint.stem
    stem += f".{attention}" if cpu_graph and attention != "contrib" else ""
    fp32 = workdir / f"{stem}.onnx"
    model = load_checkpoint(checkpoint)
    info = read_checkpoint(checkpoint)
    if not fp32.exists():
        metadata = build_metadata(model.config, info.preset, "fp32", "decomposed", (1, 8, 64), None)
        if cpu_graph:
            export_onnxruntime_cpu(model, fp32, metadata, attention=attention)
        else:
            export_onnx(model, fp32, metadata)
    if not int8:
        return fp32
    path = workdir / f"{stem}.int8.onnx"
    if not path.exists():
        quantize_int8(fp32, path, build_metadata(model.config, info.preset, "int8", "decomposed", (1, 8, 64), None))
    return path


def _checkpoint_for(preset: str, trained: dict[str, Path], workdir: Path) -> Path:
    """The trained checkpoint of a preset when given, else the preset with seeded random weights."""
    if preset in trained:
        return trained[preset]
    import kasf
    from kasf.model import build

    torch.manual_seed(0)
    path = workdir / f"{preset}.pt"
    if not path.exists():
        kasf.save_checkpoint(path, build(preset), preset=preset)
    return path


def run(presets: Sequence[str], backends: Sequence[str], batches: Sequence[int], device: str = "cpu",
        threads: int | None = None, warmup: int = 5, min_time_s: float = 3.0, trained: dict[str, Path] | None = None,
        mode: str = "causal", progress: Callable[[str], None] = print, triton_url: str | None = None,
        rounds: int = 1) -> BenchReport:
    """Every backend of a preset is loaded first, then timed in ``rounds`` turns of ``min_time_s / rounds``
    seconds each, backend after backend, and each row pools its turns. Why turns: a shared machine's speed drifts
    (up to ~2x within minutes on the 2-core machine of benchmarks/results), and rows timed one after another
    each catch a different phase; in turns, every row samples the same phases as its baseline."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    from kasf.export.windows import load_real_windows
    from kasf.hardware import machine_info
    from kasf.conventions import to_millimetres

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    new_poses_per_window = 1 if mode == "causal" else 27
    report = BenchReport(machine=machine_info(), settings=dict(
        presets=list(presets), backends=list(backends), batches=list(batches), device=device, threads=threads,
        warmup=warmup, min_time_s=min_time_s, rounds=rounds, mode=mode,
        input="bundled sample windows (held-out CMU subject)",
        trained={k: str(v) for k, v in (trained or {}).items()}, triton_url=triton_url))
    real = load_real_windows(27)
    with tempfile.TemporaryDirectory(prefix="kasf-bench-") as tmp:
        workdir = Path(tmp)
        for preset in presets:
            checkpoint = _checkpoint_for(preset, trained or {}, workdir)
            fp32_mm = None
            loaded: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, float, float | None]] = {}
            skipped: dict[str, str] = {}
            for backend in backends:
                try:
                    fn, precision = _runner(backend, checkpoint, workdir, device, threads, triton_url)
                except RuntimeError as err:
                    skipped[backend] = str(err)
                    progress(f"{preset} {backend}: skipped ({err})")
                    continue
                mm = to_millimetres(fn(real.inputs), real.image_wh, real.factor)
                if backend == BASELINE or fp32_mm is None:
                    fp32_mm = mm if precision == "fp32" else fp32_mm
                mpjpe = float(np.linalg.norm(mm - real.truth_mm, axis=-1).mean())
                delta = float(np.linalg.norm(mm - fp32_mm, axis=-1).mean()) if fp32_mm is not None else None
                loaded[backend] = (fn, precision, mpjpe, delta)
            inputs = {b: np.resize(real.inputs, (b, *real.inputs.shape[1:])).astype(np.float32) for b in batches}
            latencies: dict[tuple[str, int], list[np.ndarray]] = {(b, n): [] for b in loaded for n in batches}
            for turn in range(rounds):
                for backend, (fn, *_rest) in loaded.items():
                    for batch in batches:
                        latencies[(backend, batch)].append(time_calls(
                            fn, inputs[batch], warmup if turn == 0 else 1, min_time_s / rounds,
                            min_calls=max(1, -(-10 // rounds))))
                if rounds > 1:
                    progress(f"{preset}: turn {turn + 1}/{rounds} timed")
            for backend in backends:
                if backend in skipped:
                    report.rows += [Row(backend, preset, b, "-", skipped=skipped[backend]) for b in batches]
                    continue
                _fn, precision, mpjpe, delta = loaded[backend]
                for batch in batches:
                    lat = np.concatenate(latencies[(backend, batch)])
                    row = Row(backend, preset, batch, precision, *(float(np.percentile(lat, q)) for q in (50, 95, 99)),
                              windows_per_s=batch * 1000 / float(np.mean(lat)), mpjpe_mm=mpjpe,
                              delta_vs_fp32_mm=delta, calls=len(lat))
                    row.poses_per_s = row.windows_per_s * new_poses_per_window
                    report.rows.append(row)
                    progress(f"{preset} {backend} b{batch}: p50 {row.p50_ms:.2f} ms, {row.windows_per_s:.1f} windows/s")
    _speedups(report)
    report.machine["load_avg_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return report


def _speedups(report: BenchReport) -> None:
    base = {(r.preset, r.batch): r.windows_per_s for r in report.rows if r.backend == BASELINE and r.windows_per_s}
    for row in report.rows:
        if row.windows_per_s and (row.preset, row.batch) in base:
            row.speedup = row.windows_per_s / base[(row.preset, row.batch)]


def _turns(rounds: int) -> str:
    return f" in {rounds} turns (every backend in turn, each row pooling its turns)" if rounds > 1 else ""


def _load(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def to_markdown(report: BenchReport) -> str:
    m, s = report.machine, report.settings
    lines = [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {s['threads']} threads, "
             f"capability {m['cpu_capability']}, flags {' '.join(m.get('cpu_flags') or []) or '?'}, "
             f"native bf16 {m['cpu_bf16_native']}, GPU {m['gpu'] or 'none'}; "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, TensorRT {m['tensorrt'] or 'not installed'}; "
             f"device {s['device']}, mode {s['mode']}, warm-up {s['warmup']} calls, >= {s['min_time_s']} s per row"
             f"{_turns(s.get('rounds', 1))}; "
             f"1-minute load average {_load(m.get('load_avg_1m'))} at start, {_load(m.get('load_avg_1m_at_end'))} "
             "at end.",
             "",
             "| preset | backend | precision | batch | p50 ms | p95 ms | p99 ms | windows/s | new poses/s | speed-up vs "
             "eager-reference | MPJPE mm (sample) | Δ vs fp32 mm |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in report.rows:
        if r.skipped:
            lines.append(f"| `{r.preset}` | {r.backend} | - | {r.batch} | skipped: {r.skipped} |||||||")
            continue
        lines.append(f"| `{r.preset}` | {r.backend} | {r.precision} | {r.batch} | {f(r.p50_ms, '.2f')} | "
                     f"{f(r.p95_ms, '.2f')} | {f(r.p99_ms, '.2f')} | {f(r.windows_per_s, '.1f')} | "
                     f"{f(r.poses_per_s, '.1f')} | {f(r.speedup, '.2f')}x | {f(r.mpjpe_mm, '.1f')} | "
                     f"{f(r.delta_vs_fp32_mm, '.3f')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kasf-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="kasportsformer-t,kasportsformer",
                        help="comma-separated presets (default: the demo size and the released size)")
    parser.add_argument("--backends", default="eager-reference,eager-fused,bf16,ort-fp32,ort-int8",
                        help=f"comma-separated, from: {', '.join(BACKENDS)}")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="PyTorch and ONNX Runtime intra-op threads")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls per row")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time the backends in this many turns, one after another, each row pooling its turns "
                             "(so a machine whose speed drifts slows every row alike)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PRESET=PATH",
                        help="trained weights for a preset (default: kasportsformer-t=demo)")
    parser.add_argument("--mode", default="causal", choices=("causal", "chunk"),
                        help="streaming mode for new poses/s: causal = 1 new pose per window, chunk = 27")
    parser.add_argument("--triton-url", help="model for the triton backend: triton://HOST:PORT/MODEL")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--verbose", action="store_true",
                        help="let third-party warnings through (TorchScript tracer, ONNX Runtime quantisation)")
    args = parser.parse_args(argv)
    quiet_third_party(args.verbose)
    from kasf.checkpoint import resolve_checkpoint_path

    trained = {"kasportsformer-t": resolve_checkpoint_path("demo")}
    for item in args.checkpoint:
        preset, _, path = item.partition("=")
        if not path:
            parser.error(f"--checkpoint takes PRESET=PATH, got {item!r}")
        trained[preset] = resolve_checkpoint_path(path)
    trained = {k: v for k, v in trained.items() if Path(v).exists()}
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if BASELINE not in backends:
        backends.insert(0, BASELINE)  # every table carries its baseline
    try:
        report = run(args.presets.split(","), backends, [int(b) for b in args.batches.split(",")], args.device,
                     args.threads, args.warmup, args.min_time, trained, args.mode, triton_url=args.triton_url,
                     rounds=args.rounds)
        text = to_markdown(report)
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": report.machine, "settings": report.settings,
                                                   "rows": [asdict(r) for r in report.rows]}, indent=2))
        if args.markdown:
            Path(args.markdown).write_text(text + "\n")
    except KeyboardInterrupt:
        return report_interrupt("kasf-bench", "no report was written")
    except (OSError, ValueError) as err:
        return report_error("kasf-bench", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
