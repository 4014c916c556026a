#!/usr/bin/env bash
# The CPU lifter benchmarks behind README's performance tables: every backend against the eager reference
# forward of the same weights, in one run per preset, batch 1, the backends timed in turns (--rounds: this
# machine's speed drifts within minutes, and rows timed one after another caught different phases); then
# kasf-stream with 1 and 4 people for eager PyTorch, the native forward and the ONNX Runtime CPU graphs. Run on an
# otherwise idle machine (the load average is written down).
#   demo preset (kasportsformer-t, the bundled trained checkpoint)
#   released size (kasportsformer, seeded random weights: speed, and each backend's distance to fp32 in mm)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
R="${RESULTS:-benchmarks/results}"
kasf-bench --presets kasportsformer-t --threads "$THREADS" \
  --backends eager-reference,eager-fused,native,native-bf16,compile,bf16,cpu-auto,ort-fp32,ort-int8,ort-cpu-fp32,ort-cpu-int8 \
  --batches 1 \
  --min-time "${MIN_TIME:-6}" --rounds 6 --warmup 5 --json $R/cpu_lifter_demo.json --markdown $R/cpu_lifter_demo.md
if [ "${SKIP_FULL:-0}" != 1 ]; then
  kasf-bench --presets kasportsformer --threads "$THREADS" \
    --backends eager-reference,native,native-bf16,bf16,cpu-auto,ort-cpu-fp32,ort-cpu-int8 --batches 1 \
    --min-time "${MIN_TIME:-10}" --rounds 5 --warmup 2 \
    --json $R/cpu_lifter_full.json --markdown $R/cpu_lifter_full.md
fi
# kasf-stream: eager PyTorch (reference forward), the native CPU forward (kasf::lift_cpu, intra-op threads over
# the tokens; fp32, and bf16 products where the CPU has them), and the demo's ONNX Runtime CPU graphs (fp32,
# int8), one session and one per core
ONNX_DIR="$(mktemp -d)"
python -c "import sys; from pathlib import Path; from kasf.bench import onnx_for; from kasf.checkpoint import \
resolve_checkpoint_path as r; [onnx_for(r('demo'), Path(sys.argv[1]), int8=q, cpu_graph=True, attention=a) \
for q in (0, 1) for a in ('contrib', 'standard')]" "$ONNX_DIR"
python benchmarks/stream_bench.py --model demo --threads "$THREADS" --frames 300 --seconds 20 --json $R/stream_cpu_demo.json
python benchmarks/stream_bench.py --model demo --inference-path native --threads "$THREADS" --frames 300 --seconds 20 \
  --json $R/stream_cpu_demo_native.json
python benchmarks/stream_bench.py --model demo --inference-path native --precision bf16 --threads "$THREADS" \
  --frames 300 --seconds 0 --json $R/stream_cpu_demo_native_bf16.json
python benchmarks/stream_bench.py --model "$ONNX_DIR/demo.cpu.onnx" --threads "$THREADS" --frames 300 --seconds 0 \
  --json $R/stream_cpu_demo_ort_cpu.json
python benchmarks/stream_bench.py --model "$ONNX_DIR/demo.cpu.int8.onnx" --threads "$THREADS" --frames 300 --seconds 0 \
  --json $R/stream_cpu_demo_ort_cpu_int8.json
# each frame's people split over one single-threaded session per core (--workers), with the attention in the
# form that is faster in single-threaded sessions (kasf-export --ort-attention standard; docs/cpu_inference.md)
python benchmarks/stream_bench.py --model "$ONNX_DIR/demo.cpu.standard.onnx" --threads "$THREADS" --workers "$THREADS" \
  --frames 300 --seconds 0 --json $R/stream_cpu_demo_ort_cpu_workers.json
python benchmarks/stream_bench.py --model "$ONNX_DIR/demo.cpu.standard.int8.onnx" --threads "$THREADS" \
  --workers "$THREADS" --frames 300 --seconds 0 --json $R/stream_cpu_demo_ort_cpu_int8_workers.json
python benchmarks/stream_bench.py --table $R/stream_cpu_demo.json $R/stream_cpu_demo_native.json \
  $R/stream_cpu_demo_native_bf16.json \
  $R/stream_cpu_demo_ort_cpu.json \
  $R/stream_cpu_demo_ort_cpu_int8.json $R/stream_cpu_demo_ort_cpu_workers.json \
  $R/stream_cpu_demo_ort_cpu_int8_workers.json > $R/stream_cpu.md
rm -rf "$ONNX_DIR"
[ -n "${RESULTS:-}" ] || python benchmarks/update_readme.py
