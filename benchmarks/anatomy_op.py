"""Time the anatomy operator: native (cpp_ext) vs pure PyTorch, alone and as a share of a whole forward pass.

Why: the native op is only worth its build if it is faster, or at least not slower, where the model runs; and a
speed-up of a part that is 0.1 % of the forward pass changes nothing. This script measures both, so docs/cpp_ext.md
quotes numbers instead of hopes.

    python benchmarks/anatomy_op.py                 # CPU (and CUDA when torch sees a GPU)
    python benchmarks/anatomy_op.py --json out.json --presets kasportsformer-xs kasportsformer-t
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import torch
from torch.utils import benchmark

from kasf import skeleton
from kasf.anatomy_op import features, native
from kasf.anatomy_op.features import bone_features

PROXIMAL = torch.tensor(skeleton.BONE_PROXIMAL)
DISTAL = torch.tensor(skeleton.BONE_DISTAL)


def _best_ms(fn: Callable[[], Any], min_run_time: float) -> float:
    """Fastest block mean of torch.utils.benchmark's blocked_autorange, in ms.

    The best block rather than the median: on a shared machine other processes only ever slow a block down, so
    the fastest one is the closest to the code's own cost.
    """
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.blocked_autorange(min_run_time=min_run_time).times) * 1e3


def _best_of_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up, in ms: for steps too slow for blocked_autorange."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def time_op(shape: tuple[int, ...], device: str, backward: bool, min_run_time: float) -> dict[str, Any]:
    """Milliseconds (best block) of the native op and the pure-PyTorch function on one input shape."""
    if not native.native_available():
        raise RuntimeError(f"the native op is not available: {native.status()['reason']}")
    x = torch.randn(*shape, device=device)
    proximal, distal = PROXIMAL.to(device), DISTAL.to(device)
    sync = _sync(device)
    grad = torch.randn(*shape[:-1], 3, device=device)

    def run(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            if backward:
                xr = x.detach().requires_grad_(True)
                fn(xr).backward(grad)
            else:
                with torch.no_grad():
                    fn(x)
            sync()
        return step

    pure_ms = _best_ms(run(lambda t: bone_features(t[..., :2], proximal, distal)), min_run_time)
    native_ms = _best_ms(run(torch.ops.kasf.anatomy_features), min_run_time)
    return {"shape": list(shape), "device": device, "pass": "fwd+bwd" if backward else "fwd",
            "pure_ms": round(pure_ms, 4), "native_ms": round(native_ms, 4),
            "speedup": round(pure_ms / native_ms, 2)}


def time_presets(presets: list[str], batch: int, device: str, min_run_time: float, repeats: int = 5
                 ) -> list[dict[str, Any]]:
    """Whole forward (eval, no grad) of each preset on a (batch, 27, 17, 3) window, and the op's share of it."""
    from kasf.model import build

    rows = []
    sync = _sync(device)
    for name in presets:
        model = build(name).to(device).eval()
        x = torch.randn(batch, model.n_frames, 17, 3, device=device)

        def forward() -> None:
            with torch.no_grad():
                model(x)
            sync()

        native_ms = _best_of_ms(forward, repeats)
        original = features.use_native
        features.use_native = lambda joints: False  # type: ignore[assignment]
        try:
            pure_ms = _best_of_ms(forward, repeats)
        finally:
            features.use_native = original  # type: ignore[assignment]
        op = time_op(tuple(x.shape), device, backward=False, min_run_time=min_run_time)
        rows.append({"preset": name, "device": device, "batch": batch, "forward_native_ms": round(native_ms, 3),
                     "forward_pure_ms": round(pure_ms, 3), "op_native_ms": op["native_ms"], "op_pure_ms": op["pure_ms"],
                     "op_share_native_pct": round(100 * op["native_ms"] / native_ms, 3),
                     "op_share_pure_pct": round(100 * op["pure_ms"] / pure_ms, 3)})
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["kasportsformer", "kasportsformer-b", "kasportsformer-s",
                                                          "kasportsformer-xs", "kasportsformer-t"])
    parser.add_argument("--batch", type=int, default=1, help="windows per forward in the preset timing")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--devices", nargs="*", default=None, help="cpu and/or cuda (default: what is available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per preset (best is kept)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not native.native_available():
        print(f"the native op is not available: {native.status()['reason']}", file=sys.stderr)
        return 2
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not native.cuda_kernels_built():
        print(f"skipping cuda: {native.status()['reason']}", file=sys.stderr)
        devices = [d for d in devices if d != "cuda"]
    shapes = [(1, 27, 17, 3), (64, 27, 17, 3), (64, 243, 17, 3)]
    op_rows = [time_op(s, d, b, args.min_run_time) for d in devices for b in (False, True) for s in shapes]
    preset_rows = [r for d in devices
                   for r in time_presets(args.presets, args.batch, d, args.min_run_time, args.repeats)]
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
               platform.machine(), "gpu": torch.cuda.get_device_name() if "cuda" in devices else None,
               "load_average_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    print(f"machine: {machine}\n\noperator alone (best block, ms):\n{_table(op_rows)}\n\n"
          f"whole forward, batch {args.batch} (best of {args.repeats}, ms) and the op's share:\n{_table(preset_rows)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "op": op_rows, "presets": preset_rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
