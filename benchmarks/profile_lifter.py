"""Where the time of one forward goes: PyTorch profiler table (self CPU time per op) for a preset at batch 1.

    python benchmarks/profile_lifter.py --preset kasportsformer --out benchmarks/results/cpu_profile_full.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kasf.hardware import machine_info
from kasf.model import build


def profile(preset: str, path: str, batch: int, runs: int) -> str:
    torch.manual_seed(0)
    model = build(preset).eval().set_inference_path(path)
    x = torch.randn(batch, 27, 17, 3)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    info = machine_info()
    lines = [f"`{preset}`, {path} formulation, batch {batch}, {runs} forwards; {info['cpu']}, "
             f"{info['torch_threads']} threads, torch {info['torch']}. Self CPU time per op:", "",
             "| op | calls per forward | self ms per forward | share |", "|---|---|---|---|"]
    for e in events[:12]:
        lines.append(f"| {e.key} | {e.count // runs} | {e.self_cpu_time_total / runs / 1000:.2f} | "
                     f"{100 * e.self_cpu_time_total / total:.1f} % |")
    lines.append(f"| all ops | | {total / runs / 1000:.2f} | 100 % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kasportsformer")
    parser.add_argument("--path", default="reference", choices=("reference", "fused"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    text = profile(args.preset, args.path, args.batch, args.runs)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
