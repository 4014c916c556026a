"""The TensorRT engine path without TensorRT or a GPU: every decision that needs no device, run against fake
``tensorrt`` / ``pycuda`` objects that behave as the real bindings are documented to (pyCore.cpp, pyInt8.cpp,
pycuda.driver).

Covered: batches planned against an engine's profile (a fixed --batch 4 engine fed 25 windows), the engine
runner's padding, page-locked staging and refusal of a shape; the primary-context CUDA session and its error
mapping; INT8 calibration batching and the cache-only path; the timing cache key and a refused cache; the plugin
library's build key, cache lookup and registration, and a plugin engine loaded with no build tools at all.
"""

from __future__ import annotations

import ast
import json
import subprocess
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kasf import tensorrt_api
from kasf.anatomy_op import tensorrt_plugin
from kasf.artefact import INPUT_NAME, OUTPUT_NAME, write_sidecar
from kasf.runtime.tensorrt_engine import EngineRunError, EngineRunner
from kasf.tensorrt_api import CudaSession, CudaUnavailable, plan_batches, timing_cache_name
from tests.conftest import TENSORRT_INCLUDE as TRT_INCLUDE

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fakes of pycuda.driver and a TensorRT context

class FakeDevice:
    """A device allocation: ``int()`` is its address, ``data`` what was copied there."""

    def __init__(self, driver: "FakeDriver", nbytes: int) -> None:
        if nbytes <= 0:
            raise ValueError("cuMemAlloc failed: invalid argument")  # what CUDA says to a 0-byte allocation
        self.nbytes, self.data = nbytes, None
        self.address = 0x1000 * (len(driver.memory) + 1)
        driver.memory[self.address] = self

    def __int__(self) -> int:
        return self.address


class FakeDriver:
    def __init__(self) -> None:
        self.memory: dict[int, FakeDevice] = {}
        self.allocations: list[int] = []
        self.pinned = 0
        self.pushes = 0
        driver = self
        self.Context = types.SimpleNamespace(pop=lambda: setattr(driver, "pushes", driver.pushes - 1))

    def mem_alloc(self, nbytes: int) -> FakeDevice:
        self.allocations.append(nbytes)
        return FakeDevice(self, nbytes)

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        self.pinned += 1
        return np.full(shape, np.nan, dtype)

    def memcpy_htod(self, device: FakeDevice, host: np.ndarray) -> None:
        assert host.nbytes <= device.nbytes
        device.data = np.array(host, copy=True)

    def memcpy_htod_async(self, device: FakeDevice, host: np.ndarray, stream: Any) -> None:
        self.memcpy_htod(device, host)

    def memcpy_dtoh_async(self, host: np.ndarray, device: FakeDevice, stream: Any) -> None:
        host[...] = device.data.reshape(host.shape)

    def Stream(self) -> Any:  # noqa: N802 (pycuda's name)
        return types.SimpleNamespace(handle=7, synchronize=lambda: None)


def fake_session(driver: FakeDriver | None = None) -> CudaSession:
    driver = driver or FakeDriver()
    context = types.SimpleNamespace(push=lambda: setattr(driver, "pushes", driver.pushes + 1))
    return CudaSession(driver=driver, context=context, gpu_name="NVIDIA Fake GPU", compute_capability=(8, 7))


class FakeContext:
    """An IExecutionContext of an engine whose profile takes batches low..high and computes 2x + 1."""

    def __init__(self, driver: FakeDriver, low: int, high: int) -> None:
        self.driver, self.low, self.high = driver, low, high
        self.shapes: list[tuple[int, ...]] = []
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        assert name == INPUT_NAME
        if not self.low <= shape[0] <= self.high:
            return False  # what TensorRT does outside the profile
        self.shapes.append(tuple(shape))
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        batch = self.shapes[-1][0]
        data = self.driver.memory[self.addresses[INPUT_NAME]].data[:batch]
        assert np.isfinite(data).all(), "the engine was fed unset (padding?) rows"
        self.driver.memory[self.addresses[OUTPUT_NAME]].data = 2 * data + 1
        return True


def windows(count: int, n_frames: int = 9) -> np.ndarray:
    return np.random.default_rng(count).normal(size=(count, n_frames, 17, 3)).astype(np.float32)


# ---------------------------------------------------------------- batches against the profile

@pytest.mark.parametrize("count,low,high,expected", [
    (25, 4, 4, [(i, min(i + 4, 25), 4) for i in range(0, 25, 4)]),  # kasf-export --batch 4 parity: last run 1 of 4
    (25, 1, 64, [(0, 25, 25)]),
    (130, 1, 64, [(0, 64, 64), (64, 128, 64), (128, 130, 2)]),
    (3, 8, 64, [(0, 3, 8)]),  # min batch above the count: padded up to min
    (0, 1, 8, []),
])
def test_plan_batches(count: int, low: int, high: int, expected: list[tuple[int, int, int]]) -> None:
    plan = plan_batches(count, low, high)
    assert plan == expected
    assert all(low <= size <= high and size >= stop - start for start, stop, size in plan)
    assert [i for start, stop, _ in plan for i in range(start, stop)] == list(range(count))


def test_plan_batches_refuses_an_impossible_profile() -> None:
    with pytest.raises(ValueError, match="min <= max"):
        plan_batches(5, 4, 2)


def test_profile_range_reads_min_opt_max() -> None:
    assert tensorrt_api.profile_batch_range([(4, 27, 17, 3)] * 3) == (4, 4, 4)
    assert tensorrt_api.profile_batch_range([(1, 27, 17, 3), (8, 27, 17, 3), (64, 27, 17, 3)]) == (1, 8, 64)


# ---------------------------------------------------------------- the engine runner

@pytest.mark.parametrize("low,high", [(4, 4), (1, 8), (3, 16)])
def test_runner_fits_every_call_to_the_profile(low: int, high: int) -> None:
    driver = FakeDriver()
    context = FakeContext(driver, low, high)
    runner = EngineRunner(fake_session(driver), context, OUTPUT_NAME, low, high)
    for count in (25, 1, 2, high, 3):
        x = windows(count)
        np.testing.assert_array_equal(runner(x), 2 * x + 1)
    assert all(low <= shape[0] <= high for shape in context.shapes)
    assert driver.pinned == 2  # host in + out, sized on the first call and reused
    assert driver.pushes == 0  # every push popped


def test_runner_uses_page_locked_buffers_grown_once() -> None:
    driver = FakeDriver()
    runner = EngineRunner(fake_session(driver), FakeContext(driver, 1, 64), OUTPUT_NAME, 1, 64)
    for count in (2, 2, 5, 3, 5):
        runner(windows(count))
    assert driver.pinned == 4  # host in + out for batch 2, then again when 5 arrived; never pageable
    assert len(driver.allocations) == 4


def test_runner_says_when_the_engine_refuses_a_shape() -> None:
    driver = FakeDriver()
    context = FakeContext(driver, 4, 4)
    context.set_input_shape = lambda name, shape: False  # type: ignore[method-assign]
    runner = EngineRunner(fake_session(driver), context, OUTPUT_NAME, 4, 4)
    with pytest.raises(EngineRunError, match=r"refused input shape \(4, 9, 17, 3\).*batches 4\.\.4"):
        runner(windows(2))


# ---------------------------------------------------------------- the CUDA session

def _importer(modules: dict[str, Any]) -> Any:
    def import_module(name: str) -> Any:
        found = modules[name]
        if isinstance(found, BaseException):
            raise found
        return found
    return import_module


@pytest.fixture
def no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt_api, "_SESSION", None)


def _primary_ctx() -> Any:
    device = types.SimpleNamespace(name=lambda: "NVIDIA Orin", compute_capability=lambda: (8, 7))
    return types.SimpleNamespace(context=types.SimpleNamespace(get_device=lambda: device))


def test_session_uses_the_primary_context_once(no_session: None) -> None:
    calls: list[str] = []
    modules = {"pycuda.driver": types.SimpleNamespace(), "pycuda.autoprimaryctx": _primary_ctx()}

    def import_module(name: str) -> Any:
        calls.append(name)
        return modules[name]

    session = tensorrt_api.cuda_session(import_module)
    assert (session.gpu_name, session.compute_capability) == ("NVIDIA Orin", (8, 7))
    assert tensorrt_api.cuda_session(import_module) is session
    assert calls == ["pycuda.driver", "pycuda.autoprimaryctx"]


class FakePycudaError(Exception):
    """pycuda.driver.Error: what cuInit raises without a driver or GPU."""


@pytest.mark.parametrize("failure,message", [
    (FakePycudaError("cuInit failed: no CUDA-capable device is detected"), "CUDA cannot start here.*no CUDA-capable"),
    (RuntimeError("No CUDA enabled device found. Please check your installation."), "CUDA cannot start here"),
    (ImportError("No module named 'pycuda.autoprimaryctx'"), "pip install -U pycuda"),
])
def test_session_maps_pycuda_failures_to_one_line(no_session: None, failure: BaseException, message: str) -> None:
    importer = _importer({"pycuda.driver": types.SimpleNamespace(), "pycuda.autoprimaryctx": failure})
    with pytest.raises(CudaUnavailable, match=message):
        tensorrt_api.cuda_session(importer)
    assert tensorrt_api._SESSION is None


def test_session_without_pycuda_names_the_install(no_session: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt_api.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CudaUnavailable, match="pip install pycuda"):
        tensorrt_api.cuda_session(_importer({"pycuda.driver": ImportError("No module named 'pycuda'")}))


def test_no_module_makes_a_private_cuda_context() -> None:
    """pycuda.autoinit (a non-primary context) must not come back anywhere in kasf."""
    for path in (REPO_ROOT / "kasf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            assert not any("autoinit" in name for name in names), path


# ---------------------------------------------------------------- INT8 calibration

def _fake_trt_for_calibration() -> Any:
    return types.SimpleNamespace(IInt8EntropyCalibrator2=object)


def test_calibration_batches_are_full_and_padded(tmp_path: Path) -> None:
    from kasf.export.tensorrt_build import make_calibrator

    driver = FakeDriver()
    x = windows(10)
    calibrator = make_calibrator(_fake_trt_for_calibration(), driver, x, tmp_path / "c.cache", batch=4)
    assert calibrator.get_batch_size() == 4
    fed = []
    while (pointers := calibrator.get_batch([INPUT_NAME])) is not None:
        fed.append(driver.memory[pointers[0]].data.copy())
    assert [len(b) for b in fed] == [4, 4, 4]
    np.testing.assert_array_equal(np.concatenate(fed)[:10], x)
    np.testing.assert_array_equal(fed[-1][2:], np.repeat(x[-1:], 2, axis=0))
    assert driver.allocations == [4 * x[0].nbytes]  # one buffer, reused
    calibrator.write_calibration_cache(b"calibration table")
    assert calibrator.read_calibration_cache() == b"calibration table"


def test_calibration_from_a_cache_alone_allocates_nothing(tmp_path: Path) -> None:
    from kasf.export.tensorrt_build import make_calibrator

    cache = tmp_path / "c.cache"
    cache.write_bytes(b"TRT-1001-EntropyCalibration2")
    driver = FakeDriver()
    calibrator = make_calibrator(_fake_trt_for_calibration(), driver, None, cache, batch=8)
    assert calibrator.read_calibration_cache() == b"TRT-1001-EntropyCalibration2"
    assert calibrator.get_batch([INPUT_NAME]) is None
    assert driver.allocations == []


# ---------------------------------------------------------------- timing cache

def test_timing_cache_is_keyed_by_gpu_capability_and_version() -> None:
    name = timing_cache_name("NVIDIA H100 80GB HBM3", (9, 0), "10.16.0.72")
    assert name == "nvidia-h100-80gb-hbm3-sm90-trt10.16.0.72.timing.cache"
    others = {timing_cache_name("NVIDIA H100 80GB HBM3", (9, 0), "10.15.1.29"),
              timing_cache_name("Orin", (8, 7), "10.16.0.72"), timing_cache_name("../x y", (8, 9), "10.16")}
    assert name not in others and len(others) == 3
    assert all("/" not in n and " " not in n for n in others)


class FakeConfig:
    def __init__(self, accepts: bool) -> None:
        self.accepts = accepts
        self.set: list[bytes] = []

    def create_timing_cache(self, blob: bytes) -> Any:
        return types.SimpleNamespace(blob=blob)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.set.append(cache.blob)
        return self.accepts or cache.blob == b""


def test_a_refused_timing_cache_is_reported_and_replaced(tmp_path: Path) -> None:
    from kasf.export.tensorrt_build import use_timing_cache

    path = tmp_path / "t.cache"
    path.write_bytes(b"from another GPU")
    config = FakeConfig(accepts=False)
    with pytest.warns(RuntimeWarning, match="refused the timing cache .*another GPU"):
        cache = use_timing_cache(config, path)
    assert cache.blob == b"" and config.set == [b"from another GPU", b""]


def test_an_accepted_timing_cache_is_used_quietly(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    from kasf.export.tensorrt_build import use_timing_cache

    path = tmp_path / "t.cache"
    path.write_bytes(b"same GPU")
    assert use_timing_cache(FakeConfig(accepts=True), path).blob == b"same GPU"
    assert use_timing_cache(FakeConfig(accepts=True), tmp_path / "absent").blob == b""
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ---------------------------------------------------------------- the plugin library: key, cache, registration

def test_header_version_of_10_and_8_6(tmp_path: Path) -> None:
    if not (TRT_INCLUDE / "NvInferVersion.h").exists():
        pytest.skip(f"needs TensorRT's headers in {TRT_INCLUDE}")
    assert tensorrt_plugin.header_tensorrt_version(TRT_INCLUDE) == "10.16.0"
    (tmp_path / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n"
                                               "#define NV_TENSORRT_PATCH 1\n#define NV_TENSORRT_BUILD 6\n")
    assert tensorrt_plugin.header_tensorrt_version(tmp_path) == "8.6.1"
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="no NvInferVersion.h"):
        tensorrt_plugin.header_tensorrt_version(tmp_path / "nope")


def test_build_key_depends_on_sources_version_and_archs() -> None:
    sha = tensorrt_plugin.source_hash()
    assert len(sha) == 64 and sha == tensorrt_plugin.source_hash()
    key = tensorrt_plugin.build_key(sha, "10.16.0.72", "90;8.7")
    assert key == f"trt10.16.0-sm87_90-{sha[:16]}"
    assert tensorrt_plugin.build_key(sha, "10.16.0", ["sm_87", "90", "87"]) == key
    assert tensorrt_plugin.build_key(sha, "10.15.1", "87;90") != key
    assert tensorrt_plugin.build_key("0" * 64, "10.16.0", "87;90") != key
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="compute capability"):
        tensorrt_plugin.normalise_archs("orin")


def test_source_hash_follows_every_file_the_build_reads(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "src"
    for name in tensorrt_plugin.SOURCE_FILES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tensorrt_plugin.SOURCES / name, copy / name)
    assert tensorrt_plugin.source_hash(copy) == tensorrt_plugin.source_hash()
    with open(copy / "anatomy_cuda_kernels.cu", "a") as f:
        f.write("\n// edited\n")
    assert tensorrt_plugin.source_hash(copy) != tensorrt_plugin.source_hash()


def _cache_entry(root: Path, version: str, archs: list[str], sha: str | None = None) -> Path:
    sha = sha or tensorrt_plugin.source_hash()
    folder = root / tensorrt_plugin.build_key(sha, version, archs)
    folder.mkdir(parents=True)
    (folder / tensorrt_plugin.LIBRARY_NAME).write_bytes(b"\x7fELF")
    (folder / tensorrt_plugin.BUILD_INFO).write_text(json.dumps(
        {"key": folder.name, "source_sha256": sha, "tensorrt_version": version, "archs": archs}))
    return folder / tensorrt_plugin.LIBRARY_NAME


def test_cached_library_is_found_for_this_gpu_and_version(tmp_path: Path) -> None:
    sha = tensorrt_plugin.source_hash()
    wanted = _cache_entry(tmp_path, "10.16.0", ["87", "90"])
    _cache_entry(tmp_path, "10.15.1", ["87"])
    _cache_entry(tmp_path, "10.16.0", ["87"], sha="f" * 64)  # older sources
    assert tensorrt_plugin.find_cached_plugin(tmp_path, sha, "10.16.0.72", "87") == wanted
    assert tensorrt_plugin.find_cached_plugin(tmp_path, sha, "10.16.0.72", "89") is None
    assert tensorrt_plugin.find_cached_plugin(tmp_path, sha, "10.14.0", "87") is None
    assert tensorrt_plugin.find_cached_plugin(tmp_path / "none", sha, "10.16.0", "87") is None


class FakeRegistry:
    def __init__(self, has_creator: bool = True, loads: bool = True) -> None:
        self.loaded: list[str] = []
        self.has_creator, self.loads = has_creator, loads

    def load_library(self, path: str) -> Any:
        self.loaded.append(path)
        return object() if self.loads else None

    def get_creator(self, name: str, version: str, namespace: str) -> Any:
        ok = self.loaded and self.has_creator and (name, version, namespace) == ("AnatomyFeatures", "1", "")
        return object() if ok else None


def fake_trt(version: str = "10.16.0.72", registry: FakeRegistry | None = None) -> Any:
    registry = registry or FakeRegistry()
    return types.SimpleNamespace(__version__=version, get_plugin_registry=lambda: registry, registry=registry)


@pytest.fixture
def fresh_plugin_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(tensorrt_plugin, "_loaded", {})
    monkeypatch.setenv("KASF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(tensorrt_plugin.ENV_LIBRARY, raising=False)
    return tmp_path


def test_register_loads_a_library_once_and_checks_the_creator(fresh_plugin_state: Path) -> None:
    library = fresh_plugin_state / tensorrt_plugin.LIBRARY_NAME
    library.write_bytes(b"\x7fELF")
    trt = fake_trt()
    assert tensorrt_plugin.register_plugin(trt, library) == library
    tensorrt_plugin.register_plugin(trt, library)
    assert trt.registry.loaded == [str(library.resolve())]


@pytest.mark.parametrize("registry,message", [
    (FakeRegistry(loads=False), "could not load"),
    (FakeRegistry(has_creator=False), "AnatomyFeatures v1 is not in TensorRT's plugin registry"),
])
def test_register_failures_are_clear(fresh_plugin_state: Path, registry: FakeRegistry, message: str) -> None:
    library = fresh_plugin_state / tensorrt_plugin.LIBRARY_NAME
    library.write_bytes(b"\x7fELF")
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match=message):
        tensorrt_plugin.register_plugin(fake_trt(registry=registry), library)


def test_register_with_a_missing_library_touches_no_registry(fresh_plugin_state: Path) -> None:
    trt = fake_trt()
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="library not found"):
        tensorrt_plugin.register_plugin(trt, fresh_plugin_state / "libnope.so")
    assert trt.registry.loaded == []


def test_tensorrt_8_6_gets_the_version_message_not_a_compile_error(fresh_plugin_state: Path) -> None:
    old = fake_trt("8.6.1.6")
    for call in (lambda: tensorrt_plugin.library_for_engine(old, {"plugin_key": "k"}),
                 lambda: tensorrt_plugin.library_for_build(old, "87"),
                 lambda: tensorrt_plugin.register_plugin(old, fresh_plugin_state)):
        with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="needs TensorRT >= 10.*8.6.1"):
            call()


def test_engine_library_lookup_order(fresh_plugin_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = fake_trt()
    cached = _cache_entry(tensorrt_plugin.cache_root(), "10.16.0", ["87"])
    recorded = fresh_plugin_state / "recorded.so"
    recorded.write_bytes(b"\x7fELF")
    meta = {"plugin_library": str(recorded), "plugin_key": cached.parent.name}
    assert tensorrt_plugin.library_for_engine(trt, meta) == recorded
    assert tensorrt_plugin.library_for_engine(trt, {**meta, "plugin_library": "/elsewhere/lib.so"}) == cached
    monkeypatch.setenv(tensorrt_plugin.ENV_LIBRARY, str(recorded))
    assert tensorrt_plugin.library_for_engine(trt, {"plugin_key": "x"}) == recorded


def test_engine_library_missing_says_how_to_build(fresh_plugin_state: Path) -> None:
    with pytest.raises(tensorrt_plugin.TensorRTPluginError,
                       match=r"not built here.*python -m kasf\.anatomy_op\.tensorrt_plugin build --tensorrt-include"):
        tensorrt_plugin.library_for_engine(fake_trt(), {"plugin_library": "/gone/lib.so", "plugin_key": "k"})


def test_build_uses_the_cache_and_never_builds_twice(fresh_plugin_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _cache_entry(tensorrt_plugin.cache_root(), "10.16.0", ["87", "90"])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("built although the cache has it"))
    assert tensorrt_plugin.library_for_build(fake_trt(), "90") == cached


def test_build_without_tools_names_them_and_the_command(fresh_plugin_state: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt_plugin.shutil, "which", lambda tool: None)
    monkeypatch.setattr(tensorrt_plugin, "find_tensorrt_include", lambda: None)
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match=r"cmake.*nvcc.*headers.*build --tensorrt-include"):
        tensorrt_plugin.library_for_build(fake_trt(), "87")
    with pytest.raises(tensorrt_plugin.TensorRTPluginError, match="missing cmake"):
        tensorrt_plugin.build_plugin(None, "87")
    assert tensorrt_plugin.main(["build", "--arch", "87"]) == 2  # bad input, as every kasf command (kasf.cli_errors)


# ---------------------------------------------------------------- Lifter.load on an engine, with fake TensorRT

class FakeEngine:
    def __init__(self, driver: FakeDriver, low: int, opt: int, high: int) -> None:
        self.driver, self.profile = driver, (low, opt, high)
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return (INPUT_NAME, OUTPUT_NAME)[i]

    def get_tensor_mode(self, name: str) -> str:
        return "OUTPUT" if name == OUTPUT_NAME else "INPUT"

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        return [(b, 9, 17, 3) for b in self.profile]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self.driver, self.profile[0], self.profile[2])


def _engine_trt(driver: FakeDriver, profile: tuple[int, int, int], version: str = "10.16.0.72") -> Any:
    trt = fake_trt(version)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(OUTPUT="OUTPUT")
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda blob: FakeEngine(driver, *profile) if blob == b"engine" else None)
    return trt


def _engine_file(folder: Path, **extra: str) -> Path:
    from kasf.artefact import build_metadata

    path = folder / "m.engine"
    path.write_bytes(b"engine")
    config = {"n_frames": 9}
    write_sidecar(path, {**build_metadata(config, "kasportsformer-t", "fp32", extra.pop("anatomy_op", "decomposed"),
                                          None, "m.pt"), "tensorrt_version": "10.16.0.72", **extra})
    return path


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, fresh_plugin_state: Path) -> FakeDriver:
    driver = FakeDriver()
    monkeypatch.setattr(tensorrt_api, "_SESSION", fake_session(driver))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"Lifter.load ran a subprocess: {a}"))
    monkeypatch.setenv("PATH", "")  # no nvcc, no cmake
    return driver


def test_fixed_batch_engine_takes_25_windows(fake_gpu: FakeDriver, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from kasf.runtime import Lifter

    monkeypatch.setattr(tensorrt_api, "import_tensorrt", lambda: _engine_trt(fake_gpu, (4, 4, 4)))
    lifter = Lifter.load(_engine_file(tmp_path), device="cuda")
    assert (lifter.backend, lifter.max_batch) == ("tensorrt", 4)
    x = windows(25)
    np.testing.assert_array_equal(lifter.predict(x), 2 * x + 1)


def test_plugin_engine_loads_a_built_library_with_no_build_tools(fake_gpu: FakeDriver, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from kasf.runtime import Lifter

    trt = _engine_trt(fake_gpu, (1, 8, 64))
    monkeypatch.setattr(tensorrt_api, "import_tensorrt", lambda: trt)
    library = _cache_entry(tensorrt_plugin.cache_root(), "10.16.0", ["87"])
    engine = _engine_file(tmp_path, anatomy_op="plugin", plugin_library="/build/box/lib.so",
                          plugin_key=library.parent.name)
    lifter = Lifter.load(engine, device="cuda")
    assert trt.registry.loaded == [str(library.resolve())]
    x = windows(3)
    np.testing.assert_array_equal(lifter.predict(x), 2 * x + 1)


def test_plugin_engine_errors_are_lifter_errors(fake_gpu: FakeDriver, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kasf.runtime import Lifter, LifterError

    engine = _engine_file(tmp_path, anatomy_op="plugin", plugin_library="/gone.so", plugin_key="k")
    monkeypatch.setattr(tensorrt_api, "import_tensorrt", lambda: _engine_trt(fake_gpu, (1, 8, 64)))
    with pytest.raises(LifterError, match="m.engine: the TensorRT AnatomyFeatures plugin library is not built here"):
        Lifter.load(engine, device="cuda")
    monkeypatch.setattr(tensorrt_api, "import_tensorrt", lambda: _engine_trt(fake_gpu, (1, 8, 64), "8.6.1.6"))
    with pytest.raises(LifterError, match="needs TensorRT >= 10"):
        Lifter.load(engine, device="cuda")


def test_engine_without_cuda_is_one_lifter_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kasf.runtime import Lifter, LifterError

    monkeypatch.setattr(tensorrt_api, "_SESSION", None)
    monkeypatch.setattr(tensorrt_api, "import_tensorrt", lambda: _engine_trt(FakeDriver(), (1, 8, 64)))

    def no_gpu(import_module: Any = None) -> CudaSession:
        raise CudaUnavailable("CUDA cannot start here (Error: cuInit failed: no CUDA-capable device is detected)")

    monkeypatch.setattr(tensorrt_api, "cuda_session", no_gpu)
    with pytest.raises(LifterError, match="m.engine: CUDA cannot start here"):
        Lifter.load(_engine_file(tmp_path), device="cuda")


# ---------------------------------------------------------------- what kasf-export hands the builder

def test_export_asks_for_a_fixed_profile_and_symmetric_qdq(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kasf.export import cli, onnx_export, tensorrt_build

    seen: dict[str, Any] = {}
    monkeypatch.setattr(tensorrt_api, "import_tensorrt", lambda: types.SimpleNamespace(__version__="11.0.0"))
    monkeypatch.setattr(onnx_export, "quantize_int8",
                        lambda src, dst, meta, calib, **kw: seen.update(qdq=kw) or dst)
    monkeypatch.setattr(tensorrt_build, "build_engine", lambda src, dst, meta, options: seen.update(
        source=src, options=options) or dst)
    args = cli.parse_args(["demo", "--format", "engine", "--int8", "--batch", "4"])
    cli._build_engine(args, None, tmp_path / "m.onnx", tmp_path / "m.engine", lambda p: {"precision": p},
                      windows(5), "decomposed")
    assert seen["qdq"] == {"symmetric": True} and seen["source"].name == "m.qdq.onnx"
    assert seen["options"].batch == (4, 4, 4) and seen["options"].timing_cache_dir == tmp_path


# ---------------------------------------------------------------- the Q/DQ ONNX TensorRT >= 11 builds INT8 from

def _zero_points(path: Path) -> list[int]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    points = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            points.extend(int(v) for v in np.ravel(inits[node.input[2]]))
    return points


def test_qdq_for_tensorrt_has_zero_points_of_zero(tmp_path: Path) -> None:
    """TensorRT's ONNX importer refuses a non-zero zero point ("only supports symmetric quantization")."""
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")
    import torch

    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnx, quantize_int8
    from kasf.model import KASportsFormer

    torch.manual_seed(0)
    model = KASportsFormer(n_layers=1, dim_feat=16, dim_rep=32, num_heads=2, n_frames=9).eval()
    meta = build_metadata(model.config, None, "fp32", "decomposed", (1, 8, 64), None)
    fp32 = export_onnx(model, tmp_path / "m.onnx", meta)
    calib = np.abs(windows(16))  # all-positive inputs: an asymmetric quantiser would move the zero point
    cpu = _zero_points(quantize_int8(fp32, tmp_path / "cpu.onnx", meta, calib, min_reduction=1))
    trt = _zero_points(quantize_int8(fp32, tmp_path / "qdq.onnx", meta, calib, min_reduction=1, symmetric=True))
    assert any(cpu), "the check would pass vacuously: the default quantiser made no non-zero zero point"
    assert trt and not any(trt)
    with pytest.raises(ValueError, match="calibration windows"):
        quantize_int8(fp32, tmp_path / "x.onnx", meta, None, symmetric=True)
