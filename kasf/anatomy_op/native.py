"""Loading the native operator ``torch.ops.kasf.anatomy_features`` (the extension ``kasf._C``) and why it did or not.

Why this module: whether the C++/CUDA kernels of ``cpp_ext/`` are usable is decided once, here, with a reason, so
``kasf-info --env`` can report it and :mod:`kasf.anatomy_op.features` can fall back to pure PyTorch without guessing.

Environment (run time): ``KASF_NO_EXT=1`` forces the pure-PyTorch path even where the extension is built.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from kasf import skeleton

OP_NAME = "kasf::anatomy_features"
ATTENTION_OP = "kasf::attention_rows"
# setup.py (cpp_ext/native_build.py) writes the record beside the extension, in the kasf package folder.
_BUILD_INFO = Path(__file__).resolve().parents[1] / "_build_info.json"


def _env_disabled() -> bool:
    return os.environ.get("KASF_NO_EXT", "").strip().lower() in {"1", "true", "yes", "on"}


def build_info() -> dict[str, Any]:
    """What setup.py decided when this copy of kasf was installed (kasf/_build_info.json), or {} if unknown."""
    try:
        return json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


_STATE: list[tuple[bool, str]] = []


def load() -> tuple[bool, str]:
    """(loaded, reason), decided once: a plain cache that torch.compile can trace (it reads a list)."""
    if not _STATE:
        _STATE.append(_try_load())
    return _STATE[0]


def _try_load() -> tuple[bool, str]:
    """Import kasf._C, which registers the schema and the CPU (and CUDA) kernels, and say why not if it fails.

    The reason never claims a build that is not there: "not built" when no kasf._C exists in this install (with
    the build's own reason when setup.py recorded one), "failed to load" when the file exists but will not import
    (another torch, a missing CUDA library).
    """
    if _env_disabled():
        return False, "KASF_NO_EXT is set in the environment: pure-PyTorch path forced"
    info = build_info()
    if importlib.util.find_spec("kasf._C") is None:
        recorded = info.get("reason", "")
        if recorded and not info.get("built", False):
            return False, f"native extension not built: {recorded}"
        return False, ("native extension not built: this install has no kasf._C (reinstall kasf with "
                       "`pip install --no-build-isolation .` where torch and a C++ compiler are present)")
    try:
        import kasf._C  # noqa: F401  (registration happens at import)
    except ImportError as err:
        return False, f"native extension failed to load: {err}"
    _register_python_parts()
    return True, info.get("reason", "native extension loaded")


def _register_python_parts() -> None:
    """Fake (shape) kernels and autograd for the C++ schema: what torch.compile, export and backward need."""

    @torch.library.register_fake(OP_NAME)
    def _fake(joints: torch.Tensor) -> torch.Tensor:
        torch._check(joints.dim() >= 2, lambda: "kasf::anatomy_features: joints must have shape (..., 17, C)")
        torch._check(joints.shape[-2] == skeleton.NUM_JOINTS, lambda: "kasf::anatomy_features: need 17 joints")
        return joints.new_empty((*joints.shape[:-1], 3))

    @torch.library.register_fake("kasf::anatomy_features_backward")
    def _fake_backward(grad: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(joints)

    def _setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    def _backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (joints,) = ctx.saved_tensors
        return torch.ops.kasf.anatomy_features_backward(grad.contiguous(), joints)

    torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)

    # kasf::attention_rows (cpp_ext/cpu_blocks.cpp): the training attention of kasf.model.layers.Attention on CPUs.
    @torch.library.register_fake(ATTENTION_OP)
    def _fake_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, temporal: bool,
                        scale: float) -> torch.Tensor:
        torch._check(q.dim() == 4 and q.shape == k.shape == v.shape,
                     lambda: "kasf::attention_rows: q, k, v must share one (B, T, J, C) shape")
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)

    @torch.library.register_fake("kasf::attention_rows_backward")
    def _fake_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                                 temporal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))  # type: ignore[return-value]

    def _setup_attention(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        q, k, v, ctx.heads, ctx.temporal, ctx.scale = inputs
        ctx.save_for_backward(q, k, v)

    def _attention_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        q, k, v = ctx.saved_tensors
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        dq, dk, dv = torch.ops.kasf.attention_rows_backward(grad, q, k, v, ctx.heads, ctx.temporal, ctx.scale)
        return dq, dk, dv, None, None, None

    torch.library.register_autograd(ATTENTION_OP, _attention_backward, setup_context=_setup_attention)


def native_available() -> bool:
    """True when torch.ops.kasf.anatomy_features is registered (the extension loaded and is not disabled)."""
    return load()[0]


_CUDA_BUILT: list[bool] = []


def cuda_kernels_built() -> bool:
    """True when the loaded extension holds the CUDA kernels, not only the CPU ones (read once: every forward on a
    GPU asks)."""
    if not _CUDA_BUILT:
        _CUDA_BUILT.append(native_available() and bool(build_info().get("cuda", False)))
    return _CUDA_BUILT[0]


def _native_cpu_kernels(loaded: bool) -> str:
    """The kernel set kasf::lift_cpu runs here and its bf16 products' kernel, or why none (a bad KASF_CPU_KERNELS
    or KASF_CPU_BF16 is reported, not raised)."""
    if not loaded or not hasattr(torch.ops.kasf, "lift_cpu_bf16_kernels"):
        return "not built"
    try:
        kernels = torch.ops.kasf.lift_cpu_kernels()
    except RuntimeError as err:
        return f"unusable: {str(err).splitlines()[0]}"
    try:
        bf16 = torch.ops.kasf.lift_cpu_bf16_kernels() or "none (no AMX-BF16 or AVX512-BF16)"
    except RuntimeError as err:
        bf16 = f"unusable: {str(err).splitlines()[0]}"
    return f"{kernels}; bf16 products: {bf16}"


def status() -> dict[str, Any]:
    """Which anatomy path is active and why: what ``kasf-info --env`` prints."""
    loaded, reason = load()
    info = build_info()
    return {
        "anatomy_path": "native C++ operator (torch.ops.kasf.anatomy_features)" if loaded else "pure PyTorch",
        "reason": reason,
        "cpu_kernels": loaded,
        "cuda_kernels": loaded and bool(info.get("cuda", False)),
        # the native CPU forward (kasf::lift_cpu) and the kernel set it runs on this CPU
        "native_cpu_forward": _native_cpu_kernels(loaded),
        "KASF_NO_EXT": os.environ.get("KASF_NO_EXT", ""),
        "built_with_torch": info.get("torch", "unknown"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
