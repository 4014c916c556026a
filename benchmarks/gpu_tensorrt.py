"""The TensorRT step of benchmarks/gpu_check.sh: every engine kind kasf makes, built and run with its parity report.

    python benchmarks/gpu_tensorrt.py all OUT        # the cases below; OUT/tensorrt.json; exit 1 if one fails
    python benchmarks/gpu_tensorrt.py parity ENGINE  # (internal) load ENGINE in this fresh process, print parity

Cases, on the bundled demo checkpoint: fp32 with a dynamic batch; fp16; a fixed --batch 4 engine fed the parity
windows (8 random + the real ones, so the last chunk is short and padded); INT8 calibrated on windows; INT8 from
that calibration cache alone (TensorRT < 11: no windows given to the builder); and a plugin (--anatomy-op plugin)
engine loaded in a fresh process whose PATH has no nvcc or cmake. Where tensorrt or pycuda do not import, the step
prints why and exits 0 (skipped), since most GPU machines here have no TensorRT.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
CASE_TIMEOUT_S = 240


def _missing() -> str | None:
    for module, hint in (("tensorrt", "pip install tensorrt"), ("pycuda", "pip install pycuda")):
        try:
            __import__(module)
        except Exception as err:  # ImportError, or pycuda failing to find the driver
            return f"{module} does not import here ({type(err).__name__}: {err}; {hint})"
    return None


def _path_without_build_tools() -> str:
    """PATH minus every folder holding nvcc or cmake: an inference box that can load but not build the plugin."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in ("nvcc", "cmake"))]
    return os.pathsep.join(keep)


def _case(name: str, command: list[str], out: Path, env: dict[str, str] | None = None) -> dict:
    start = time.time()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=CASE_TIMEOUT_S,
                                env={**os.environ, **(env or {})})
        rc, text = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as err:
        rc, text = 124, f"timed out after {CASE_TIMEOUT_S} s\n{err.stdout or ''}{err.stderr or ''}"
    (out / f"{name}.log").write_text(" ".join(command) + "\n" + text)
    reports = [line for line in text.splitlines() if line.startswith(("PASS ", "FAIL "))]
    print(f"[tensorrt] {name}: exit {rc} after {time.time() - start:.0f} s")
    for line in reports:
        print(f"    {line}")
    if rc != 0:
        print("    " + "\n    ".join(text.strip().splitlines()[-6:]))
    return {"case": name, "rc": rc, "seconds": round(time.time() - start, 1), "parity": reports}


def run_all(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    why = _missing()
    if why:
        print(f"[tensorrt] skipped: {why}")
        (out / "tensorrt.json").write_text(json.dumps({"skipped": why}, indent=1))
        return 0
    import tensorrt

    engines = out / "engines"
    export = [PY, "-m", "kasf.export.cli", "demo", "--format", "engine", "--device", "cuda"]
    cases = [
        _case("fp32_dynamic", export + ["-o", str(engines / "fp32" / "demo.engine")], out),
        _case("fp16", export + ["--half", "-o", str(engines / "fp16" / "demo.engine")], out),
        _case("fixed_batch_4", export + ["--batch", "4", "-o", str(engines / "b4" / "demo.engine")], out),
        _case("int8_windows", export + ["--int8", "-o", str(engines / "int8" / "demo.engine")], out),
    ]
    if int(tensorrt.__version__.split(".")[0]) < 11:
        cases.append(_case("int8_cache_only", [PY, __file__, "int8-from-cache", str(engines / "int8")], out))
    else:
        print("[tensorrt] int8_cache_only: not applicable (TensorRT >= 11 builds INT8 from Q/DQ, no calibrator)")
    plugin_engine = engines / "plugin" / "demo.engine"
    cases.append(_case("plugin_export", export + ["--anatomy-op", "plugin", "-o", str(plugin_engine)], out,
                       env={"KASF_CACHE": str(out / "kasf-cache")}))
    cases.append(_case("plugin_fresh_process", [PY, __file__, "parity", str(plugin_engine)], out,
                       env={"KASF_CACHE": str(out / "kasf-cache"), "PATH": _path_without_build_tools()}))
    summary = {"tensorrt": tensorrt.__version__, "cases": cases}
    (out / "tensorrt.json").write_text(json.dumps(summary, indent=1))
    failed = [c["case"] for c in cases if c["rc"] != 0 or any(p.startswith("FAIL") for p in c["parity"])]
    print(f"[tensorrt] {len(cases) - len(failed)}/{len(cases)} cases passed" + (f"; failed: {failed}" if failed
                                                                               else ""))
    return 1 if failed else 0


def _judge(engine: Path) -> int:
    """Parity of an engine against the demo checkpoint, as kasf-export reports it."""
    from kasf.checkpoint import load_checkpoint, resolve_checkpoint_path
    from kasf.export.parity import check_parity, pytorch_references
    from kasf.export.windows import load_real_windows
    from kasf.runtime import Lifter

    lifter = Lifter.load(engine, device="cuda")
    model = load_checkpoint(resolve_checkpoint_path("demo"), device="cpu")
    reference, reference64 = pytorch_references(model)

    report = check_parity(reference, lifter.predict, str(engine), "tensorrt", lifter.precision, model.n_frames,
                          load_real_windows(model.n_frames), reference64)
    print(report.summary())
    return 0 if report.passed else 1


def parity_in_fresh_process(engine: Path) -> int:
    assert shutil.which("nvcc") is None and shutil.which("cmake") is None, "nvcc/cmake still on PATH"
    return _judge(engine)


def int8_from_cache(folder: Path) -> int:
    """Rebuild the INT8 engine with no calibration windows: only the cache the first build wrote."""
    from kasf.artefact import read_sidecar
    from kasf.export.tensorrt_build import BuildOptions, build_engine

    cache = folder / "demo.calib.cache"
    assert cache.exists(), f"no calibration cache at {cache} (did int8_windows run?)"
    meta = read_sidecar(folder / "demo.engine")
    low, opt, high = (int(v) for v in meta["batch"].split(":")[1].split(","))
    target = folder.parent / "int8_cache" / "demo.engine"
    build_engine(folder / "demo.onnx", target, meta, BuildOptions(precision="int8", batch=(low, opt, high),
                                                                   calibration=None, calibration_cache=cache))
    return _judge(target)


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("all", "parity", "int8-from-cache"):
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(sys.argv[2])
    if sys.argv[1] == "all":
        return run_all(target)
    if sys.argv[1] == "parity":
        return parity_in_fresh_process(target)
    return int8_from_cache(target)


if __name__ == "__main__":
    sys.exit(main())
