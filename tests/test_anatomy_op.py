"""The native anatomy operator (cpp_ext) against the pure-PyTorch Bone Extractor, its autograd and registration."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from kasf import skeleton
from kasf.anatomy_op import features
from kasf.anatomy_op import native as native_op
from kasf.anatomy_op.features import bone_features
from tests.conftest import require_native_op

PROXIMAL = torch.tensor(skeleton.BONE_PROXIMAL)
DISTAL = torch.tensor(skeleton.BONE_DISTAL)


def pure(joints: torch.Tensor) -> torch.Tensor:
    return bone_features(joints[..., :2], PROXIMAL.to(joints.device), DISTAL.to(joints.device))


def native(joints: torch.Tensor) -> torch.Tensor:
    return torch.ops.kasf.anatomy_features(joints)


def _inputs(dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 9, 17, 3, generator=g, dtype=torch.float64)
    zero_bones = base.clone()
    zero_bones[:, :, 3] = zero_bones[:, :, 2]  # right ankle on the right knee: bone 2 has length 0
    zero_bones[:, 0, :] = 1.5                  # a frame with every joint at one point: all bones zero
    repeated = base[:, :1].expand(3, 9, 17, 3)  # the same frame repeated over time
    cases = {
        "random": base,
        "zero_length_bones": zero_bones,
        "repeated_frames": repeated,
        "large_coordinates": base * 1e4 + 5e3,      # pixels of a 4K frame and beyond
        "tiny_coordinates": base * 1e-6,
        "underflowing_coordinates": base * 1e-30,   # x*x underflows: guarded as zero length, as in the pure path
        "xy_only": base[..., :2],
        "batchless": base[0, 0],
    }
    return {k: v.to(dtype=dtype, device=device).contiguous() for k, v in cases.items()}


@pytest.mark.parametrize("case", list(_inputs()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_pure_pytorch(case: str, dtype: torch.dtype) -> None:
    require_native_op()
    x = _inputs(dtype)[case]
    expected = pure(x)
    got = native(x)
    assert got.shape == x.shape[:-1] + (3,)
    assert got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    # Bone rows: the same operations in the same order. The mean row may sum in another order, so its error is
    # measured against the size of the values averaged.
    torch.testing.assert_close(got[..., :16, :], expected[..., :16, :], rtol=tol, atol=0)
    finite = expected[..., :16, :][expected[..., :16, :].isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(got[..., 16, :], expected[..., 16, :], rtol=tol, atol=tol * scale)


def test_zero_length_guard_reads_length_one() -> None:
    require_native_op()
    x = torch.zeros(1, 17, 2)
    x[0, :, 0] = torch.arange(17.0)
    x[0, 3] = x[0, 2]  # bone 2 (knee -> ankle) has zero length
    out = native(x)
    assert out[0, 2].tolist() == [0.0, 0.0, 1.0]
    torch.testing.assert_close(out[0, 16], out[0, :16].mean(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_pure_pytorch(dtype: torch.dtype) -> None:
    require_native_op()
    x = _inputs(dtype)["random"] * 100
    torch.testing.assert_close(native(x).float(), pure(x).float(), rtol=2e-2, atol=2e-2)


def test_backward_matches_pure_pytorch_autograd() -> None:
    require_native_op()
    for case, x in _inputs(torch.float64).items():
        if case == "underflowing_coordinates":
            continue  # float64 does not underflow there: nothing new
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        weight = torch.randn(x.shape[:-1] + (3,), dtype=torch.float64)
        (native(a) * weight).sum().backward()
        (pure(b) * weight).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=lambda m: f"{case}: {m}")


def test_gradcheck_float64() -> None:
    require_native_op()
    x = torch.randn(2, 3, 17, 3, dtype=torch.float64)
    # No zero-length bone here: the guard is a kink that finite differences cannot measure; its gradient is
    # compared with autograd of the pure path in test_backward_matches_pure_pytorch_autograd.
    assert torch.autograd.gradcheck(native, (x.requires_grad_(True),), eps=1e-6, atol=1e-7)


def test_opcheck() -> None:
    require_native_op()
    x = torch.randn(2, 5, 17, 3)
    torch.library.opcheck(torch.ops.kasf.anatomy_features.default, (x,))
    torch.library.opcheck(torch.ops.kasf.anatomy_features.default, (x.double().requires_grad_(True),))


@pytest.mark.parametrize("bad, message", [
    (torch.randn(17), "rank"),
    (torch.randn(2, 16, 3), "17 joints"),
    (torch.randn(2, 17, 1), "x and y"),
    (torch.randint(0, 5, (2, 17, 3)), "float32"),
    (torch.randn(2, 3, 17).transpose(1, 2), "contiguous"),
])
def test_bad_input_has_a_clear_message(bad: torch.Tensor, message: str) -> None:
    require_native_op()
    with pytest.raises(RuntimeError, match=message):
        native(bad)


def test_kernel_bone_table_is_the_skeleton_module() -> None:
    """Moving one joint changes exactly the bones that skeleton.py says touch it."""
    require_native_op()
    x = torch.randn(17, 2, dtype=torch.float64)
    base = native(x)
    for j in range(17):
        moved = x.clone()
        moved[j] += 0.5
        changed = {k for k in range(16) if not torch.equal(native(moved)[k], base[k])}
        expected = {k for k in range(16) if j in (skeleton.BONE_PROXIMAL[k], skeleton.BONE_DISTAL[k])}
        assert changed == expected, j


def test_model_uses_the_op_and_matches_the_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    require_native_op()
    from kasf.model import build

    torch.manual_seed(0)
    model = build("kasportsformer-t").eval()
    x = torch.randn(2, 27, 17, 3)
    calls: list[int] = []
    x_native = x.clone().requires_grad_(True)
    out_native = model(x_native)
    out_native.square().mean().backward()
    grads_native = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    monkeypatch.setattr(features, "use_native", lambda joints: calls.append(1) or False)
    x_pure = x.clone().requires_grad_(True)
    out_pure = model(x_pure)
    out_pure.square().mean().backward()
    assert calls, "the model did not ask kasf.anatomy_op which path to take"
    assert (out_native - out_pure).abs().max().item() < 1e-6
    torch.testing.assert_close(x_native.grad, x_pure.grad, rtol=1e-5, atol=1e-7)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_native[name], p.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_model_graph_contains_the_op() -> None:
    require_native_op()
    from kasf.model import KASportsFormer

    model = KASportsFormer(n_layers=1, dim_feat=16, dim_rep=32, num_heads=2, n_frames=9).eval()
    traced = torch.jit.trace(model, torch.randn(1, 9, 17, 3))
    assert "kasf::anatomy_features" in str(traced.inlined_graph)


def test_official_fixture_with_the_op(official_small: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference model's outputs through the native op: 1e-5 from the fixture, 1e-6 from the pure path."""
    require_native_op()
    from kasf.model import KASportsFormer

    model = KASportsFormer(**official_small["config"]).eval()
    model.load_state_dict({k.removeprefix("module."): v for k, v in official_small["checkpoint"]["model"].items()})
    with torch.no_grad():
        out_native = model(official_small["inputs"])
        monkeypatch.setattr(features, "use_native", lambda joints: False)
        out_pure = model(official_small["inputs"])
    assert (out_native - official_small["outputs"]).abs().max().item() < 1e-5
    assert (out_native - out_pure).abs().max().item() < 1e-6


def test_torch_compile_with_the_op() -> None:
    """Whole model in one graph (aot_eager: fake kernel and autograd), and the op under inductor with backward."""
    require_native_op()
    from kasf.model import KASportsFormer
    from kasf.model.anatomy import BoneExtractor

    torch.manual_seed(0)
    model = KASportsFormer(n_layers=1, dim_feat=16, dim_rep=32, num_heads=2, n_frames=9).eval()
    x = torch.randn(2, 9, 17, 3)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)

    small = torch.nn.Sequential(BoneExtractor(), torch.nn.Linear(3, 4))
    xi = torch.randn(3, 9, 17, 3, requires_grad=True)
    xc = xi.detach().clone().requires_grad_(True)
    small(xi).tanh().sum().backward()
    torch.compile(small, fullgraph=True)(xc).tanh().sum().backward()
    torch.testing.assert_close(xc.grad, xi.grad, rtol=1e-5, atol=1e-6)


def test_first_forward_of_a_fresh_process_compiles_in_one_graph() -> None:
    """kasf-train compile=true compiles the model before any eager forward has run: the native-or-not decision
    (file reads, importing kasf._C) must already be made when the model is built, or dynamo breaks the graph."""
    code = (
        "import torch\n"
        "from kasf.model import KASportsFormer\n"
        "model = KASportsFormer(n_layers=1, dim_feat=16, dim_rep=32, num_heads=2, n_frames=9)\n"
        "torch.compile(model, fullgraph=True, backend='eager')(torch.randn(2, 9, 17, 3)).sum().backward()\n"
        "print('one graph')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "one graph" in done.stdout, done.stderr[-3000:]


def test_fallback_warns_once_and_env_reports_it() -> None:
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from kasf.model.anatomy import BoneExtractor\n"
        "m = BoneExtractor()\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3): m(torch.randn(2, 17, 3))\n"
        "print(sum('pure-PyTorch' in str(x.message) for x in w))\n"
        "from kasf.info import main\n"
        "main(['--env'])\n"
    )
    env = {**os.environ, "KASF_NO_EXT": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "1"
    assert "anatomy_path: pure PyTorch" in out
    assert "KASF_NO_EXT is set" in out


def test_env_reports_native_path() -> None:
    require_native_op()
    out = subprocess.run([sys.executable, "-m", "kasf.info", "--env"], capture_output=True, text=True,
                         check=True).stdout
    assert "anatomy_path: native C++ operator" in out
    assert "cpu_kernels: True" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")
def test_cuda_kernels_match_cpu() -> None:
    require_native_op()
    if not native_op.cuda_kernels_built():
        pytest.skip(f"the extension was built without CUDA kernels: {native_op.status()['reason']}")
    for case, x in _inputs().items():
        torch.testing.assert_close(native(x.cuda()).cpu(), native(x), rtol=1e-6, atol=1e-7, msg=lambda m: case + m)
    x = torch.randn(4, 27, 17, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(native, (x,))


def test_status_never_claims_a_build_that_is_not_there(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A GPU install whose compile failed leaves a build record but no kasf._C: that is 'not built', with why."""
    import json

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kasf._C" else real_find_spec(name, *a))
    monkeypatch.delenv("KASF_NO_EXT", raising=False)
    record = tmp_path / "_build_info.json"
    monkeypatch.setattr(native_op, "_BUILD_INFO", record)
    record.write_text(json.dumps({"built": False, "reason": "the build of C++ CPU and CUDA kernels was started but "
                                                          "did not finish"}))
    loaded, reason = native_op._try_load()
    assert not loaded and reason.startswith("native extension not built: the build of C++ CPU and CUDA kernels")
    record.write_text(json.dumps({"built": True, "reason": "C++ CPU kernels only"}))  # a stale record
    loaded, reason = native_op._try_load()
    assert not loaded and reason.startswith("native extension not built: this install has no kasf._C")
    assert "built but" not in reason


def test_status_says_failed_to_load_when_the_library_will_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def refuse_native(name, *args, **kwargs):
        if name == "kasf._C":
            raise ImportError("libc10_cuda.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delenv("KASF_NO_EXT", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(builtins, "__import__", refuse_native)
    loaded, reason = native_op._try_load()
    assert not loaded and reason == "native extension failed to load: libc10_cuda.so: cannot open shared object file"
