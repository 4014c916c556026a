"""The TensorRT plugin of the kasf::AnatomyFeatures node: built once, then loaded by path.

Why built apart from the Python package: TensorRT is an optional, GPU-only dependency whose headers live in many
places, usually not where kasf is installed, and an inference box (a Jetson, a container) may have neither nvcc nor
the headers. So the library is built once, through ``cpp_ext/tensorrt/CMakeLists.txt``, into a cache folder keyed
by what changes the binary (the plugin and kernel sources, the TensorRT version of the headers, the GPU
architectures)::

    python -m kasf.anatomy_op.tensorrt_plugin build --tensorrt-include /usr/include/aarch64-linux-gnu --arch 87

and at run time a built library is loaded by path with ``trt.get_plugin_registry().load_library`` (the library
exports TensorRT 10's ``getCreators``; it links nothing of libnvinfer, so it binds to the registry of the tensorrt
module that loads it). Loading never compiles: an engine whose library is not built here fails with the command
that builds it.

Environment: ``KASF_CACHE`` (default ~/.cache/kasf) holds the builds under ``tensorrt-plugin/KEY/``;
``KASF_TENSORRT_PLUGIN`` names a library to use instead of looking one up; ``TENSORRT_INCLUDE_DIR`` or
``TENSORRT_ROOT`` help find the headers for a build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from kasf.cli_errors import report_error

PLUGIN_NAME = "AnatomyFeatures"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
LIBRARY_NAME = "libkasf_tensorrt_plugin.so"
BUILD_INFO = "plugin.json"
ENV_LIBRARY = "KASF_TENSORRT_PLUGIN"
MIN_TENSORRT_MAJOR = 10  # IPluginV3 and IPluginRegistry.load_library of plugin libraries with getCreators
# The repository's cpp_ext/ (editable install, checkout), else the copy that setup.py puts in an installed kasf.
_PACKAGE = Path(__file__).resolve().parents[1]  # the kasf folder
_REPO_SOURCES = _PACKAGE.parent / "cpp_ext"
SOURCES = _REPO_SOURCES if (_REPO_SOURCES / "tensorrt").is_dir() else _PACKAGE / "cpp_ext_src"
# Every file the CMake build reads: the plugin, its CMake file and the kernels it links.
SOURCE_FILES = ("tensorrt/CMakeLists.txt", "tensorrt/anatomy_plugin.cpp", "anatomy_cuda_kernels.cu",
                "anatomy_cuda_kernels.cuh", "anatomy_kernels.h")
# Ampere (8.0), Jetson Orin (8.7), Ada (8.9), Hopper (9.0): the default of the build command and of build_plugin.
DEFAULT_ARCHS = "80;87;89;90"
BUILD_COMMAND = "python -m kasf.anatomy_op.tensorrt_plugin build --tensorrt-include DIR --arch XY"
# Plugin libraries loaded into this process, by resolved path: TensorRT's handles, kept alive with the process.
_loaded: dict[str, Any] = {}


class TensorRTPluginError(RuntimeError):
    """The TensorRT plugin cannot be built, found or registered here (the message says what to do)."""


# ---------------------------------------------------------------- what a build is keyed by

def cache_root() -> Path:
    """Where built plugin libraries live: $KASF_CACHE/tensorrt-plugin (default ~/.cache/kasf/tensorrt-plugin)."""
    return Path(os.environ.get("KASF_CACHE") or Path.home() / ".cache" / "kasf") / "tensorrt-plugin"


def source_hash(sources: Path = SOURCES) -> str:
    """SHA-256 over the files the build reads (names and contents), so any edit makes a new cache entry."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        path = sources / name
        if not path.exists():
            raise TensorRTPluginError(f"the plugin source {path} is missing (kasf installed without cpp_ext?)")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def header_tensorrt_version(include: Path) -> str:
    """'10.16.0' from NvInferVersion.h (8.x defines the numbers directly, 10.x through TRT_*_ENTERPRISE macros)."""
    header = Path(include) / "NvInferVersion.h"
    if not header.exists():
        raise TensorRTPluginError(f"{include} has no NvInferVersion.h: point --tensorrt-include at TensorRT's "
                                  "include folder")
    defines = dict(re.findall(r"^\s*#define\s+(\w+)\s+(\w+)", header.read_text(errors="replace"), re.MULTILINE))

    def value(name: str) -> str:
        seen = 0
        while name in defines and not name.isdigit() and seen < 8:  # follow NV_TENSORRT_MAJOR -> TRT_MAJOR_...
            name, seen = defines[name], seen + 1
        if not name.isdigit():
            raise TensorRTPluginError(f"{header}: cannot read the TensorRT version")
        return name

    return ".".join(value(f"NV_TENSORRT_{part}") for part in ("MAJOR", "MINOR", "PATCH"))


def release_version(version: str) -> str:
    """'10.16.0.72' (tensorrt.__version__) -> '10.16.0', the spelling of the headers."""
    return ".".join(str(version).split(".")[:3])


def normalise_archs(archs: str | Sequence[str]) -> tuple[str, ...]:
    """'87;90', '8.7,sm_90', ['87'] -> ('87', '90'): CMake's spelling, sorted, without repeats."""
    items = re.split(r"[;,\s]+", archs) if isinstance(archs, str) else list(archs)
    out = set()
    for item in items:
        item = str(item).strip().lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not item:
            continue
        if not re.fullmatch(r"\d{2,3}[af]?", item):
            raise TensorRTPluginError(f"GPU architecture {item!r} is not a compute capability like 87 or 8.7")
        out.add(item)
    if not out:
        raise TensorRTPluginError("no GPU architecture given (e.g. --arch 87 for Jetson Orin, 90 for H100)")
    return tuple(sorted(out))


def build_key(sources_sha256: str, tensorrt_version: str, archs: Sequence[str]) -> str:
    """The cache folder name of one build: 'trt10.16.0-sm87_90-<first 16 hex of the source hash>'."""
    return f"trt{release_version(tensorrt_version)}-sm{'_'.join(normalise_archs(archs))}-{sources_sha256[:16]}"


def find_cached_plugin(root: Path, sources_sha256: str, tensorrt_version: str, arch: str) -> Path | None:
    """A built library in ``root`` for these sources and TensorRT version whose architectures include ``arch``."""
    if not root.is_dir():
        return None
    wanted_version = release_version(tensorrt_version)
    for info_path in sorted(root.glob(f"*/{BUILD_INFO}")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        library = info_path.parent / LIBRARY_NAME
        if (info.get("source_sha256") == sources_sha256 and info.get("tensorrt_version") == wanted_version
                and arch in info.get("archs", []) and library.exists()):
            return library
    return None


# ---------------------------------------------------------------- building (needs cmake, nvcc, TensorRT's headers)

def find_tensorrt_include() -> Path | None:
    """The folder holding NvInferRuntime.h ($TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include, system paths), or None."""
    candidates = [os.environ.get("TENSORRT_INCLUDE_DIR", "")]
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(os.path.join(os.environ["TENSORRT_ROOT"], "include"))
    candidates += ["/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                   "/usr/local/TensorRT/include", "/opt/tensorrt/include"]
    for directory in candidates:
        if directory and (Path(directory) / "NvInferRuntime.h").exists():
            return Path(directory)
    return None


def missing_build_tools(include: Path | None) -> str | None:
    """What this machine lacks to build the plugin, or None when cmake, nvcc and the headers are all there."""
    lacks = [f"{tool} ({why})" for tool, why in (("cmake", ">= 3.18"), ("nvcc", "the CUDA toolkit"))
             if shutil.which(tool) is None]
    if include is None or not (Path(include) / "NvInferRuntime.h").exists():
        lacks.append("TensorRT's headers (NvInferRuntime.h; pass --tensorrt-include or set TENSORRT_INCLUDE_DIR)")
    return "; ".join(lacks) or None


def build_plugin(tensorrt_include: Path | None = None, archs: str | Sequence[str] = DEFAULT_ARCHS,
                 output: Path | None = None, jobs: int | None = None) -> Path:
    """Build the plugin library with CMake unless this (sources, TensorRT version, architectures) is built.

    Returns the library's path: ``output/libkasf_tensorrt_plugin.so`` when ``output`` is given, else
    ``cache_root()/KEY/libkasf_tensorrt_plugin.so``. A ``plugin.json`` beside it records the key's parts.
    """
    include = Path(tensorrt_include) if tensorrt_include else find_tensorrt_include()
    if include is None or not (include / "NvInferRuntime.h").exists():
        raise TensorRTPluginError(f"cannot build the TensorRT {PLUGIN_NAME} plugin here: missing "
                                  f"{missing_build_tools(include)}")
    archs = normalise_archs(archs)
    version = header_tensorrt_version(include)
    if int(version.split(".")[0]) < MIN_TENSORRT_MAJOR:
        raise TensorRTPluginError(f"the {PLUGIN_NAME} plugin needs TensorRT >= {MIN_TENSORRT_MAJOR}; the headers in "
                                  f"{include} are TensorRT {version}")
    sha = source_hash()
    key = build_key(sha, version, archs)
    target = Path(output) if output else cache_root() / key
    library = target / LIBRARY_NAME
    info = {"key": key, "source_sha256": sha, "tensorrt_version": version, "archs": list(archs),
            "tensorrt_include": str(include)}
    if library.exists() and _read_info(target).get("key") == key:
        return library  # built before: no compiler needed
    lacks = missing_build_tools(include)
    if lacks:
        raise TensorRTPluginError(f"cannot build the TensorRT {PLUGIN_NAME} plugin here: missing {lacks}")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target) as scratch:
        build = Path(scratch) / "cmake"
        _run(["cmake", "-S", str(SOURCES / "tensorrt"), "-B", str(build), f"-DTENSORRT_INCLUDE_DIR={include}",
              f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}", "-DCMAKE_BUILD_TYPE=Release"], "cmake configure")
        _run(["cmake", "--build", str(build), "-j", str(jobs or os.cpu_count() or 2)], "cmake build")
        # Library first, its plugin.json last: an interrupted copy leaves no key that claims the library is current.
        os.replace(build / LIBRARY_NAME, library)
        (Path(scratch) / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
        os.replace(Path(scratch) / BUILD_INFO, target / BUILD_INFO)
    return library


def _read_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise TensorRTPluginError(f"{what} of the TensorRT plugin failed:\n{' '.join(command)}\n"
                                  f"{(result.stdout + result.stderr)[-4000:]}")


# ---------------------------------------------------------------- loading (needs only tensorrt and the library)

def require_plugin_support(trt: Any) -> None:
    """Plugin engines and ONNX need TensorRT >= 10: say that, rather than fail later on a missing symbol."""
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTPluginError(f"the {PLUGIN_NAME} plugin needs TensorRT >= {MIN_TENSORRT_MAJOR} (IPluginV3); this "
                                  f"is TensorRT {trt.__version__}: export with --anatomy-op decomposed instead")


def _not_built(detail: str) -> TensorRTPluginError:
    return TensorRTPluginError(f"the TensorRT {PLUGIN_NAME} plugin library is not built here ({detail}): build it "
                               f"once with `{BUILD_COMMAND}` (XY: this GPU's compute capability, e.g. 87 for Jetson "
                               f"Orin), or set {ENV_LIBRARY}=/path/to/{LIBRARY_NAME}")


def library_for_engine(trt: Any, metadata: Mapping[str, Any]) -> Path:
    """The plugin library an engine's sidecar points to; never builds.

    Order: $KASF_TENSORRT_PLUGIN; the path recorded at export; the cache entry of the recorded key (the same build
    made on this machine).
    """
    require_plugin_support(trt)
    if os.environ.get(ENV_LIBRARY):
        path = Path(os.environ[ENV_LIBRARY])
        if not path.exists():
            raise TensorRTPluginError(f"{ENV_LIBRARY}={path}: no such file")
        return path
    recorded = metadata.get("plugin_library")
    if recorded and Path(recorded).exists():
        return Path(recorded)
    key = metadata.get("plugin_key")
    if key and (cache_root() / key / LIBRARY_NAME).exists():
        return cache_root() / key / LIBRARY_NAME
    raise _not_built(f"the engine was built with {recorded or '?'} (key {key or '?'})")


def library_for_build(trt: Any, arch: str, explicit: Path | None = None) -> Path:
    """The plugin library an engine build uses: ``explicit``, $KASF_TENSORRT_PLUGIN, the cached build for this
    TensorRT and GPU, else one built now (once) when cmake, nvcc and the headers are here."""
    require_plugin_support(trt)
    explicit = explicit or (Path(os.environ[ENV_LIBRARY]) if os.environ.get(ENV_LIBRARY) else None)
    if explicit:
        if not explicit.exists():
            raise TensorRTPluginError(f"TensorRT plugin library not found: {explicit}")
        return explicit
    cached = find_cached_plugin(cache_root(), source_hash(), str(trt.__version__), arch)
    if cached:
        return cached
    include = find_tensorrt_include()
    lacks = missing_build_tools(include)
    if lacks:
        raise _not_built(f"nothing in {cache_root()} for TensorRT {release_version(trt.__version__)} and sm_{arch}, "
                         f"and this machine lacks {lacks} to build it")
    assert include is not None
    if release_version(header_tensorrt_version(include)) != release_version(trt.__version__):
        raise TensorRTPluginError(f"the headers in {include} are TensorRT {header_tensorrt_version(include)} but the "
                                  f"tensorrt module is {trt.__version__}: set TENSORRT_INCLUDE_DIR to the matching "
                                  "include folder")
    return build_plugin(include, [arch])


def build_info(library: Path) -> dict[str, Any]:
    """What ``plugin.json`` beside a built library says (key, TensorRT version, architectures), or {}."""
    return _read_info(Path(library).parent)


def register_plugin(trt: Any, library: str | Path) -> Path:
    """Load a built plugin library into the registry of an imported ``tensorrt`` module; returns its path.

    Checks that ``AnatomyFeatures`` v1 is then in the registry (the name, version and namespace the ONNX parser
    looks up for the exported node). Safe to call more than once: a library is loaded once per process and its
    handle kept, since TensorRT unloads the library with it.
    """
    require_plugin_support(trt)
    path = Path(library)
    if not path.exists():
        raise TensorRTPluginError(f"TensorRT plugin library not found: {path}")
    key = str(path.resolve())
    registry = trt.get_plugin_registry()
    if key not in _loaded:
        try:
            handle = registry.load_library(key)
        except Exception as err:  # the bindings raise on a failed dlopen in some versions, return None in others
            raise TensorRTPluginError(f"TensorRT {trt.__version__} could not load {path}: {err}") from None
        if handle is None:
            raise TensorRTPluginError(f"TensorRT {trt.__version__} could not load {path} (see TensorRT's log: a "
                                      "library built for another TensorRT or GPU architecture?)")
        _loaded[key] = handle
    if _find_creator(registry) is None:
        raise TensorRTPluginError(f"{PLUGIN_NAME} v{PLUGIN_VERSION} is not in TensorRT's plugin registry after "
                                  f"loading {path}")
    return path


def _find_creator(registry: Any) -> Any:
    """``get_creator`` (TensorRT >= 10, any plugin interface), else the older ``get_plugin_creator``."""
    lookup = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    return lookup(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)


def load_plugin(library: str | Path) -> Path:
    """Import tensorrt and register a built plugin library with it (see :func:`register_plugin`)."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTPluginError("the TensorRT plugin needs the tensorrt Python package: pip install tensorrt "
                                  "(and a CUDA GPU)") from err
    return register_plugin(trt, library)


# ---------------------------------------------------------------- python -m kasf.anatomy_op.tensorrt_plugin build

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kasf.anatomy_op.tensorrt_plugin",
                                     description=f"Build the TensorRT {PLUGIN_NAME} plugin library once (CMake).")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build into $KASF_CACHE/tensorrt-plugin/KEY (or -o DIR); print the "
                                              "library's path")
    build.add_argument("--tensorrt-include", type=Path, help="TensorRT's include folder (default: "
                                                             "$TENSORRT_INCLUDE_DIR, $TENSORRT_ROOT/include, system)")
    build.add_argument("--arch", default=DEFAULT_ARCHS,
                       help=f"GPU compute capabilities, e.g. 87 (Jetson Orin) or '87;90' (default {DEFAULT_ARCHS})")
    build.add_argument("-o", "--output", type=Path, help="folder for the library instead of the cache")
    build.add_argument("-j", "--jobs", type=int)
    args = parser.parse_args(argv)
    try:
        library = build_plugin(args.tensorrt_include, args.arch, args.output, args.jobs)
    except (TensorRTPluginError, OSError) as err:
        return report_error("kasf tensorrt_plugin", err)
    print(library)
    return 0


if __name__ == "__main__":
    sys.exit(main())
