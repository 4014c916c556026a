"""The native CPU path with bf16 products (kasf::lift_cpu with bf16_pairs weights): AMX and AVX512-BF16 kernels."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kasf.export.parity import check_parity
from kasf.export.windows import load_real_windows
from kasf.model.native_cpu import bf16_pairs, pack_lifter
from tests.conftest import perturbed_model, require_native_op

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _native() -> None:
    require_native_op()


def _bf16_kernel() -> str | None:
    return torch.ops.kasf.lift_cpu_bf16_kernels() or None


needs_bf16 = pytest.mark.skipif("not _bf16_kernel()", reason="this CPU has neither AMX-BF16 nor AVX512-BF16")


def test_pair_layout_by_hand() -> None:
    """Value (k, n) of a (K, N) weight at [(k // 2) * 2N + 2n + k % 2], K padded with zero rows to 32."""
    k, n = 3, 16
    weight = torch.arange(k * n, dtype=torch.float32).reshape(k, n)  # small integers: exact in bf16
    packed = bf16_pairs(weight)
    assert packed.dtype == torch.bfloat16 and packed.numel() == 32 * n
    assert packed[0].item() == weight[0, 0] and packed[1].item() == weight[1, 0]
    assert packed[2 * 5].item() == weight[0, 5] and packed[2 * 5 + 1].item() == weight[1, 5]
    assert packed[2 * n + 2 * 7].item() == weight[2, 7] and packed[2 * n + 2 * 7 + 1].item() == 0.0
    assert not packed[4 * n:].float().any()
    assert bf16_pairs(torch.tensor([[1.0 + 2 ** -9]] * 2)).float().tolist()[:2] == [1.0, 1.0]  # nearest even


def _emulated_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """The reference formulation with what the native bf16 path rounds rounded the same way: every matrix
    product's weight and input to bf16, sums in float32. The 3-wide embeddings and the fusion stay float32."""
    emulated = copy.deepcopy(model).set_inference_path("reference")

    def round_input(module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0].bfloat16().float(),) + args[1:]

    with torch.no_grad():
        for name, module in emulated.named_modules():
            leaf = name.split(".")[-1]
            if isinstance(module, torch.nn.Linear) and not leaf.endswith("_embed") and not leaf.startswith("fusion"):
                module.weight.copy_(module.weight.bfloat16().float())
                module.register_forward_pre_hook(round_input)
    return emulated


BF16_SCRIPT = """
import copy, torch
from tests.conftest import perturbed_model
from tests.test_native_cpu_bf16 import _emulated_bf16
for preset in ("kasportsformer-t", "motionagformer-t"):
    model = perturbed_model(preset)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 27, 17, 3, generator=g)
    x[..., 2] = torch.rand(3, 27, 17, generator=g)
    with torch.no_grad():
        reference = model(x)
        emulated = _emulated_bf16(model)(x)
        native = copy.deepcopy(model).set_inference_path("native", precision="bf16")(x)
    print(torch.ops.kasf.lift_cpu_bf16_kernels(), float((native - reference).abs().max()),
          float((native - reference).abs().mean()), float((native - emulated).abs().mean()))
"""


@pytest.mark.parametrize("kernel", ["amx", "avx512_bf16"])
def test_each_bf16_kernel_rounds_where_it_claims(kernel: str) -> None:
    """Each kernel, forced with KASF_CPU_BF16, against the fp32 model (a wrong pair layout or a dropped K block
    moves outputs by ~1e-1) and against the model with the same bf16 roundings emulated: the native output must
    sit much nearer the emulation than the fp32 model, i.e. it rounds the products' inputs and weights and
    nothing else. (Not bit-equal: the sums run in another order, and a value near a rounding boundary can round
    the other way and carry on.)"""
    from kasf.hardware import cpu_flags

    flags = set(cpu_flags())
    if kernel == "amx" and not {"amx_tile", "amx_bf16"} <= flags:
        pytest.skip("this CPU has no AMX-BF16 tiles")
    if "avx512_bf16" not in flags:
        pytest.skip("this CPU has no AVX512-BF16")
    done = subprocess.run([sys.executable, "-c", BF16_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KASF_CPU_BF16": kernel}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in done.stdout.strip().splitlines():
        name, max_error, mean_error, mean_to_emulation = line.split()
        assert name == kernel
        assert float(max_error) < 0.05 and float(mean_error) < 2e-3
        assert float(mean_to_emulation) < 0.4 * float(mean_error)


def test_unknown_bf16_kernel_is_reported_then_refused() -> None:
    """kasf-info --env names the bad setting; the operator refuses it."""
    done = subprocess.run([sys.executable, "-c", "import kasf.anatomy_op.native as n, torch;"
                           "print(n.status()['native_cpu_forward']); torch.ops.kasf.lift_cpu_bf16_kernels()"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "KASF_CPU_BF16": "avx9"},
                          cwd=ROOT)
    assert "; bf16 products: unusable: KASF_CPU_BF16 must be amx or avx512_bf16" in done.stdout
    assert done.returncode != 0 and "KASF_CPU_BF16 must be amx or avx512_bf16" in done.stderr


@needs_bf16
def test_demo_checkpoint_keeps_reduced_precision_parity() -> None:
    """kasf-export's bf16 rule on the bundled sample (MPJPE within 1 mm), and joints moved < 1 mm on average."""
    from kasf.runtime import Lifter

    fp32 = Lifter.load("demo", device="cpu", inference_path="native")
    bf16 = Lifter.load("demo", device="cpu", inference_path="native", precision="bf16")
    assert bf16.metadata["inference_path"] == "native" and bf16.precision == "bf16"
    report = check_parity(fp32.predict, bf16.predict, "demo", "native", "bf16", 27, load_real_windows(27))
    assert report.passed, report.summary()
    assert report.mean_joint_distance_mm < 1.0, report.summary()


@needs_bf16
def test_operator_checks_the_bf16_products() -> None:
    model = perturbed_model("kasportsformer-t", n_layers=1)
    weights, sizes, config, products = pack_lifter(model, "bf16")
    x = torch.randn(1, 27, 17, 3)
    with pytest.raises(RuntimeError, match="bf16 products ended before"):
        torch.ops.kasf.lift_cpu(x, weights, sizes, config, products[:-1])
    with pytest.raises(RuntimeError, match="bf16 product values left over"):
        torch.ops.kasf.lift_cpu(x, weights, sizes, config, torch.cat([products, products[:1]]))
    with pytest.raises(RuntimeError, match="one flat contiguous bfloat16"):
        torch.ops.kasf.lift_cpu(x, weights, sizes, config, products.float())
    torch.library.opcheck(torch.ops.kasf.lift_cpu.default, (x, weights, sizes, config, products),
                          test_utils=("test_schema", "test_faketensor"))


def test_bf16_is_refused_by_name_where_it_cannot_run() -> None:
    model = perturbed_model("kasportsformer-t")
    with pytest.raises(ValueError, match="applies to the 'native' inference path"):
        model.set_inference_path("fused", precision="bf16")
    with pytest.raises(ValueError, match="fp32 or bf16, not fp16"):
        model.set_inference_path("native", precision="fp16")
    if _bf16_kernel() is None:
        with pytest.raises(ValueError, match="AMX-BF16 or AVX512-BF16"):
            model.set_inference_path("native", precision="bf16")


@needs_bf16
def test_auto_precision_on_the_native_path_follows_the_cpu(monkeypatch) -> None:
    """precision='auto' with the native path: bf16 only where AMX pays (width >= NATIVE_AMX_MIN_WIDTH), and the
    Lifter says which and why."""
    from kasf.runtime import Lifter, cpu_choice

    monkeypatch.setattr(cpu_choice, "NATIVE_AMX_MIN_WIDTH", 64)
    narrow = Lifter.load("demo", device="cpu", precision="auto", inference_path="auto")
    assert narrow.precision == "fp32" and narrow.metadata["inference_path"] == "native"
    assert narrow.choice.startswith("auto picked native fp32")
    monkeypatch.setattr(cpu_choice, "NATIVE_AMX_MIN_WIDTH", 32)
    picked = Lifter.load("demo", device="cpu", precision="auto", inference_path="auto")
    windows = load_real_windows(27).inputs[:2]
    if _bf16_kernel() == "amx":
        assert picked.precision == "bf16" and picked.metadata["inference_path"] == "native"
        assert "on AMX tiles" in picked.choice and "bf16 products on amx" in picked.choice
        assert np.abs(picked.predict(windows) - narrow.predict(windows)).max() < 0.05
    else:  # AVX512-BF16 only: the native path stays fp32 and says why
        assert picked.precision == "fp32" and "dot products only" in picked.choice
