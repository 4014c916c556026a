"""A/B of the attention forms an ONNX Runtime CPU export can write (kasf.model.layers.ORT_ATTENTION_FORMS).

Each form is exported from the same weights by export_onnxruntime_cpu (so the other graph changes are the same),
then loaded by kasf's Lifter as users load it and timed one session at a time (an ORT session's thread pool
spins between calls, so sessions alive side by side slow each other): per round, each form gets a fresh session,
warm-up calls, then calls for --seconds; the order of the forms reverses every round so a machine that slows down
mid-run does not favour one form. The tables hold p50 / p95 over all rounds, and each form's largest output
difference from the first form.

    python benchmarks/ort_attention_forms.py --presets demo,kasportsformer --batches 1,4 --threads 1,2 \\
        --out benchmarks/results/ort_attention_forms.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def _model(preset: str) -> torch.nn.Module:
    from kasf.checkpoint import load_checkpoint
    from kasf.model import build

    if preset == "demo":
        return load_checkpoint("demo").eval()
    torch.manual_seed(0)
    return build(preset).eval()


def _label(form: str, batch: int | None) -> str:
    return form if batch is None else f"{form}, batch {batch}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="demo", help="'demo' (the bundled checkpoint) or preset names")
    parser.add_argument("--forms", default="contrib,standard,sdpa")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--threads", default="2", help="intra-op threads per session, e.g. 1,2")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed calls per form and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--static", default="", help="forms also exported with the batch fixed to the timed "
                        "one (ORT then knows every shape: MatMul + bias becomes Gemm), e.g. contrib")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)

    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnxruntime_cpu
    from kasf.export.windows import load_real_windows
    from kasf.hardware import machine_info
    from kasf.runtime import Lifter

    import onnx

    forms = args.forms.split(",")
    static = [f for f in args.static.split(",") if f]
    windows = load_real_windows(27).inputs
    machine = machine_info()
    lines = [f"# ONNX Runtime CPU: attention forms ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Machine: {machine.get('cpu')}; flags {', '.join(machine.get('cpu_flags', []))}; "
             f"onnxruntime {machine.get('onnxruntime')}, torch {torch.__version__}; load average at start "
             f"{os.getloadavg()[0]:.2f}. {args.rounds} rounds x {args.seconds:g} s per form, order reversed every "
             f"round; bundled sample windows as input; command: `python {' '.join(sys.argv)}`.", ""]
    with tempfile.TemporaryDirectory(prefix="kasf-attention-forms-") as tmp:
        for preset in args.presets.split(","):
            model = _model(preset)
            metadata = build_metadata(model.config, preset, "fp32", "decomposed", (1, 8, 64), None)
            nodes: dict[str, int] = {}

            def export(form: str, batch: int | None) -> Path:
                path = Path(tmp) / f"{preset}.{form}.{batch or 'dynamic'}.onnx"
                if not path.exists():
                    export_onnxruntime_cpu(model, path, metadata, batch=batch, attention=form)
                    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
                    nodes[_label(form, batch)] = sum(ops.values())
                    print(f"{preset} {_label(form, batch)}: {sum(ops.values())} nodes, {dict(ops.most_common(6))}",
                          flush=True)
                return path

            rows = []
            for threads in (int(t) for t in args.threads.split(",")):
                for batch in (int(b) for b in args.batches.split(",")):
                    variants = [(f, None) for f in forms] + [(f, batch) for f in static]
                    paths = {v: export(*v) for v in variants}
                    x = np.ascontiguousarray(windows[np.arange(batch) % len(windows)])
                    times: dict[tuple, list[float]] = {v: [] for v in variants}
                    outputs = {}
                    for r in range(args.rounds):
                        for variant in (variants if r % 2 == 0 else variants[::-1]):
                            lifter = Lifter.load(paths[variant], device="cpu", threads=threads)  # as users load it
                            outputs[variant] = lifter.predict(x)
                            for _ in range(5):
                                lifter.predict(x)
                            start = time.perf_counter()
                            while time.perf_counter() - start < args.seconds:
                                t0 = time.perf_counter()
                                lifter.predict(x)
                                times[variant].append(time.perf_counter() - t0)
                            del lifter
                    diff = max(float(np.abs(outputs[v] - outputs[variants[0]]).max()) for v in variants)
                    cells = [f"{1e3 * np.median(times[v]):.2f} / {1e3 * np.percentile(times[v], 95):.2f}"
                             for v in variants]
                    rows.append((threads, batch, [_label(*v) for v in variants], cells, diff))
                    print(rows[-1], flush=True)
            lines += [f"## {preset}", "", "Nodes after export: " + ", ".join(f"{k} {v}" for k, v in nodes.items()),
                      "", "p50 / p95 ms of one call, each variant in its own session:", ""]
            header = None
            for threads, batch, labels, cells, diff in rows:
                columns = [label.replace(f"batch {batch}", "static batch") for label in labels]
                if columns != header:
                    lines += [""] if header else []
                    header = columns
                    lines += ["| threads | batch | " + " | ".join(columns) + " | max output difference |",
                              "|---|---|" + "---|" * (len(columns) + 1)]
                lines.append(f"| {threads} | {batch} | " + " | ".join(cells) + f" | {diff:.1e} |")
            lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
