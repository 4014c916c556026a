"""Training throughput (27-frame clips per second) of each preset on this machine: forward + backward + AdamW.

Not a test. It times full optimizer steps on random windows (the data pipeline is not the bottleneck: a batch is
one fancy index into memory-mapped arrays), in float32 and, where the hardware has it, bfloat16 autocast, and
prints a markdown table (and JSON with --json PATH) with the machine and library versions.

    python benchmarks/train_throughput.py --presets kasportsformer-t motionagformer-t --batch-size 64 --seconds 20
    python benchmarks/train_throughput.py --presets kasportsformer-t --batch-size 32 --threads 1 --precision reduced \
        --compiled-only --attention both --rounds 4 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch

from kasf.hardware import cpu_model
from kasf.model import PRESETS, build, count_parameters
from kasf.training.engine import make_optimizer, resolve_precision
from kasf.training.evaluate import autocast_context
from kasf.training.losses import total_loss


def prepare(preset: str, batch_size: int, precision: str, device: torch.device, compiled: bool = False,
            attention: str = "reference") -> tuple[dict, Callable[[], None]]:
    """A variant's description and its training step (forward, loss, backward, AdamW), warmed up.

    ``compiled``: the forward through torch.compile, as kasf-train's ``compile: true``; the warm-up (the compile)
    is reported apart as ``warmup_s``, since a training run pays it once. ``attention``: kasf-train's
    ``training_attention`` ('native' is kasf::attention_rows; the MLP has no attention and ignores it).
    """
    # The short-budget recipe's layer scale; the MLP has no layer scale.
    is_mlp = PRESETS[preset].get("model_name") == "mlp"
    model = build(preset, **({} if is_mlp else {"layer_scale_init_value": 0.1})).to(device).train()
    if not is_mlp:
        model.set_training_attention(attention)
    forward = torch.compile(model) if compiled else model
    optimizer = make_optimizer(model, 1e-3, 0.01, device)  # the one kasf-train uses
    x = torch.randn(batch_size, model.n_frames, 17, 3, device=device)
    y = torch.randn(batch_size, model.n_frames, 17, 3, device=device)

    def step() -> None:
        with autocast_context(device, precision):
            pred = forward(x)
        loss, _ = total_loss(pred, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    warmup = time.perf_counter()
    for _ in range(2):
        step()
    row = {"preset": preset, "parameters": count_parameters(model), "precision": precision,
           "batch_size": batch_size, "compiled": compiled, "attention": "none" if is_mlp else attention,
           "warmup_s": time.perf_counter() - warmup}
    return row, step


def time_steps(step: Callable[[], None], seconds: float) -> tuple[int, float]:
    """(steps, elapsed seconds): full steps for at least ``seconds`` and at least 3."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 3:
        step()
        steps += 1
    return steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=[p for p in PRESETS if p.endswith(("-t", "-xs", "-s"))])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64], help="one or more batch sizes")
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every variant this many times in turns (the machine's drift hits them alike); "
                             "the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="also measure the torch.compile'd forward")
    parser.add_argument("--compiled-only", action="store_true", help="measure only the torch.compile'd forward")
    parser.add_argument("--precision", choices=("fp32", "reduced", "both"), default="both",
                        help="fp32, the machine's reduced precision (bf16 autocast where supported), or both")
    parser.add_argument("--attention", choices=("reference", "native", "both"), default="reference",
                        help="kasf-train's training_attention: the reference attention, kasf::attention_rows, "
                             "or both")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reduced = resolve_precision("auto", device)
    precisions = {"fp32": ["fp32"], "reduced": [reduced], "both": sorted({"fp32", reduced})}[args.precision]
    attentions = ["reference", "native"] if args.attention == "both" else [args.attention]
    forwards = [True] if args.compiled_only else [False, True] if args.compile else [False]
    variants = [prepare(p, batch, prec, device, compiled, attention)
                for p in args.presets for batch in args.batch_size for prec in precisions
                for compiled in forwards for attention in attentions]
    rates: list[list[float]] = [[] for _ in variants]
    for _ in range(args.rounds):
        for (row, step), measured in zip(variants, rates):
            steps, elapsed = time_steps(step, args.seconds)
            measured.append(steps * row["batch_size"] / elapsed)
    rows = []
    for (row, _), measured in zip(variants, rates):
        median = statistics.median(measured)
        rows.append({**row, "clips_per_second_rounds": measured, "clips_per_second": median,
                     "seconds_per_step": row["batch_size"] / median})
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
               "load_average_1min": os.getloadavg()[0], "rounds": args.rounds}
    print(f"machine: {machine}")
    print("| preset | parameters | precision | batch | forward | attention | warm-up s | s / step | clips / s "
          "(per round) | clips / s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_round = ", ".join(f"{v:.1f}" for v in r["clips_per_second_rounds"])
        print(f"| `{r['preset']}` | {r['parameters']:,} | {r['precision']} | {r['batch_size']} | "
              f"{'compiled' if r['compiled'] else 'eager'} | {r['attention']} | {r['warmup_s']:.1f} | "
              f"{r['seconds_per_step']:.3f} | {per_round} | {r['clips_per_second']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
