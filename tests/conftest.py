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
