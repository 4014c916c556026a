#!/usr/bin/env bash
# The GPU lifter benchmark (a lent GPU machine, one call): eager, CUDA graphs, fp16/bf16 autocast, torch.compile,
# ONNX Runtime CUDA and TensorRT where installed, every preset at batch 1 and 64, plus the anatomy operator.
# Needs: a CUDA build of torch; optional onnxruntime-gpu, tensorrt, pycuda. Writes benchmarks/results/gpu_*.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee benchmarks/results/gpu_machine.txt
kasf-bench --device cuda --presets kasportsformer-t,kasportsformer-xs,kasportsformer-s,kasportsformer-b,kasportsformer \
  --backends eager-reference,eager-fused,cudagraphs,compile,fp16,bf16,ort-fp32,trt-fp16 \
  --batches 1,64 --min-time 2 --warmup 10 \
  --json benchmarks/results/gpu_lifter.json --markdown benchmarks/results/gpu_lifter.md
python benchmarks/anatomy_op.py --devices cuda --json benchmarks/results/gpu_anatomy_op.json
