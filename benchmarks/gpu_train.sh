#!/usr/bin/env bash
# Train the demo recipe on one GPU in one offline call, under 8 minutes, checkpoint and log in a folder.
#
#   bash benchmarks/gpu_train.sh OUT_DIR [CONFIG] [key=value ...]
#
# For a bare GPU machine with a CUDA build of PyTorch and no network: the motion capture travels with the tree
# (copy ../shared/data/cmu_mocap to data/cmu_mocap first, or pass mocap_root=...), pure-Python dependencies come from
# .gpu_wheels/ when present (bash benchmarks/gpu_wheels.sh on a machine with a registry).
# Steps, each with its own timeout: env (GPU, torch), wheels, train (a 6-minute wall-clock budget at batch 64 and
# twice the demo's learning rate, since a GPU step costs milliseconds; kasf-train's own log.csv, best.pt and
# latest.pt land in OUT_DIR/run), eval (the best checkpoint on the held-out subject through other cameras).
# Never run by the sessions so far: no GPU was lent to them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/gpu_train.sh OUT_DIR [CONFIG] [key=value ...]}"
CONFIG="${2:-configs/mocap-kasportsformer-t.yaml}"
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MOCAP="${MOCAP_ROOT:-data/cmu_mocap}"
[ -d "$MOCAP" ] || MOCAP=../shared/data/cmu_mocap
TAG=gpu_train
source benchmarks/gpu_steps.sh
# kasf's CLIs without installing the package (no console scripts on a bare machine): CLI NAME ARGS...
CLI=("$PY" -c 'import sys; from kasf.training import cli; sys.exit(getattr(cli, sys.argv[1] + "_main")(sys.argv[2:]))')

step env 20 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, torch.cuda.get_device_name())'"
if [ -d .gpu_wheels ]; then
    step wheels 60 "$PY" -m pip install -q --no-deps --no-index --find-links .gpu_wheels pyyaml tqdm
fi
step train 400 "${CLI[@]}" train --config "$CONFIG" mocap_root="$MOCAP" output_dir="$OUT/run" \
    time_budget_min=6 time_budget_clock=wall batch_size=64 learning_rate=0.002 threads=0 progress=false \
    use_tensorboard=false resume=false "$@"
step prepare 60 "${CLI[@]}" prepare mocap "$MOCAP" --out "$OUT/cmu_mocap.pkl" --val-subjects cmu16 \
    --seed 0
step eval 60 "${CLI[@]}" eval --checkpoint "$OUT/run/best.pt" --source "$OUT/cmu_mocap.pkl" \
    --report "$OUT/report.json" --cache-dir "$OUT/cache"
tail -n 3 "$OUT/train.log" "$OUT/eval.log"
exit $WORST
