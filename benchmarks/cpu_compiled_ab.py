"""A/B on the CPU: ONNX Runtime graphs against an AOTInductor package (torch's ahead-of-time compiler), demo size.

Question asked (issue 14): would a compiled artefact, with weights frozen into the code and inductor's fused C++
kernels, reach what the ONNX Runtime graph does not (kasportsformer-t p95 <= 4 ms)? Candidates, all from the same
weights: eager PyTorch (the baseline), the ONNX Runtime CPU export in its two attention forms, and an AOTInductor
package (``torch._inductor.aoti_compile_and_package`` with ``freezing`` and ``cpp_wrapper``; optionally
``max_autotune``, which times inductor's C++ GEMM templates against oneDNN). Every candidate is checked against
eager at each batch size before it is timed (a package compiled for a dynamic batch once mis-specialised a shape:
a wrong answer must not become a fast row). Timing: one candidate alive at a time, warm-up calls, then calls for
--seconds; the order reverses every round; p50 / p95 over all rounds.

    python benchmarks/cpu_compiled_ab.py --batches 1,4 --threads 1,2 --out benchmarks/results/cpu_compiled_ab.md

The package is compiled for this machine's instruction set (minutes, once; --cache keeps it for reruns of the same
weights).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

Runner = Callable[[np.ndarray], np.ndarray]


def _aoti_package(model: torch.nn.Module, path: Path, autotune: bool) -> float:
    """Compile once (seconds spent returned); the model runs one no-grad forward first so that its inference
    caches (the packed limb weights) are what the export sees, as in ONNX export."""
    example = torch.zeros(2, model.n_frames, 17, 3)  # batch 2: a batch of 1 would be specialised to a constant
    with torch.no_grad():
        model(example)
        start = time.perf_counter()
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
        options = {"freezing": True, "cpp_wrapper": True, "max_autotune": autotune}
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    return time.perf_counter() - start


def _runner(name: str, model: torch.nn.Module, files: dict[str, Path], threads: int) -> Runner:
    torch.set_num_threads(threads)
    if name == "eager":
        def eager(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return eager
    if name.startswith("ort-"):
        from kasf.runtime import Lifter

        return Lifter.load(files[name], device="cpu", threads=threads).predict
    package = torch._inductor.aoti_load_package(str(files[name]))

    def compiled(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return package(torch.from_numpy(x)).numpy()
    return compiled


def _time(run: Runner, x: np.ndarray, seconds: float) -> np.ndarray:
    for _ in range(5):
        run(x)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--autotune", action="store_true", help="also a package compiled with max_autotune")
    parser.add_argument("--cache", type=Path, help="folder for the exported files (reused when present)")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)

    from kasf.artefact import build_metadata
    from kasf.checkpoint import load_checkpoint, resolve_checkpoint_path
    from kasf.export.onnx_export import export_onnxruntime_cpu
    from kasf.export.windows import load_real_windows
    from kasf.hardware import machine_info

    model = load_checkpoint("demo").eval()
    # Cached files are named after the checkpoint's bytes: new demo weights never reuse another model's export.
    weights = hashlib.sha256(resolve_checkpoint_path("demo").read_bytes()).hexdigest()[:12]
    folder = args.cache or Path(tempfile.mkdtemp(prefix="kasf-ab-"))
    folder.mkdir(parents=True, exist_ok=True)
    meta = build_metadata(model.config, "kasportsformer-t", "fp32", "decomposed", (1, 8, 64), "demo")
    files: dict[str, Path] = {}
    compile_s: dict[str, float] = {}
    for form in ("contrib", "standard"):
        files[f"ort-{form}"] = folder / f"demo-{weights}.{form}.onnx"
        if not files[f"ort-{form}"].exists():
            export_onnxruntime_cpu(model, files[f"ort-{form}"], meta, attention=form)
    for name, autotune in (("aoti", False), ("aoti-autotune", True)):
        if name == "aoti-autotune" and not args.autotune:
            continue
        files[name] = folder / f"demo-{weights}.{name}.pt2"
        if not files[name].exists():
            compile_s[name] = _aoti_package(model, files[name], autotune)
            print(f"compiled {name} in {compile_s[name]:.0f} s", flush=True)
    names = ["eager", *files]
    batches = [int(v) for v in args.batches.split(",")]
    thread_counts = [int(v) for v in args.threads.split(",")]
    real = load_real_windows(model.n_frames).inputs.astype(np.float32)
    times: dict[tuple[int, int, str], list[np.ndarray]] = {}
    worst: dict[str, float] = {}
    load_start = os.getloadavg()[0]
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for threads in thread_counts:
            for batch in batches:
                x = np.ascontiguousarray(real[:batch])
                with torch.inference_mode():
                    expected = model(torch.from_numpy(x)).numpy()
                for name in order:
                    run = _runner(name, model, files, threads)
                    diff = float(np.abs(run(x) - expected).max())
                    worst[name] = max(worst.get(name, 0.0), diff)
                    if diff > 1e-3:
                        print(f"{name} at batch {batch} differs from eager by {diff:.3g}: not timed", file=sys.stderr)
                        return 1
                    times.setdefault((threads, batch, name), []).append(_time(run, x, args.seconds))
                    del run
    load_end = os.getloadavg()[0]
    info = machine_info()
    compiled = ", ".join(f"{k} {v:.0f} s" for k, v in compile_s.items()) or "none (packages reused from --cache)"
    lines = [
        "# CPU: ONNX Runtime graphs against an AOTInductor package, demo checkpoint "
        f"({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, flags {' '.join(info['cpu_flags'])}; "
        f"torch {torch.__version__}, onnxruntime {info.get('onnxruntime')}; {args.rounds} rounds x "
        f"{args.seconds:g} s per candidate, order reversed every round; bundled sample windows; 1-minute load "
        f"average {load_start:.2f} at start, {load_end:.2f} at end. Packages compiled in this run: {compiled}. "
        "Largest output difference from eager: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + ".",
        "",
        "p50 / p95 ms of one call:",
        "",
        "| threads | batch | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for threads in thread_counts:
        for batch in batches:
            cells = []
            for name in names:
                all_times = np.concatenate(times[(threads, batch, name)])
                cells.append(f"{np.percentile(all_times, 50):.2f} / {np.percentile(all_times, 95):.2f}")
            lines.append(f"| {threads} | {batch} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
