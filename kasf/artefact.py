"""The format of kasf's exported artefacts: the metadata every ONNX file and engine carries, written and read here.

Why one module below export and runtime: kasf-export writes what the Lifter reads (tensor names, the model's
config, normalisation, precision), so both sides take the names and keys from the same place and the runtime needs
nothing but the file (and, for an engine, its sidecar JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from kasf import skeleton
from kasf._version import __version__
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


def write_sidecar(artefact: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write the metadata of an engine to its sidecar JSON; returns the sidecar's path."""
    path = sidecar_path(artefact)
    path.write_text(json.dumps(dict(metadata), indent=2, sort_keys=True))
    return path


def read_sidecar(artefact: str | Path) -> dict[str, str]:
    """The raw metadata of an engine's sidecar JSON (see :func:`parse_metadata` for the typed view)."""
    return json.loads(sidecar_path(artefact).read_text())


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file (the graph and external weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
