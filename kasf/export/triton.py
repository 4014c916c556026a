"""A Triton Inference Server model repository, so many camera streams can share one GPU server.

Layout written::

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx     (platform onnxruntime_onnx)   or   REPO/NAME/1/model.plan (tensorrt_plan)

Dynamic batching merges the windows of concurrent streams into one batch within ``max_queue_delay_us``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

from kasf.artefact import INPUT_NAME, OUTPUT_NAME

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".engine": ("tensorrt_plan", "model.plan")}


def _preferred_batches(max_batch: int) -> list[int]:
    sizes = [b for b in (4, 8, 16, 32, 64) if b <= max_batch]
    return sizes or [max_batch]


def model_config_text(name: str, platform: str, n_frames: int, max_batch: int, metadata: Mapping[str, str],
                      max_queue_delay_us: int = 2000, fp16_tensorrt_accelerator: bool = False,
                      instance_kind: str = "KIND_GPU") -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig)."""
    dims = f"[ {n_frames}, 17, 3 ]"
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        f'input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: {dims} }} ]',
        f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: {dims} }} ]',
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, _preferred_batches(max_batch)))} ]",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: 1 kind: {instance_kind} }} ]",
    ]
    if fp16_tensorrt_accelerator and platform == "onnxruntime_onnx":
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator : [ {",
            '  name : "tensorrt"',
            '  parameters { key: "precision_mode" value: "FP16" }',
            "} ] } }",
        ]
    for key in ("kasf_version", "preset", "normalization", "n_frames", "precision", "skeleton"):
        if metadata.get(key):
            value = str(metadata[key]).replace('"', "'")
            lines.append(f'parameters {{ key: "kasf_{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_repository(repo: str | Path, name: str, artefact: str | Path, n_frames: int, max_batch: int,
                     metadata: Mapping[str, str], fp16: bool = False) -> Path:
    """Copy the artefact into REPO/NAME/1/ and write config.pbtxt beside it; returns the model folder."""
    artefact = Path(artefact)
    if artefact.suffix not in PLATFORMS:
        raise ValueError(f"Triton serves .onnx or .engine files, not {artefact.name}")
    if max_batch < 1:
        raise ValueError("Triton's dynamic batching needs a dynamic batch of at least 1")
    platform, filename = PLATFORMS[artefact.suffix]
    model_dir = Path(repo) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artefact, model_dir / "1" / filename)
    text = model_config_text(name, platform, n_frames, max_batch, metadata,
                             fp16_tensorrt_accelerator=fp16 and platform == "onnxruntime_onnx")
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir
