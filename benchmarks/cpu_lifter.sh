#!/usr/bin/env bash
# The CPU lifter benchmarks behind README's performance tables: every backend against the eager reference
# forward of the same weights, in one run per preset. Run on an otherwise idle machine.
#   demo preset (kasportsformer-t, the bundled trained checkpoint): batch 1 (streaming) and 8
#   released size (kasportsformer, seeded random weights: speed, and each backend's distance to fp32 in mm)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
kasf-bench --presets kasportsformer-t --threads "$THREADS" \
  --backends eager-reference,eager-fused,compile,bf16,ort-fp32,ort-int8,ort-cpu-fp32,ort-cpu-int8 --batches 1,8 --min-time 3 --warmup 5 \
  --json benchmarks/results/cpu_lifter_demo.json --markdown benchmarks/results/cpu_lifter_demo.md
kasf-bench --presets kasportsformer --threads "$THREADS" \
  --backends eager-reference,eager-fused,bf16,ort-fp32,ort-int8,ort-cpu-fp32,ort-cpu-int8 --batches 1 --min-time 5 --warmup 2 \
  --json benchmarks/results/cpu_lifter_full.json --markdown benchmarks/results/cpu_lifter_full.md
python benchmarks/update_readme.py
