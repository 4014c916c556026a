"""Parity of an exported artefact with the PyTorch model, on the same inputs (random and real windows).

Tolerances depend on the precision, and why:
- fp32: an exported graph computes the same function in another kernel order, so most windows agree to ~1e-6.
  But KASportsFormer's temporal graph links each frame to the frames whose feature similarity reaches the row's
  4th largest; where two similarities are within rounding of each other, rounding decides the neighbour, and that
  window's output moves by up to ~1e-2. Such near-ties are common (still frames, deep layers), so a max-abs bound
  of 1e-4 would fail correct exports at random. The bound is therefore relative to PyTorch's own rounding noise:
  the artefact's mean abs error to PyTorch fp32 must be at most 10x PyTorch fp32's mean abs error to the same
  model in float64 (plus 1e-6), and its MPJPE change on real windows at most 0.1 mm. A wrong operator moves every
  window and fails both by orders of magnitude. Max abs is reported beside them.
- fp16 and int8: every number changes a little; what matters to a user is accuracy, so the bound is on the change
  of MPJPE against the 3D truth of real windows: at most 1 mm (the paper's models differ by several mm).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from torch import nn

from kasf import skeleton
from kasf.conventions import to_millimetres

NOISE_FLOOR_FACTOR = 10.0
NOISE_FLOOR_SLACK = 1e-6
MAX_MPJPE_CHANGE_MM = {"fp32": 0.1, "fp16": 1.0, "bf16": 1.0, "int8": 1.0}


@dataclass
class RealWindows:
    """Normalised input windows with what converts outputs to millimetres, and their 3D truth."""

    inputs: np.ndarray  # (N, T, 17, 3)
    image_wh: np.ndarray  # (N, 2)
    factor: np.ndarray  # (N, T) mm per pixel-scale unit
    truth_mm: np.ndarray  # (N, T, 17, 3) root-relative


@dataclass
class ParityReport:
    artefact: str
    backend: str
    precision: str
    windows_random: int
    windows_real: int
    max_abs: float
    mean_abs: float
    fp32_noise_mean_abs: float | None = None  # PyTorch fp32 vs float64, same inputs
    mean_joint_distance_mm: float | None = None
    mpjpe_reference_mm: float | None = None
    mpjpe_artefact_mm: float | None = None
    mpjpe_change_mm: float | None = None
    tolerance: dict[str, float] = field(default_factory=dict)
    passed: bool = False

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    def summary(self) -> str:
        mm = (f", MPJPE {self.mpjpe_reference_mm:.2f} -> {self.mpjpe_artefact_mm:.2f} mm "
              f"(change {self.mpjpe_change_mm:+.3f} mm; joints move {self.mean_joint_distance_mm:.3f} mm)") if self.mpjpe_change_mm is not None else ""
        verdict = "PASS" if self.passed else "FAIL"
        floor = (f" (PyTorch fp32 vs fp64: {self.fp32_noise_mean_abs:.2e})"
                 if self.fp32_noise_mean_abs is not None else "")
        return (f"{verdict} {Path(self.artefact).name} [{self.backend}, {self.precision}]: max abs "
                f"{self.max_abs:.2e}, mean abs {self.mean_abs:.2e}{floor} on {self.windows_random} random + "
                f"{self.windows_real} real windows{mm}")


def random_windows(count: int, n_frames: int, seed: int = 0) -> np.ndarray:
    """Plausible-range inputs: a skeleton-sized cloud drifting smoothly over time, confidences in [0.3, 1]."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-0.4, 0.4, size=(count, 1, skeleton.NUM_JOINTS, 2))
    drift = np.cumsum(rng.normal(0, 0.01, size=(count, n_frames, 1, 2)), axis=1)
    jitter = rng.normal(0, 0.005, size=(count, n_frames, skeleton.NUM_JOINTS, 2))
    conf = rng.uniform(0.3, 1.0, size=(count, n_frames, skeleton.NUM_JOINTS, 1))
    return np.concatenate([base + drift + jitter, conf], axis=-1).astype(np.float32)


def _to_mm(pred: np.ndarray, real: RealWindows) -> np.ndarray:
    return to_millimetres(pred, real.image_wh, real.factor)


def pytorch_references(model: "nn.Module", device: str = "cpu"
                       ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(reference, reference64): the model's own forward on ``device`` and a float64 copy on the CPU, the two
    callables :func:`check_parity` judges an artefact against."""
    import copy

    import torch

    model64 = copy.deepcopy(model).to("cpu").double()

    def reference(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(windows).to(device)).cpu().numpy()

    def reference64(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model64(torch.from_numpy(windows).double()).numpy()

    return reference, reference64


def check_parity(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
                 artefact: str, backend: str, precision: str, n_frames: int, real: RealWindows | None,
                 reference64: Callable[[np.ndarray], np.ndarray] | None = None, n_random: int = 8,
                 seed: int = 0) -> ParityReport:
    """Run both on the same windows and judge the candidate by the tolerance of its precision.

    ``reference64`` (the PyTorch model in float64) measures the rounding noise floor an fp32 artefact is judged
    against; it is required for fp32.
    """
    rand = random_windows(n_random, n_frames, seed)
    inputs = rand if real is None else np.concatenate([rand, real.inputs])
    ref_out = reference(inputs).astype(np.float64)
    cand_out = candidate(inputs)
    diff = np.abs(ref_out - cand_out.astype(np.float64))
    report = ParityReport(artefact=str(artefact), backend=backend, precision=precision, windows_random=len(rand),
                          windows_real=0 if real is None else len(real.inputs), max_abs=float(diff.max()),
                          mean_abs=float(diff.mean()))
    tolerance = {"mpjpe_change_mm": MAX_MPJPE_CHANGE_MM[precision]}
    passed = True
    if precision == "fp32":
        if reference64 is None:
            raise ValueError("an fp32 parity check needs the float64 reference for its noise floor")
        report.fp32_noise_mean_abs = float(np.abs(ref_out - reference64(inputs)).mean())
        tolerance["mean_abs"] = NOISE_FLOOR_FACTOR * report.fp32_noise_mean_abs + NOISE_FLOOR_SLACK
        passed = report.mean_abs <= tolerance["mean_abs"]
    if real is not None:
        ref_mm = _to_mm(ref_out[len(rand):], real)
        cand_mm = _to_mm(cand_out[len(rand):], real)
        report.mean_joint_distance_mm = float(np.linalg.norm(ref_mm - cand_mm, axis=-1).mean())
        report.mpjpe_reference_mm = float(np.linalg.norm(ref_mm - real.truth_mm, axis=-1).mean())
        report.mpjpe_artefact_mm = float(np.linalg.norm(cand_mm - real.truth_mm, axis=-1).mean())
        report.mpjpe_change_mm = report.mpjpe_artefact_mm - report.mpjpe_reference_mm
        passed = passed and abs(report.mpjpe_change_mm) <= tolerance["mpjpe_change_mm"]
    elif precision != "fp32":
        raise ValueError(f"judging a {precision} artefact needs real windows with 3D truth")
    report.tolerance = tolerance
    report.passed = bool(passed)
    return report
