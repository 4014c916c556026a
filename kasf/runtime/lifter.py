"""One interface over every artefact kasf makes: ``Lifter.load(path).predict(windows)``.

- a checkpoint (kasf or reference layout, or the name ``demo``): PyTorch; on a GPU its forward is captured in CUDA
  graphs (kasf.runtime.cuda_graphs), optionally torch.compile;
- an ``.onnx``: ONNX Runtime with the TensorRT, CUDA or CPU execution provider;
- an ``.engine``: TensorRT with pycuda buffers in the primary CUDA context, batches fitted to the engine's
  profile (kasf.runtime.tensorrt_engine; metadata from the sidecar JSON).
- a ``triton://HOST:PORT/MODEL`` address: a model on a Triton Inference Server (``kasf/runtime/triton_client.py``).

The device asked for is the device used: if ONNX Runtime or PyTorch would quietly run on the CPU instead of the
GPU, loading fails unless ``allow_fallback=True``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kasf.artefact import INPUT_NAME, parse_metadata, read_onnx_metadata, read_sidecar, sidecar_path
from kasf.runtime.errors import LifterError  # noqa: F401  (public here: kasf.runtime.lifter.LifterError)

BACKENDS = ("torch", "onnxruntime", "tensorrt", "triton")
DEVICES = ("auto", "cpu", "cuda")
ORT_GPU_HINT = "pip install onnxruntime-gpu (and uninstall the CPU-only onnxruntime)"
log = logging.getLogger("kasf.runtime")


def backend_for(path: str | os.PathLike) -> str:
    from kasf.runtime.triton_client import is_triton_url

    if is_triton_url(path):
        return "triton"
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in (".engine", ".plan", ".trt"):
        return "tensorrt"
    return "torch"


@dataclass
class Lifter:
    """A loaded lifter: ``predict`` maps (B, n_frames, 17, 3) float32 windows to (B, n_frames, 17, 3)."""

    run: Callable[[np.ndarray], np.ndarray]
    backend: str
    device: str
    precision: str
    n_frames: int
    metadata: dict[str, Any] = field(default_factory=dict)
    max_batch: int | None = None
    choice: str | None = None  # with precision='auto': what was picked and why (also logged once)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", backend: str | None = None,
             preset: str | None = None, config: str | Mapping[str, Any] | None = None, precision: str | None = None,
             compile: bool | str = False, allow_fallback: bool = False, ort_provider: str | None = None,
             threads: int | None = None, inference_path: str = "reference",
             cuda_graphs: bool | None = None, workers: int = 1) -> "Lifter":
        """Open any kasf artefact. ``threads`` sets ONNX Runtime's intra-op threads (PyTorch's are process-wide:
        torch.set_num_threads); ``inference_path='fused'`` runs a checkpoint with fused attention and grouped limb MLPs;
        ``compile`` is True or a torch.compile mode (e.g. 'reduce-overhead'); ``cuda_graphs`` (default: on for a
        checkpoint on a CUDA device unless compiled) replays a captured forward, with fp16/bf16 weights converted once
        where ``precision`` asks. On the CPU, ``precision='bf16'`` runs the large matrix products with bf16 weights
        converted once (kasf.runtime.cpu_bf16); ``precision='auto'`` (checkpoints on the CPU only) picks fp32 or
        bf16 from the machine's features (kasf.runtime.cpu_choice) and records why in ``Lifter.choice``.
        ``inference_path='native'`` runs a checkpoint's whole forward in one C++ call (kasf.model.native_cpu; CPU,
        fp32, or bf16 products on AMX / AVX512-BF16 with ``precision='bf16'``); ``'auto'`` takes it on the CPU where
        it is available and the reference path elsewhere, and records which and why in ``Lifter.choice``; with
        ``precision='auto'`` too, the native path's precision is picked from the CPU (bf16 where AMX pays).
        ``workers`` (ONNX Runtime on the CPU): split a batch into this many parts run at once, each in its own
        session with ``threads // workers`` threads (default 1 each), e.g. the people of a frame over the cores."""
        if device not in DEVICES:
            raise LifterError(f"device must be one of {DEVICES}, got {device!r}")
        if not isinstance(workers, int) or workers < 1:
            raise LifterError(f"workers must be a whole number >= 1, got {workers!r}")
        backend = backend or backend_for(path)
        if backend not in BACKENDS:
            raise LifterError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if workers > 1 and backend != "onnxruntime":
            raise LifterError(f"workers={workers} applies to ONNX Runtime on the CPU (an .onnx file); {path} runs "
                              f"on {backend}")
        if backend != "torch" and inference_path not in ("reference", "auto"):
            raise LifterError(f"inference_path={inference_path!r} applies to checkpoints; {path} runs on {backend}")
        if backend == "triton":
            return _load_triton(str(path), device, precision, preset or config)
        if str(path) != "demo" and not Path(path).exists():
            raise FileNotFoundError(f"model not found: {path}")
        if backend == "torch":
            return _load_torch(path, device, preset, config, precision or "fp32", compile, allow_fallback,
                               inference_path, cuda_graphs)
        if preset or config:
            raise LifterError(f"--preset/--config apply to checkpoints; {path} carries its own metadata")
        if backend == "onnxruntime":
            return _load_onnxruntime(Path(path), device, precision, allow_fallback, ort_provider, threads, workers)
        return _load_tensorrt(Path(path), device, precision)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows)
        expected = (self.n_frames, 17, 3)
        if windows.ndim != 4 or windows.shape[1:] != expected:
            raise ValueError(f"predict expects windows of shape (batch, {expected[0]}, 17, 3); got {windows.shape}")
        if not np.isfinite(windows).all():
            raise ValueError("predict got NaN or infinite keypoints; mark missing joints with confidence 0 and "
                             "fill their positions before lifting")
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if self.max_batch and len(windows) > self.max_batch:
            return np.concatenate([self.run(windows[i:i + self.max_batch])
                                   for i in range(0, len(windows), self.max_batch)])
        return self.run(windows)


def _resolve_device(device: str, cuda_available: bool, what: str, allow_fallback: bool) -> str:
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device == "cuda" and not cuda_available:
        if allow_fallback:
            return "cpu"
        raise LifterError(f"device 'cuda' was asked for but {what} sees no CUDA GPU (pass allow_fallback=True / "
                          "--allow-cpu-fallback to run on the CPU instead)")
    return device


def _load_torch(path: str | os.PathLike, device: str, preset: str | None, config: Any, precision: str,
                compile: bool | str, allow_fallback: bool, inference_path: str = "reference",
                cuda_graphs: bool | None = None) -> Lifter:
    import torch

    from kasf.checkpoint import load_checkpoint, read_checkpoint

    if preset and config:
        raise LifterError("give preset or config, not both")
    device = _resolve_device(device, torch.cuda.is_available(), "PyTorch", allow_fallback)
    model = load_checkpoint(path, preset or config, device=device)
    info = read_checkpoint(path)
    choice = None
    if precision == "auto":
        if device != "cpu":
            raise LifterError("precision='auto' chooses among CPU variants; give device='cpu' (or a precision)")
        from kasf.runtime.cpu_choice import choose_cpu_precision, detect_cpu_features

        picked = choose_cpu_precision(detect_cpu_features(), int(model.config.get("dim_feat", 0)),
                                      native_path=_native_possible(model, inference_path, device, compile))
        precision = picked.precision
        choice = picked.reason
        log.info("%s", choice)
    inference_path, path_choice = _choose_inference_path(model, inference_path, device, precision, compile)
    if path_choice:
        choice = path_choice if choice is None else f"{choice}; {path_choice}"
    native = inference_path == "native"
    try:
        if native:
            model.set_inference_path(inference_path, precision=precision)
        else:
            model.set_inference_path(inference_path)
    except ValueError as err:
        raise LifterError(str(err)) from None
    if native:
        model._native.freeze()  # the Lifter owns the model: its weights cannot change, so no per-call check
    autocast_dtype = None if native else _torch_precision(precision, device)
    meta = {"config": model.config, "preset": info.preset or preset or "", **info.conventions,
            "training": info.metadata}
    if cuda_graphs is None:
        cuda_graphs = device == "cuda" and not compile
    if cuda_graphs:
        if device != "cuda":
            raise LifterError("CUDA graphs need device='cuda'")
        if compile:
            raise LifterError("choose CUDA graphs or torch.compile, not both")
        from kasf.runtime.cuda_graphs import CudaGraphForward

        graphed = CudaGraphForward(model, precision)

        def run_graphed(windows: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(windows).to(device, non_blocking=True)
            return graphed(x).float().cpu().numpy()

        return Lifter(run_graphed, "torch", device, precision, model.n_frames,
                      {**meta, "cuda_graphs": True}, max_batch=graphed.max_batch)
    if device == "cpu" and precision == "bf16" and not native:
        from kasf.runtime.cpu_bf16 import with_bf16_matmuls

        model, autocast_dtype = with_bf16_matmuls(model), None  # weights converted once, no per-call autocast
    if compile:
        module = torch.compile(model, mode=compile if isinstance(compile, str) else None)
    else:
        module = model

    def run(windows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(windows).to(device)
        with torch.inference_mode(), torch.autocast(device, dtype=autocast_dtype or torch.float32,
                                                    enabled=autocast_dtype is not None):
            return module(x).float().cpu().numpy()

    return Lifter(run, "torch", device, precision, model.n_frames, {**meta, "inference_path": inference_path},
                  choice=choice)


def _native_blocker(model: Any, device: str, precision: str, compile: bool | str) -> str | None:
    """Why the native CPU path cannot run this model as asked, or None."""
    from kasf.model.kasportsformer import KASportsFormer
    from kasf.model.native_cpu import PRECISIONS, unavailable_reason

    return (f"device is {device}" if device != "cpu" else
            f"precision is {precision}" if precision not in PRECISIONS else
            "torch.compile was asked for" if compile else
            "the model is not a KASportsFormer / MotionAGFormer" if not isinstance(model, KASportsFormer) else
            unavailable_reason(model, precision))


def _native_possible(model: Any, path: str, device: str, compile: bool | str) -> bool:
    """Whether ``path`` ('auto' or 'native') will run the native path, for precision='auto' to choose by."""
    return path in ("auto", "native") and _native_blocker(model, device, "fp32", compile) is None


def _choose_inference_path(model: Any, path: str, device: str, precision: str,
                           compile: bool | str) -> tuple[str, str | None]:
    """(the inference path to run, why: for Lifter.choice, or None when the caller named the path).

    'native' is a CPU kernel (fp32, or bf16 products): asked for where it cannot run it is an error, not a quiet
    substitute; 'auto' takes it where it runs and says why not otherwise.
    """
    if path not in ("auto", "native"):
        return path, None
    blocker = _native_blocker(model, device, precision, compile)
    if path == "native":
        if blocker:
            raise LifterError(f"inference path 'native' is not available: {blocker} (it runs a checkpoint on the "
                              "CPU in fp32 or bf16, without torch.compile)")
        return "native", None
    if blocker:
        choice = f"inference path: reference (native CPU kernels not used: {blocker})"
    else:
        import torch

        kernels = torch.ops.kasf.lift_cpu_kernels()
        if precision == "bf16":
            kernels += f", bf16 products on {torch.ops.kasf.lift_cpu_bf16_kernels()}"
        choice = f"inference path: native CPU kernels ({kernels})"
    log.info("%s", choice)
    return ("reference" if blocker else "native"), choice


def _torch_precision(precision: str, device: str) -> Any:
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        from kasf.hardware import cpu_has_native_bf16

        if device == "cpu" and not cpu_has_native_bf16():
            raise LifterError("bf16 on this CPU would be emulated (slower than fp32): it has neither AVX512-BF16 "
                              "nor AMX; use precision='fp32' or an int8 .onnx")
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise LifterError("this GPU has no bfloat16 support; use precision='fp16'")
        return torch.bfloat16
    if precision == "fp16":
        if device != "cuda":
            raise LifterError("fp16 runs on CUDA; on the CPU use precision='bf16' or an int8 .onnx")
        return torch.float16
    raise LifterError(f"precision {precision!r} is not available for PyTorch checkpoints (fp32, bf16, fp16); "
                      "for int8 export with kasf-export --int8 and load the .onnx")


def _onnx_metadata(path: Path) -> dict[str, Any]:
    try:
        return parse_metadata(read_onnx_metadata(path))
    except ValueError as err:
        raise LifterError(f"{path}: {err}") from None


_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


def _load_onnxruntime(path: Path, device: str, precision: str | None, allow_fallback: bool,
                      ort_provider: str | None, threads: int | None = None, workers: int = 1) -> Lifter:
    try:
        import onnxruntime as ort
    except ImportError:
        raise LifterError("onnxruntime is not installed: pip install 'kasf[onnx]' (CPU) or " + ORT_GPU_HINT) from None
    meta = _onnx_metadata(path)
    if precision and precision != meta["precision"]:
        raise LifterError(f"{path.name} is a {meta['precision']} model; precision {precision!r} needs another "
                          f"export (kasf-export ... {'--int8' if precision == 'int8' else ''})")
    available = ort.get_available_providers()
    gpu = "CUDAExecutionProvider" in available
    device = _resolve_device(device, gpu, f"ONNX Runtime ({', '.join(available)}; {ORT_GPU_HINT})", allow_fallback)
    wanted = _ORT_PROVIDERS[ort_provider or ("cuda" if device == "cuda" else "cpu")]
    if wanted not in available:
        raise LifterError(f"ONNX Runtime has no {wanted} here (available: {', '.join(available)}); {ORT_GPU_HINT}")
    providers = [wanted] + (["CUDAExecutionProvider"] if wanted == "TensorrtExecutionProvider" else [])
    from kasf.anatomy_op.onnx_modes import ort_session  # registers the AnatomyFeatures op for --anatomy-op plugin models

    if workers > 1 and wanted != "CPUExecutionProvider":
        raise LifterError(f"workers={workers} splits batches over CPU cores; {path.name} runs on {wanted}, which "
                          "takes the whole batch at once")

    def open_session(intra_op_threads: int | None) -> Any:
        options = ort.SessionOptions()
        # A graph kasf-export already optimised (metadata ort_optimized) gets only the basic passes: start-up does
        # not redo the fusions. Others get all of ORT's optimisations, applied at every load.
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if meta.get("ort_optimized")
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        fallback = [] if wanted == "CPUExecutionProvider" else ["CPUExecutionProvider"]
        return ort_session(path, providers=providers + fallback, sess_options=options)

    sessions = [open_session(max(1, (threads or 0) // workers) if workers > 1 else threads) for _ in range(workers)]
    session = sessions[0]
    got = session.get_providers()[0]
    if got != wanted and not allow_fallback:
        raise LifterError(f"ONNX Runtime asked for {wanted} but runs {path.name} on {got}")
    output_name = session.get_outputs()[0].name
    batch_dim = session.get_inputs()[0].shape[0]
    fixed = batch_dim if isinstance(batch_dim, int) else None

    def runner(one: Any) -> Callable[[np.ndarray], np.ndarray]:
        def run(windows: np.ndarray) -> np.ndarray:
            return one.run([output_name], {INPUT_NAME: windows})[0].astype(np.float32, copy=False)

        return _pad_to_batch(run, fixed) if fixed else run

    runs = [runner(one) for one in sessions]
    lifter = Lifter(runs[0], "onnxruntime", device, meta["precision"], meta["n_frames"], meta,
                    max_batch=fixed * workers if fixed else None)  # with workers, parts of at most ``fixed``
    if workers > 1:
        lifter.run = _split_over(runs)
    return lifter


def _split_over(runs: list[Callable[[np.ndarray], np.ndarray]]) -> Callable[[np.ndarray], np.ndarray]:
    """A batch cut into up to len(runs) parts, each run by its own session at the same time (ONNX Runtime lets
    go of the GIL while it computes); the calling thread runs the first part. Why: a small model's ops are too
    short for ORT's intra-op threads to share well, whole windows on separate cores are not (demo size, 4 windows
    on 2 cores: 21 ms against 30 ms for one 2-thread session; docs/cpu_inference.md)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=len(runs) - 1, thread_name_prefix="kasf-lift")

    def run(windows: np.ndarray) -> np.ndarray:
        parts = np.array_split(windows, min(len(runs), len(windows)))
        futures = [pool.submit(part_run, part) for part_run, part in zip(runs[1:], parts[1:])]
        first = runs[0](parts[0])
        return np.concatenate([first] + [future.result() for future in futures])

    return run


def _load_triton(url: str, device: str, precision: str | None, checkpoint_options: Any) -> Lifter:
    """A model on a Triton server: the server decides where it runs, so only device='auto' is accepted."""
    from kasf.runtime.triton_client import load_triton

    if device != "auto" or checkpoint_options:
        raise LifterError(f"{url}: device, --preset and --config apply to local artefacts; a Triton model runs "
                          "where its server's config puts it")
    try:
        run, meta, max_batch = load_triton(url, precision)
    except ValueError as err:  # a malformed address
        raise LifterError(str(err)) from None
    return Lifter(run, "triton", "server", meta["precision"], meta["n_frames"], meta, max_batch=max_batch)


def _pad_to_batch(run: Callable[[np.ndarray], np.ndarray], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """A fixed-batch artefact still accepts fewer windows: pad with copies, drop their outputs."""

    def padded(windows: np.ndarray) -> np.ndarray:
        n = len(windows)
        if n == batch:
            return run(windows)
        filler = np.repeat(windows[-1:], batch - n, axis=0)
        return run(np.concatenate([windows, filler]))[:n]

    return padded


def _load_tensorrt(path: Path, device: str, precision: str | None) -> Lifter:
    """Deserialise an engine in the primary CUDA context (shared with PyTorch); never compiles anything: a plugin
    engine loads the plugin library built beforehand (kasf.anatomy_op.tensorrt_plugin)."""
    from kasf.anatomy_op.tensorrt_plugin import TensorRTPluginError, library_for_engine, register_plugin
    from kasf.runtime.tensorrt_engine import EngineRunner
    from kasf.tensorrt_api import CudaUnavailable, cuda_session, import_tensorrt, profile_batch_range

    if device == "cpu":
        raise LifterError("a TensorRT engine runs on a CUDA GPU; device='cpu' cannot run it")
    trt = import_tensorrt()
    side = sidecar_path(path)
    if not side.exists():
        raise LifterError(f"{path}: its metadata sidecar {side.name} is missing (export with kasf-export)")
    meta = parse_metadata(read_sidecar(path))
    if precision and precision != meta["precision"]:
        raise LifterError(f"{path.name} was built for {meta['precision']}, not {precision}")
    try:
        session = cuda_session()
        if meta.get("anatomy_op") == "plugin":
            register_plugin(trt, library_for_engine(trt, meta))
    except (CudaUnavailable, TensorRTPluginError) as err:
        raise LifterError(f"{path.name}: {err}") from None
    logger = trt.Logger(trt.Logger.WARNING)
    with session.activate():
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            built = f"TensorRT {meta.get('tensorrt_version') or '?'} on {meta.get('gpu') or '?'}"
            raise LifterError(f"{path}: TensorRT {trt.__version__} on {session.gpu_name} cannot load this engine "
                              f"(built with {built}); rebuild it here with kasf-export --format engine")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        low, _, high = profile_batch_range(engine.get_tensor_profile_shape(INPUT_NAME, 0))
    runner = EngineRunner(session, context, output_name, low, high, keep=(runtime, engine))
    return Lifter(runner, "tensorrt", "cuda", meta["precision"], meta["n_frames"], meta, max_batch=high)
