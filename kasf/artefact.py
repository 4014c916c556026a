"""Metadata every exported artefact carries, so the runtime needs nothing but the file (and its sidecar)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from kasf import __version__, skeleton
from kasf.conventions import NORMALIZATION_NAME

INPUT_NAME = "keypoints2d"
OUTPUT_NAME = "pose3d"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def build_metadata(config: Mapping[str, Any], preset: str | None, precision: str, anatomy_op: str,
                   batch: tuple[int, int, int] | None, source: str | None) -> dict[str, str]:
    """String-to-string metadata (the type ONNX metadata_props and Triton parameters hold)."""
    return {
        "kasf_version": __version__,
        "config": json.dumps(dict(config), sort_keys=True),
        "preset": preset or "",
        "skeleton": skeleton.SKELETON_NAME,
        "joint_names": ",".join(skeleton.JOINT_NAMES),
        "normalization": NORMALIZATION_NAME,
        "n_frames": str(config["n_frames"]),
        "precision": precision,
        "anatomy_op": anatomy_op,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "batch": "dynamic:" + ",".join(map(str, batch)) if batch else "fixed",
        "source_checkpoint": Path(source).name if source else "",
    }


def parse_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """Typed view of :func:`build_metadata`'s strings; raises if the artefact was not written by kasf."""
    missing = [k for k in ("config", "n_frames", "normalization", "precision") if k not in raw]
    if missing:
        raise ValueError(f"not a kasf artefact: metadata lacks {missing} (export it with kasf-export)")
    meta: dict[str, Any] = dict(raw)
    meta["config"] = json.loads(raw["config"])
    meta["n_frames"] = int(raw["n_frames"])
    return meta


def sidecar_path(artefact: str | Path) -> Path:
    """Engines hold no custom header: their metadata lives in ARTEFACT.json beside them."""
    return Path(str(artefact) + ".json")
