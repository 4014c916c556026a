"""Samples per second of kasf-train itself (data path, step, logging; validation excluded), variants side by side.

Not a test. Each variant is a list of config overrides on one YAML (default: the demo recipe); every round runs
each variant's real training loop (:func:`kasf.training.engine.train`; a ``processes=N`` variant runs kasf-train
under torch.distributed.run, DDP over Gloo) for ``--seconds`` of training, in turn, so a busy shared machine slows
all variants alike. It reports the loop's own measurement (``train_samples_per_s`` and
``data_wait_s`` of log.csv) per round, the median per variant and its ratio to the first variant, and writes a
markdown table (``--out``) with the machine, threads, batch sizes and load average.

    python benchmarks/train_pipeline_throughput.py --seconds 170 --rounds 2 \
        --out benchmarks/results/train_pipeline_cpu.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kasf.hardware import cpu_model
from kasf.training.config import load_config
from kasf.training.engine import train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "mocap-kasportsformer-t.yaml"
# name -> overrides on the demo YAML. The first is the demo recipe's speed settings as issue 11 found them.
# A variant's rate is that of its last epoch row: with --seconds longer than an epoch it is a steady-state epoch (the
# first epoch carries the compile of the compiled variants, and the first camera pool's rendering).
# The rows before the native attention pin training_attention=reference: that is what they measured when written.
VARIANTS: dict[str, list[str]] = {
    "issue-time demo (batch 16, 1 thread, bf16 autocast)": [
        "precision=auto", "compile=false", "batch_size=16", "training_attention=reference"],
    "demo batch (8), 1 thread, fp32": ["compile=false", "training_attention=reference"],
    "2 threads, batch 64, fp32, camera pool": [
        "threads=2", "batch_size=64", "camera_pool=4", "compile=false", "training_attention=reference"],
    # Data parallel on the two cores: each process one thread and half the batch (the same 64 windows a step).
    "2 processes x 1 thread (torchrun), batch 2 x 32, fp32, camera pool": [
        "processes=2", "threads=1", "batch_size=32", "camera_pool=4", "compile=false", "training_attention=reference"],
    "2 processes x 1 thread, batch 2 x 32, compiled, fp32": [
        "processes=2", "threads=1", "batch_size=32", "camera_pool=4", "compile=true", "training_attention=reference"],
    # Compiled, bf16 autocast pays where eager did not: the casts fuse into the compiled kernels, the products
    # run in bf16 (AMX / AVX512-BF16 here).
    "2 processes x 1 thread, batch 2 x 32, compiled, bf16 autocast": [
        "processes=2", "threads=1", "batch_size=32", "camera_pool=4", "compile=true", "precision=bf16",
        "training_attention=reference"],
    # Half the windows per step: a smaller working set per compiled kernel (it did not pay: docs/training.md).
    "2 processes x 1 thread, batch 2 x 16, compiled, bf16 autocast": [
        "processes=2", "threads=1", "batch_size=16", "camera_pool=4", "compile=true", "precision=bf16",
        "training_attention=reference"],
    # Twice the windows per step: does per-kernel overhead spread over more work pay? (It did not: docs/training.md.)
    "2 processes x 1 thread, batch 2 x 64, compiled, bf16 autocast": [
        "processes=2", "threads=1", "batch_size=64", "camera_pool=4", "compile=true", "precision=bf16",
        "training_attention=reference"],
    # The attention by kasf::attention_rows (cpp_ext) instead of matmul-softmax-matmul: kasf-train's default on CPUs.
    "2 processes x 1 thread, batch 2 x 32, compiled, bf16 autocast, native attention": [
        "processes=2", "threads=1", "batch_size=32", "camera_pool=4", "compile=true", "precision=bf16",
        "training_attention=native"],
}
DDP_SCRIPT = "import sys\nfrom kasf.training.cli import train_main\nsys.exit(train_main(sys.argv[1:]))\n"


def _train_with_torchrun(config: Path, overrides: list[str], processes: int, threads: int, workdir: Path) -> None:
    """kasf-train under torch.distributed.run (DDP, Gloo): each process ``threads`` threads."""
    script = workdir.parent / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), str(script), "--config", str(config), *overrides], check=True, env=env)


def run_variant(config: Path, overrides: list[str], seconds: float, workdir: Path) -> dict:
    # Augmentation and the last-frame loss off: the issue-time recipe had neither, and the demo config's (bone
    # lengths, tempo) would change the data path these rows measure.
    common = ["augment_bone_scale=0.0", "augment_speed=[1.0,1.0]", "lambda_last_frame=0",
              f"time_budget_min={seconds / 60}", "time_budget_clock=wall", "progress=false",
              "use_tensorboard=false", "resume=false", "val_cameras_per_clip=1", f"output_dir={workdir}"]
    processes = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("processes=")), 1)
    overrides = [o for o in overrides if not o.startswith("processes=")]
    cfg = load_config(config, overrides + common)
    if processes > 1:
        _train_with_torchrun(config, overrides + common, processes, cfg.threads, workdir)
    else:
        train(cfg, command="benchmarks/train_pipeline_throughput.py")
    with open(workdir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    steps = int(rows[-1]["step"])
    return {"samples_per_s": float(rows[-1]["train_samples_per_s"]), "data_wait_s": float(rows[-1]["data_wait_s"]),
            "epoch_rows": len(rows), "first_epoch_s": float(rows[0]["elapsed_s"]),
            "steps": steps, "train_s": float(rows[-1]["elapsed_s"]), "batch_size": cfg.batch_size,
            "threads": cfg.threads, "processes": processes, "precision": cfg.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEMO))
    parser.add_argument("--seconds", type=float, default=170.0,
                        help="training seconds per variant and round (longer than an epoch: the last epoch row, "
                             "a steady-state one, is reported)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", type=int, nargs="+", help="run only these variants (1-based, the first "
                        "always runs: it is the ratios' baseline)")
    parser.add_argument("--out", help="write the markdown table here (and JSON beside it)")
    args = parser.parse_args()
    names = list(VARIANTS)
    if args.variants:
        bad = [i for i in args.variants if not 1 <= i <= len(names)]
        if bad:
            parser.error(f"--variants: {bad} not in 1..{len(names)}")
        names = [names[0]] + [names[i - 1] for i in sorted(set(args.variants)) if i > 1]
    results: dict[str, list[dict]] = {name: [] for name in names}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, name in enumerate(names):
                loads.append(os.getloadavg()[0])
                result = run_variant(Path(args.config), VARIANTS[name], args.seconds, Path(tmp) / f"r{round_}v{i}")
                results[name].append(result)
                print(f"round {round_ + 1} {name}: {result}", flush=True)
    first = statistics.median(r["samples_per_s"] for r in results[names[0]])
    machine = (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, load average (1 min) "
               f"{min(loads):.1f}-{max(loads):.1f} at the start of the runs")
    variants = f" --variants {' '.join(map(str, args.variants))}" if args.variants else ""
    config = Path(args.config).resolve()
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    lines = [f"kasf-train throughput, `{shown}` "
             f"with each variant's overrides; {args.rounds} interleaved rounds of {args.seconds:.0f} s of training "
             f"each (`python benchmarks/train_pipeline_throughput.py --seconds {args.seconds:.0f} --rounds "
             f"{args.rounds}{variants}`); each round's rate is its last epoch row (after the first epoch, which "
             f"carries a compiled variant's compile). Machine: {machine}.", "",
             "| variant | overrides | processes x threads | batch per process | samples/s per round | "
             "median samples/s | vs first row | data wait (s) | epoch rows | first epoch (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        median = statistics.median(r["samples_per_s"] for r in rows)
        overrides = " ".join(VARIANTS[name]) or "-"
        speeds = ", ".join(f"{r['samples_per_s']:.1f}" for r in rows)
        waits = ", ".join(f"{r['data_wait_s']:.1f}" for r in rows)
        epochs = ", ".join(str(r["epoch_rows"]) for r in rows)
        firsts = ", ".join(f"{r['first_epoch_s']:.0f}" for r in rows)
        lines.append(f"| {name} | `{overrides}` | {rows[0].get('processes', 1)} x {rows[0]['threads']} | "
                     f"{rows[0]['batch_size']} | {speeds} | "
                     f"{median:.1f} | {median / first:.2f}x | {waits} | {epochs} | {firsts} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
