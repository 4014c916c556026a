"""Shared test fixtures: where ../shared lives and the reference model built from its fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KASF_SHARED", REPO_ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "official_small.pt"
MOCAP_CLIPS = SHARED / "data" / "cmu_mocap" / "clips"
# TensorRT's public headers: $TENSORRT_INCLUDE_DIR (a user's TensorRT), else the copy in the shared material.
TENSORRT_INCLUDE = Path(os.environ.get("TENSORRT_INCLUDE_DIR", SHARED / "third_party" / "tensorrt-10.16" / "include"))


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared test material beside the repository; set KASF_SHARED)")
    return path


@pytest.fixture(scope="session")
def official_small() -> dict:
    """The reference implementation's small model: config, reference-layout checkpoint, inputs, outputs, rep."""
    return torch.load(need_shared(FIXTURE), map_location="cpu", weights_only=False)


@pytest.fixture(scope="session")
def reference_small_file(official_small, tmp_path_factory) -> Path:
    """The fixture's checkpoint written as a released file would be (reference layout, 'module.' keys)."""
    path = tmp_path_factory.mktemp("ref") / "kasportsformer-small.pth"
    torch.save(official_small["checkpoint"], path)
    return path


def perturbed_model(preset: str, layer_scale: float = 0.2, seed: int = 0, **overrides) -> torch.nn.Module:
    """A preset in eval mode with non-trivial layer scales and BatchNorm statistics.

    A freshly initialised model (layer scales 1e-5, identity BatchNorm) hides shape and export mistakes: its
    blocks barely change the signal.
    """
    from kasf.model import build

    torch.manual_seed(seed)
    model = build(preset, **overrides).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
            if hasattr(m, "layer_scale_1"):
                m.layer_scale_1.fill_(layer_scale)
                m.layer_scale_2.fill_(layer_scale)
    return model


def save_tiny_stream_checkpoint(folder: Path) -> Path:
    """A one-layer, dim-16 KASportsFormer checkpoint: random weights, for tests of the pipeline, not of accuracy."""
    import kasf
    from kasf.model import build

    torch.manual_seed(0)
    return kasf.save_checkpoint(folder / "tiny.pt",
                                build("kasportsformer-t", n_layers=1, dim_feat=16, dim_rep=32, num_heads=2))


def require_native_op() -> None:
    """Skip, naming kasf's own reason, where the native operator is not loaded; fail instead under
    KASF_REQUIRE_EXT (CI), where a missing operator is a broken build, not a machine without a compiler."""
    from kasf.anatomy_op import native

    if native.native_available():
        return
    reason = native.status()["reason"]
    if os.environ.get("KASF_REQUIRE_EXT", "").strip().lower() in {"1", "true", "yes", "on"}:
        pytest.fail(f"KASF_REQUIRE_EXT is set but the native operator is unavailable: {reason}")
    pytest.skip(f"native operator unavailable: {reason}")
