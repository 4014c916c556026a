#!/usr/bin/env bash
# The CPU lifter benchmark behind README's performance table: every backend against the eager reference forward
# of the same weights, in one run. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
kasf-bench --presets kasportsformer-t,kasportsformer \
  --backends eager-reference,eager,compile,bf16,ort-fp32,ort-int8 \
  --batches 1,8 --min-time 3 --warmup 5 \
  --json benchmarks/results/cpu_lifter.json --markdown benchmarks/results/cpu_lifter.md
python benchmarks/update_readme.py
