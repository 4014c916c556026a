"""bf16 on the CPU with weights converted once, and precision='auto' (kasf.runtime.cpu_bf16, cpu_choice)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import kasf
from kasf.export.parity import check_parity
from kasf.export.windows import load_real_windows
from kasf.hardware import cpu_has_native_bf16
from kasf.runtime import Lifter
from kasf.runtime import cpu_choice
from kasf.runtime.cpu_bf16 import Bf16Island, with_bf16_matmuls
from kasf.runtime.cpu_choice import BF16_MIN_WIDTH, CpuFeatures, choose_cpu_precision

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU has neither AVX512-BF16 nor AMX")


@pytest.mark.parametrize("features, width, expected", [
    (CpuFeatures(native_bf16=False, onnxruntime=False), 128, "fp32"),
    (CpuFeatures(native_bf16=True, onnxruntime=False), BF16_MIN_WIDTH - 1, "fp32"),
    (CpuFeatures(native_bf16=True, onnxruntime=False), BF16_MIN_WIDTH, "bf16"),
    (CpuFeatures(native_bf16=True, onnxruntime=True), 128, "bf16"),
])
def test_choice_follows_the_features(features, width, expected):
    choice = choose_cpu_precision(features, width)
    assert choice.precision == expected
    assert choice.reason.startswith(f"auto picked PyTorch {expected}")
    assert ("export_onnxruntime_cpu" in choice.reason) == features.onnxruntime


def test_conversion_leaves_the_reference_alone_and_keeps_the_head_float():
    model = kasf.load_checkpoint("demo").eval()
    converted = with_bf16_matmuls(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    islands = [m for m in converted.modules() if isinstance(m, Bf16Island)]
    assert islands and all(p.dtype == torch.bfloat16 for m in islands for p in m.parameters())
    assert converted.head.weight.dtype == torch.float32 and converted.norm.weight.dtype == torch.float32
    with torch.inference_mode():
        assert converted(torch.zeros(2, 27, 17, 3)).dtype == torch.float32


@needs_bf16
@pytest.mark.parametrize("inference_path", ["reference", "fused"])
def test_bf16_lifter_keeps_reduced_precision_parity(inference_path):
    """kasf-export's bound for reduced precision (MPJPE change <= 1 mm); casting the whole model to bf16 failed it
    (+1.1 mm, joints moved 6 mm), so this would catch a conversion that reaches the residual stream or head."""
    fp32 = Lifter.load("demo", device="cpu", inference_path=inference_path)
    bf16 = Lifter.load("demo", device="cpu", precision="bf16", inference_path=inference_path)
    report = check_parity(fp32.predict, bf16.predict, "demo", "torch", "bf16", 27, load_real_windows(27))
    assert report.passed, report.summary()
    assert report.mean_joint_distance_mm < 1.0, report.summary()


@pytest.mark.parametrize("native_bf16, threshold, expected", [(True, 1, "bf16"), (True, 10**9, "fp32"),
                                                              (False, 1, "fp32")])
def test_auto_precision_says_what_it_picked(monkeypatch, caplog, native_bf16, threshold, expected):
    if expected == "bf16" and not cpu_has_native_bf16():
        pytest.skip("running the bf16 pick needs native bf16 here")
    monkeypatch.setattr(cpu_choice, "detect_cpu_features", lambda: CpuFeatures(native_bf16, onnxruntime=False))
    monkeypatch.setattr(cpu_choice, "BF16_MIN_WIDTH", threshold)
    with caplog.at_level(logging.INFO, logger="kasf.runtime"):
        lifter = Lifter.load("demo", device="cpu", precision="auto")
    assert lifter.precision == expected and lifter.choice.startswith(f"auto picked PyTorch {expected}")
    assert [r.getMessage() for r in caplog.records if r.name == "kasf.runtime"] == [lifter.choice]
    out = lifter.predict(np.zeros((1, 27, 17, 3), np.float32))
    assert out.dtype == np.float32 and out.shape == (1, 27, 17, 3)


def test_explicit_precision_has_no_choice():
    assert Lifter.load("demo", device="cpu", precision="fp32").choice is None


@pytest.mark.parametrize("kernel, width, expected", [
    ("amx", cpu_choice.NATIVE_AMX_MIN_WIDTH, "bf16"), ("amx", cpu_choice.NATIVE_AMX_MIN_WIDTH - 1, "fp32"),
    ("avx512_bf16", 512, "fp32"), (None, 512, "fp32"),
])
def test_native_path_choice_takes_bf16_only_on_amx(kernel, width, expected):
    features = CpuFeatures(native_bf16=kernel is not None, onnxruntime=True, native_path_bf16=kernel)
    choice = choose_cpu_precision(features, width, native_path=True)
    assert choice.precision == expected and choice.reason.startswith(f"auto picked native {expected}")
