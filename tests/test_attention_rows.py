"""kasf::attention_rows, the native training attention: the model's attention and its gradients, on every kernel set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kasf.model.presets import build
from kasf.training.config import ConfigError, load_config
from tests.conftest import require_native_op


@pytest.fixture(autouse=True)
def _native() -> None:
    require_native_op()


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, temporal: bool,
                        scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v per head over a frame's joints or a joint's frames, written out by hand."""
    b, t, j, c = q.shape

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, H, groups, L, d)
        x = x.reshape(b, t, j, heads, c // heads)
        return x.permute(0, 3, 2, 1, 4) if temporal else x.permute(0, 3, 1, 2, 4)

    out = torch.softmax(split(q) @ split(k).transpose(-1, -2) * scale, dim=-1) @ split(v)
    out = out.permute(0, 3, 2, 1, 4) if temporal else out.permute(0, 2, 3, 1, 4)
    return out.reshape(b, t, j, c)


SHAPES = [(2, 27, 17, 32, 4), (3, 5, 17, 64, 8), (1, 27, 17, 128, 8), (2, 40, 3, 16, 1)]


@pytest.mark.parametrize("temporal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_the_reference(shape: tuple[int, ...], temporal: bool) -> None:
    """Slices of one packed tensor (the Linear output, no copy), lengths 3 to 40, heads of 4 to 16 channels."""
    b, t, j, c, heads = shape
    g = torch.Generator().manual_seed(sum(shape))
    packed = torch.randn(b, t, j, 3 * c, generator=g, dtype=torch.float64)
    grad = torch.randn(b, t, j, c, generator=g, dtype=torch.float64)
    native_in = packed.float().requires_grad_()
    out = torch.ops.kasf.attention_rows(*native_in.split(c, dim=-1), heads, temporal, 0.3)
    (out * grad.float()).sum().backward()
    reference_in = packed.clone().requires_grad_()
    expected = reference_attention(*reference_in.split(c, dim=-1), heads, temporal, 0.3)
    (expected * grad).sum().backward()
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(native_in.grad.double(), reference_in.grad, atol=5e-6, rtol=1e-5)


def test_bfloat16_keeps_float32_sums() -> None:
    """bf16 in, bf16 out, within bf16 rounding of the exact result (the products are not rounded to bf16)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 2, 27, 17, 32, generator=g, dtype=torch.float64)
    out = torch.ops.kasf.attention_rows(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4, True, 0.35)
    expected = reference_attention(q.bfloat16().double(), k.bfloat16().double(), v.bfloat16().double(), 4, True, 0.35)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=8e-3)


def test_opcheck() -> None:
    """Schema, fake (meta) kernel, autograd registration and dispatch agree (torch.library.opcheck)."""
    g = torch.Generator().manual_seed(0)
    for temporal in (False, True):
        q, k, v = (torch.randn(2, 5, 17, 32, generator=g, requires_grad=True) for _ in range(3))
        torch.library.opcheck(torch.ops.kasf.attention_rows.default, (q, k, v, 4, temporal, 0.5))


def test_model_with_native_attention_is_the_reference_model() -> None:
    """The whole model, loss gradients included: set_training_attention('native') changes nothing but speed."""
    model = build("kasportsformer-t", layer_scale_init_value=0.5).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 27, 17, 3, generator=g)
    results = []
    for kind in ("reference", "native"):
        model.zero_grad()
        out = model.set_training_attention(kind)(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4)
    assert len(results[0][1]) == len(results[1][1])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-3)


def test_compiled_training_step_runs_the_native_op() -> None:
    """torch.compile keeps the op (its fake kernel gives the shapes) and the compiled gradients match eager ones."""
    model = build("kasportsformer-t", n_layers=1, layer_scale_init_value=0.5).train().set_training_attention("native")
    x = torch.randn(2, 27, 17, 3, generator=torch.Generator().manual_seed(2))
    eager = model(x)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    compiled = torch.compile(model)(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    for a, b in zip(eager_grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)


def test_bad_input_is_refused_with_the_reason() -> None:
    x = torch.randn(1, 5, 17, 32)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        torch.ops.kasf.attention_rows(x[..., :24], x[..., :24], x[..., :24], 4, False, 1.0)
    with pytest.raises(RuntimeError, match="k is BFloat16, q is Float"):
        torch.ops.kasf.attention_rows(x, x.bfloat16(), x, 4, False, 1.0)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        torch.ops.kasf.attention_rows(x.double(), x.double(), x.double(), 4, False, 1.0)
    with pytest.raises(RuntimeError, match="do not split into 5 heads"):
        torch.ops.kasf.attention_rows(x, x, x, 5, False, 1.0)
    with pytest.raises(RuntimeError, match="v has shape"):
        torch.ops.kasf.attention_rows(x, x, x[:, :4], 4, False, 1.0)
    model = build("kasportsformer-t", attn_drop=0.1)
    with pytest.raises(ValueError, match="attention dropout"):
        model.set_training_attention("native")
    with pytest.raises(ValueError, match="must be one of"):
        model.set_training_attention("flash")
    traced = build("kasportsformer-t", n_layers=1).eval().set_training_attention("native")
    with pytest.raises(ValueError, match="cannot be exported"):
        torch.jit.trace(traced, torch.randn(1, 27, 17, 3))


def test_training_config_refuses_native_attention_where_it_cannot_run() -> None:
    from kasf.training.engine import _training_attention

    with pytest.raises(ConfigError, match="training_attention"):
        load_config(None, ["training_attention=fast"])
    mlp = build("mlp-baseline")
    with pytest.raises(ConfigError, match="no attention"):
        _training_attention("native", mlp, torch.device("cpu"), main=False)
    assert _training_attention("auto", mlp, torch.device("cpu"), main=False) == "no"
    model = build("kasportsformer-t")
    assert _training_attention("auto", model, torch.device("cpu"), main=False) == "native"
    assert _training_attention("reference", model, torch.device("cpu"), main=False) == "reference"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        _training_attention("native", model, torch.device("meta"), main=False)
    assert _training_attention("auto", model, torch.device("meta"), main=False) == "reference"


KERNEL_SCRIPT = """
import torch
from kasf.anatomy_op import native
native.load()
from tests.test_attention_rows import reference_attention
g = torch.Generator().manual_seed(5)
worst = 0.0
for temporal in (False, True):
    packed = torch.randn(2, 27, 17, 96, generator=g, dtype=torch.float64)
    x = packed.float().requires_grad_()
    out = torch.ops.kasf.attention_rows(*x.split(32, -1), 4, temporal, 0.35)
    grad = torch.randn(out.shape, generator=g)
    (out * grad).sum().backward()
    y = packed.clone().requires_grad_()
    ref = reference_attention(*y.split(32, -1), 4, temporal, 0.35)
    (ref * grad.double()).sum().backward()
    worst = max(worst, float((out.double() - ref).abs().max()), float((x.grad.double() - y.grad).abs().max()))
print(torch.ops.kasf.lift_cpu_kernels(), worst)
"""


@pytest.mark.parametrize("kernels", ["avx2", "generic"])
def test_every_kernel_set_computes_the_attention(kernels: str) -> None:
    """The AVX2 and baseline builds (the AVX-512 one runs in the tests above on CPUs that have it)."""
    from kasf.hardware import cpu_flags

    missing = {"avx2": {"avx2", "fma"}, "generic": set()}[kernels] - set(cpu_flags())
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)} for the {kernels} kernels")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", KERNEL_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KASF_CPU_KERNELS": kernels}, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    name, error = done.stdout.split()
    assert name == kernels and float(error) < 5e-6
