#!/usr/bin/env bash
# GPU check of the anatomy operator, for a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
#   1. builds kasf with the CUDA kernels (fails loudly if they do not build),
#   2. checks CUDA against the CPU kernels and the pure-PyTorch path (float32, float64 gradcheck, half),
#   3. runs the CUDA and TensorRT tests (TensorRT ones skip, naming what is missing, without TensorRT),
#   4. times native vs pure PyTorch on CPU and CUDA and writes JSON.
# Usage: PYTHON=python3 OUT=/tmp/out bash benchmarks/gpu_check_anatomy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
assert torch.version.cuda, "torch is a CPU build; install a CUDA build of torch first"
print("gpu:", torch.cuda.get_device_name(), "torch", torch.__version__, "cuda", torch.version.cuda)
PY
"$PYTHON" -m pip install -q "setuptools>=64"
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}" \
  KASF_REQUIRE_EXT=1 "$PYTHON" -m pip install -q --no-build-isolation -e ".[dev]" 2>&1 | tail -5
"$PYTHON" -m kasf.info --env | tee "$OUT/env.txt"
"$PYTHON" - <<'PY' | tee "$OUT/parity.txt"
import torch
from kasf import skeleton
from kasf.anatomy_op import native
from kasf.anatomy_op.features import bone_features
assert native.cuda_kernels_built(), native.status()
p, d = torch.tensor(skeleton.BONE_PROXIMAL), torch.tensor(skeleton.BONE_DISTAL)
torch.manual_seed(0)
x = torch.randn(64, 243, 17, 3)
x[:, :, 3] = x[:, :, 2]
op = torch.ops.kasf.anatomy_features
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    xc = x.to(dtype)
    gpu, cpu = op(xc.cuda()).cpu(), op(xc)
    pure = bone_features(xc.cuda()[..., :2], p.cuda(), d.cuda()).cpu()
    print(f"{dtype}: max|cuda-cpu| {(gpu - cpu).abs().max().item():.3e}  max|cuda-pure| {(gpu.float() - pure.float()).abs().max().item():.3e}")
xg = torch.randn(4, 27, 17, 3, dtype=torch.float64, device="cuda", requires_grad=True)
print("float64 gradcheck on CUDA:", torch.autograd.gradcheck(op, (xg,)))
torch.library.opcheck(op.default, (torch.randn(8, 27, 17, 3, device="cuda"),))
print("opcheck on CUDA: ok")
PY
"$PYTHON" -m pytest -q -rs tests/test_anatomy_op.py tests/test_anatomy_onnx.py tests/test_cpp_ext_nvcc.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
"$PYTHON" benchmarks/anatomy_op.py --devices cpu cuda --batch 1 --json "$OUT/anatomy_op_gpu.json" | tee "$OUT/bench.txt"
"$PYTHON" benchmarks/anatomy_op.py --devices cuda --batch 64 --presets kasportsformer kasportsformer-s \
  --json "$OUT/anatomy_op_gpu_b64.json" | tee -a "$OUT/bench.txt"
echo "results in $OUT"
