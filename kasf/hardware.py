"""What this machine can do, detected at run time (never assumed): bf16 units, the CPU, GPUs, library versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


# The /proc/cpuinfo flags that decide which CPU path is fast: vector width (avx512vl/dq/bw with avx512f pick the
# native forward's AVX-512 kernels), bf16 and int8 dot products, AMX tiles.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512vl", "avx512dq", "avx512bw", "avx512_bf16", "avx512_vnni",
               "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The SPEED_FLAGS this CPU reports (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in SPEED_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a speed number needs beside it."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_bf16_native": cpu_has_native_bf16(),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("onnxruntime", "tensorrt", "numpy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    from kasf._version import __version__
    from kasf.anatomy_op.native import status

    info["kasf"] = __version__
    info["anatomy_op"] = status().get("anatomy_path")
    return info
