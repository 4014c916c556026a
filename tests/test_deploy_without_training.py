"""kasf-stream and kasf-export run where the training code cannot be imported (a streaming box, an export job).

Each CLI runs in a fresh interpreter whose meta path refuses ``kasf.training`` and its submodules, through its
console-script function (setup.py's entry point), on the bundled sample and the bundled demo checkpoint. The
import rules themselves are checked statically in test_layering.py; this proves the real code paths, including
imports made only while running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# python -c WRAPPER MODULE ARGS...: blocks kasf.training, runs MODULE.main(ARGS), then checks nothing of it loaded.
WRAPPER = """
import importlib, importlib.abc, sys

class NoTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kasf.training" or name.startswith("kasf.training."):
            raise ImportError(f"{name} is blocked: this command must not need the training code")
        return None

sys.meta_path.insert(0, NoTraining())
status = importlib.import_module(sys.argv[1]).main(sys.argv[2:])
loaded = sorted(m for m in sys.modules if m.startswith("kasf.training"))
assert not loaded, loaded
assert "kasf.training" not in sys.modules
sys.exit(status)
"""


def run_without_training(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", WRAPPER, module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_blocker_blocks(tmp_path: Path) -> None:
    result = run_without_training("kasf.training.cli", [], tmp_path)
    assert result.returncode != 0 and "kasf.training is blocked" in result.stderr


def test_stream_runs_the_sample_without_training(tmp_path: Path) -> None:
    result = run_without_training("kasf.runtime.cli", ["--max-frames", "40", "--flip", "--out", "poses.jsonl"],
                                  tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MPJPE vs the sample's 3D truth" in result.stdout + result.stderr
    assert (tmp_path / "poses.jsonl").read_text().count("\n") == 40


def test_export_demo_runs_without_training(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")
    result = run_without_training("kasf.export.cli", ["demo", "-o", str(tmp_path / "demo.onnx")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo.onnx").exists() and (tmp_path / "demo.onnx.parity.json").exists()
    assert "PASS demo.onnx" in result.stdout
