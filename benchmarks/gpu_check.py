"""Steps of benchmarks/gpu_check.sh that need Python: CUDA operator parity and the Markdown summary.

    python benchmarks/gpu_check.py op OUT        # CUDA op vs CPU kernel vs pure path, 4 dtypes; gradcheck; opcheck
    python benchmarks/gpu_check.py summary OUT   # OUT/summary.md and OUT/summary.json from every step's output
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check_operator(out: Path) -> int:
    """Targets: max |CUDA - CPU kernel| <= 1e-6 in float32; float64 gradcheck and opcheck pass on CUDA."""
    import torch

    from kasf import skeleton
    from kasf.anatomy_op import native as ops
    from kasf.anatomy_op.features import bone_features

    assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
    assert ops.cuda_kernels_built(), f"the CUDA kernels are not loaded: {ops.status()}"
    proximal, distal = torch.tensor(skeleton.BONE_PROXIMAL), torch.tensor(skeleton.BONE_DISTAL)
    torch.manual_seed(0)
    joints = torch.randn(64, 243, 17, 3)
    joints[:, :, 3] = joints[:, :, 2]  # zero-length bones take the guarded path
    op = torch.ops.kasf.anatomy_features
    result: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "dtypes": {}}
    ok = True
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = joints.to(dtype)
        cuda_out = op(x.cuda()).cpu()
        cpu_out = op(x)
        pure = bone_features(x.cuda()[..., :2], proximal.cuda(), distal.cuda()).cpu()
        to_cpu = (cuda_out.double() - cpu_out.double()).abs().max().item()
        to_pure = (cuda_out.double() - pure.double()).abs().max().item()
        result["dtypes"][str(dtype)] = {"max_abs_cuda_vs_cpu": to_cpu, "max_abs_cuda_vs_pure": to_pure}
        if dtype == torch.float32 and to_cpu > 1e-6:
            ok = False
    xg = torch.randn(4, 27, 17, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    result["gradcheck_float64_cuda"] = bool(torch.autograd.gradcheck(op, (xg,)))
    torch.library.opcheck(op.default, (torch.randn(8, 27, 17, 3, device="cuda"),))
    result["opcheck_cuda"] = True
    result["target_float32_le_1e-6"] = ok
    (out / "operator.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if ok and result["gradcheck_float64_cuda"] else 1


def summarise(out: Path) -> int:
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    lines = ["# kasf GPU check", ""]
    env = out / "env.log"
    if env.exists():
        lines += ["```", env.read_text().strip(), "```", ""]
    lines += ["| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']}{' (timed out)' if s['rc'] in (124, 137) else ''} | {s['seconds']} |"
              for s in steps]
    summary: dict = {"steps": steps}
    operator = out / "operator.json"
    if operator.exists():
        summary["operator"] = json.loads(operator.read_text())
        lines += ["", "## Anatomy operator on CUDA", "", "| dtype | max abs CUDA vs CPU kernel | vs pure PyTorch |",
                  "|---|---|---|"]
        lines += [f"| {d} | {v['max_abs_cuda_vs_cpu']:.2e} | {v['max_abs_cuda_vs_pure']:.2e} |"
                  for d, v in summary["operator"]["dtypes"].items()]
    for name, title in (("lifter.md", "Lifter latency (kasf-bench)"), ("lifter_compile.md", "torch.compile"),
                        ("tests.log", "Tests on the GPU"), ("train.log", "Training steps/s")):
        path = out / name
        if path.exists():
            text = path.read_text().strip()
            if name.endswith(".log"):
                text = "```\n" + "\n".join(text.splitlines()[-25:]) + "\n```"
            lines += ["", f"## {title}", "", text]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("op", "summary"):
        sys.exit(__doc__)
    folder = Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    sys.exit(check_operator(folder) if sys.argv[1] == "op" else summarise(folder))
