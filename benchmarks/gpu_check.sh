#!/usr/bin/env bash
# The whole GPU check in one call, for a bare GPU machine with a CUDA build of PyTorch, nvcc and no network.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Steps (each with its own timeout; all together under 6 minutes on an H100 box with 16 cores):
#   env      GPU, driver, torch, nvcc
#   wheels   pure-Python dependencies from .gpu_wheels/ if present (pip --no-deps --no-index; make the folder on a
#            machine with a registry: bash benchmarks/gpu_wheels.sh), since the GPU machine has no network
#   build    the native operator with the CUDA kernels, for this GPU's architecture, under torch's own nvcc flags
#   op       CUDA op vs CPU kernel vs pure path (float32, float64, float16, bfloat16), float64 gradcheck, opcheck
#   tests    the tests that use CUDA (operator, CUDA-graph parity with eager fp32)
#   lifter   kasf-bench: eager reference formulation vs CUDA graphs fp32/fp16, batch 1 and 64, for
#            kasportsformer-t, -s and the released size; torch.compile (reduce-overhead) for -t only (it compiles
#            for minutes on the released size)
#   train    training steps/s (forward + backward + AdamW) at batch 64 and 256
#   tensorrt where tensorrt and pycuda import (else it prints why and skips): engines of the demo checkpoint with
#            their parity reports: fp32 dynamic batch, fp16, fixed --batch 4 fed 25 windows, INT8 calibrated on
#            windows and from the calibration cache alone, and a --anatomy-op plugin engine loaded in a fresh
#            process with no nvcc or cmake on PATH (benchmarks/gpu_tensorrt.py; up to 4 min per case, so the
#            6-minute total holds only without TensorRT)
# Writes OUT_DIR/<step>.log, steps.jsonl, operator.json, lifter.json/.md, train.json, tensorrt/ (a log per case,
# tensorrt.json), summary.md and summary.json.
# A failing step is recorded and the next one runs; the exit status is that of the worst step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" KASF_REQUIRE_EXT=1
TAG=gpu_check
source benchmarks/gpu_steps.sh

step env 20 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name())'; \
  nvcc --version | tail -2"
cat "$OUT/env.log"
if [ -d .gpu_wheels ]; then
    step wheels 60 "$PY" -m pip install -q --no-deps --no-index --find-links .gpu_wheels \
        pytest iniconfig pluggy packaging pyyaml tqdm
fi
ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)"
step build 150 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=16 "$PY" setup.py -q build_ext --inplace
step op 60 "$PY" benchmarks/gpu_check.py op "$OUT"
step tests 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_anatomy_op.py tests/test_cuda_graphs.py
step lifter 120 "$PY" -m kasf.bench --device cuda --presets kasportsformer-t,kasportsformer-s,kasportsformer \
    --backends eager-reference,cudagraph,cudagraph-fp16 --batches 1,64 --warmup 5 --min-time 0.5 \
    --json "$OUT/lifter.json" --markdown "$OUT/lifter.md"
step lifter_compile 60 "$PY" -m kasf.bench --device cuda --presets kasportsformer-t \
    --backends eager-reference,compile-cudagraphs --batches 1,64 --warmup 5 --min-time 0.5 \
    --json "$OUT/lifter_compile.json" --markdown "$OUT/lifter_compile.md"
step train 50 "$PY" benchmarks/train_throughput.py --presets kasportsformer-t kasportsformer-s \
    --batch-size 64 256 --seconds 3 --json "$OUT/train.json"
step tensorrt 1500 "$PY" benchmarks/gpu_tensorrt.py all "$OUT/tensorrt"
"$PY" benchmarks/gpu_check.py summary "$OUT" > /dev/null
echo "[gpu_check] summary: $OUT/summary.md (worst exit status $WORST)"
exit "$WORST"
