"""Triton Inference Server model repositories, so many camera streams share one server that batches their windows.

``kasf-export --format triton -o OUT`` writes two repositories of the same model, one per kind of server::

    OUT/nvidia/NAME/config.pbtxt + 1/model.onnx           NVIDIA's Triton containers (ONNX Runtime backend,
                                                           TensorRT accelerator with --half)
    OUT/python/NAME/config.pbtxt + 1/model.py + 1/model.onnx
                                                           any Triton with the Python backend (e.g. the
                                                           nvidia-pytriton wheel): kasf's own Lifter inside

Serve one with ``tritonserver --model-repository OUT/nvidia`` (or ``OUT/python``); clients address both the
same way, ``Lifter.load("triton://HOST:8001/NAME")``. Every config carries kasf's metadata as ``kasf_*``
parameters, which is how the client learns n_frames, skeleton, normalisation and precision from the server.

Batching is tuned for streaming: a camera at 30 fps sends one window per person every 33 ms, so the scheduler
may hold a request at most ``MAX_QUEUE_DELAY_US`` (1 ms, 3 % of a frame) to let windows of other streams join it.
While the model is busy, requests queue anyway and the next batch takes them all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from kasf.artefact import INPUT_NAME, OUTPUT_NAME
from kasf.runtime.triton_client import PARAMETER_PREFIX  # the client reads what this writes

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".engine": ("tensorrt_plan", "model.plan")}
MAX_QUEUE_DELAY_US = 1000
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")


def _preferred_batches(max_batch: int) -> list[int]:
    sizes = [b for b in (4, 8, 16, 32, 64) if b <= max_batch]
    return sizes or [max_batch]


def _quote(value: str) -> str:
    """A protobuf text-format string literal (metadata holds JSON, with quotes of its own)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def model_config_text(name: str, n_frames: int, max_batch: int, metadata: Mapping[str, str],
                      platform: str | None = None, backend: str | None = None,
                      max_queue_delay_us: int = MAX_QUEUE_DELAY_US, preferred_batches: bool = True,
                      fp16_tensorrt_accelerator: bool = False, instance_kind: str = "KIND_GPU") -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig); give ``platform`` or ``backend``."""
    if (platform is None) == (backend is None):
        raise ValueError("a Triton model has a platform (onnxruntime_onnx, tensorrt_plan) or a backend (python)")
    dims = f"[ {n_frames}, 17, 3 ]"
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"' if platform else f'backend: "{backend}"',
        f"max_batch_size: {max_batch}",
        f'input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: {dims} }} ]',
        f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: {dims} }} ]',
        "dynamic_batching {",
    ]
    if preferred_batches:  # the sizes TensorRT's optimisation profiles are tuned for
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, _preferred_batches(max_batch)))} ]")
    lines += [
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
    for key, value in metadata.items():
        if value != "":
            lines.append(f"parameters {{ key: {_quote(PARAMETER_PREFIX + key)} "
                         f"value: {{ string_value: {_quote(str(value))} }} }}")
    return "\n".join(lines) + "\n"


def python_path_of_this_environment() -> list[str]:
    """Folders the Python backend must import from: kasf's source root and the site-packages of its dependencies."""
    import numpy
    import onnxruntime

    import kasf

    folders = [Path(kasf.__file__).resolve().parents[1], Path(numpy.__file__).resolve().parents[1],
               Path(onnxruntime.__file__).resolve().parents[1]]
    return list(dict.fromkeys(str(f) for f in folders))


def write_nvidia_model(repo: str | Path, name: str, artefact: str | Path, n_frames: int, max_batch: int,
                       metadata: Mapping[str, str], fp16: bool = False) -> Path:
    """REPO/NAME for NVIDIA's containers: the artefact under the ONNX Runtime or TensorRT backend, on the GPU."""
    artefact = Path(artefact)
    if artefact.suffix not in PLATFORMS:
        raise ValueError(f"Triton serves .onnx or .engine files, not {artefact.name}")
    platform, filename = PLATFORMS[artefact.suffix]
    model_dir = _model_dir(repo, name, max_batch)
    shutil.copyfile(artefact, model_dir / "1" / filename)
    text = model_config_text(name, n_frames, max_batch, metadata, platform=platform,
                             fp16_tensorrt_accelerator=fp16 and platform == "onnxruntime_onnx")
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def write_python_model(repo: str | Path, name: str, onnx: str | Path, n_frames: int, max_batch: int,
                       metadata: Mapping[str, str], python_path: Sequence[str] | None = None,
                       instance_kind: str = "KIND_CPU", threads: int | None = None) -> Path:
    """REPO/NAME for any Triton with the Python backend: kasf's Lifter runs the ONNX (KIND_GPU: the CUDA path).

    ``python_path`` lists the folders holding kasf and its dependencies as the server's machine sees them
    (default: this environment's, right when the server runs here).
    """
    onnx = Path(onnx)
    if onnx.suffix != ".onnx":
        raise ValueError(f"the Python-backend model runs an .onnx, not {onnx.name}")
    model_dir = _model_dir(repo, name, max_batch)
    shutil.copyfile(onnx, model_dir / "1" / "model.onnx")
    shutil.copyfile(PYTHON_MODEL, model_dir / "1" / "model.py")
    paths = python_path if python_path is not None else python_path_of_this_environment()
    serving = {**metadata, "artefact": "model.onnx", "python_path": os.pathsep.join(paths),
               "threads": str(threads or "")}
    text = model_config_text(name, n_frames, max_batch, serving, backend="python", preferred_batches=False,
                             instance_kind=instance_kind)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def write_repository(repo: str | Path, name: str, artefact: str | Path, n_frames: int, max_batch: int,
                     metadata: Mapping[str, str], fp16: bool = False) -> dict[str, Path]:
    """Both repositories under REPO (see the module doc); returns the model folder of each, by server kind."""
    repo = Path(repo)
    models = {"nvidia": write_nvidia_model(repo / "nvidia", name, artefact, n_frames, max_batch, metadata, fp16)}
    if Path(artefact).suffix == ".onnx":  # the Python-backend model runs ONNX only
        models["python"] = write_python_model(repo / "python", name, artefact, n_frames, max_batch, metadata)
    return models


def _model_dir(repo: str | Path, name: str, max_batch: int) -> Path:
    if max_batch < 1:
        raise ValueError("Triton's dynamic batching needs a dynamic batch of at least 1")
    model_dir = Path(repo) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    return model_dir
