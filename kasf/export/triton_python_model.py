"""Triton Python-backend model that serves a kasf ONNX with kasf's own Lifter (copied as REPO/NAME/1/model.py).

For servers without the ONNX Runtime or TensorRT backends (the ``nvidia-pytriton`` wheel, CPU boxes) and for
tests. The stub runs the system's Python, which does not see kasf's environment, so ``initialize`` first adds the
folders listed in the ``kasf_python_path`` parameter (written by kasf-export from the exporting environment).
Each ``execute`` gets every request the dynamic batcher gathered and lifts them all in one ``predict`` call.

Tensors cross the backend as DLPack, not through ``as_numpy``/``Tensor(name, array)``: the stubs of Triton 24.x
were built against numpy 1 and, under numpy 2, read an array's item size as 0 and send empty outputs.
"""

from __future__ import annotations

import json
import os
import site
import sys
from pathlib import Path
from typing import Any


def add_python_path(paths: str) -> None:
    """Put these site folders (and their .pth files: editable installs) ahead of the system's packages."""
    before = list(sys.path)
    for folder in filter(None, paths.split(os.pathsep)):
        site.addsitedir(folder)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        add_python_path(params.get("kasf_python_path", ""))
        import triton_python_backend_utils as pb_utils

        from kasf.runtime.lifter import Lifter

        import numpy

        self.np, self.pb_utils = numpy, pb_utils
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        folder = Path(args["model_repository"]) / args["model_version"]
        device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        threads = int(params.get("kasf_threads") or 0) or None
        self.lifter = Lifter.load(folder / params["kasf_artefact"], device=device, threads=threads)

    def execute(self, requests: list[Any]) -> list[Any]:
        np, pb_utils = self.np, self.pb_utils
        batches = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
        good = [i for i, batch in enumerate(batches) if np.isfinite(batch).all()]
        out = self.lifter.predict(np.concatenate([batches[i] for i in good])) if good else None
        responses, start = [], 0
        for i, batch in enumerate(batches):
            if i not in good:
                error = pb_utils.TritonError("windows hold NaN or infinite keypoints; mark missing joints with "
                                             "confidence 0 and fill their positions")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensor = pb_utils.Tensor.from_dlpack(self.output_name, np.ascontiguousarray(out[start:start + len(batch)]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += len(batch)
        return responses
