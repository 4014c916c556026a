"""kasf-export: a checkpoint -> ONNX / TensorRT engine / Triton repository, each proven to match PyTorch."""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kasf.cli_errors import report_error, report_interrupt
from kasf.model.layers import ORT_ATTENTION_CHOICES
from kasf.quiet import quiet_third_party

FORMAT_NAMES = ("onnx", "onnx-cpu", "engine", "triton", "all")


@dataclass(frozen=True)
class Flag:
    name: str  # argparse dest
    formats: frozenset[str]
    help: str


_ALL = frozenset(FORMAT_NAMES)
_CPU = frozenset({"onnx-cpu"})
# One table: which flag applies to which format. `kasf-export --help` prints it; validation reads it.
# onnx: portable (standard ops; TensorRT, any runtime). onnx-cpu: for ONNX Runtime on CPUs only (contrib attention
# nodes, ORT's fusions applied once and saved; docs/cpu_inference.md). engine: TensorRT. triton: a model repository.
FLAGS: tuple[Flag, ...] = (
    Flag("half", frozenset({"engine", "triton", "all"}), "FP16 (TensorRT engine; Triton's TensorRT accelerator)"),
    Flag("int8", _ALL, "INT8: ONNX Runtime quantised ONNX for CPUs; calibrated TensorRT engine"),
    Flag("calib", _ALL, "windows for INT8 calibration and parity: a keypoint .npz or a generic source .pkl"),
    Flag("batch", _ALL, "fixed batch size"),
    Flag("dynamic_batch", _ALL, "MIN,OPT,MAX of a dynamic batch (default 1,8,64)"),
    Flag("opset", _ALL, "ONNX opset (>= 17, default 17)"),
    Flag("simplify", _ALL - _CPU, "run onnx-simplifier on the ONNX"),
    Flag("anatomy_op", _ALL - _CPU, "decomposed (standard ONNX ops) or plugin (one kasf::AnatomyFeatures node)"),
    Flag("ort_attention", _CPU, "contrib (default; sessions with 2+ threads) or standard (single-threaded "
                                "sessions: kasf-stream, --workers); docs/cpu_inference.md"),
    Flag("workspace", frozenset({"engine", "triton", "all"}), "TensorRT workspace in GB (default 4)"),
    Flag("device", _ALL, "device of the PyTorch reference and of parity runs: cpu or cuda"),
)


def flags_table() -> str:
    header = "  flag              " + "  ".join(f"{f:8s}" for f in FORMAT_NAMES[:-1])
    rows = [header]
    for flag in FLAGS:
        cells = "  ".join(f"{'yes' if fmt in flag.formats else '-':8s}" for fmt in FORMAT_NAMES[:-1])
        rows.append(f"  --{flag.name.replace('_', '-'):16s}{cells}  {flag.help}")
    return "\n".join(rows)


class UsageError(ValueError):
    """A flag or value the user can fix; reported as one line with exit status 2 (kasf.cli_errors)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kasf-export", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a kasf or reference checkpoint and prove the artefact matches PyTorch "
                    "(a parity JSON is written beside every artefact).",
        epilog="Flags per format ('all' accepts every flag):\n" + flags_table())
    parser.add_argument("checkpoint", help="kasf checkpoint, reference-layout .pth (with --preset/--config), "
                                           "or 'demo'")
    parser.add_argument("--format", default="onnx",
                        help="onnx | onnx-cpu | engine | triton | all (default onnx); onnx-cpu is the ONNX Runtime "
                             "CPU graph, which only ONNX Runtime can run")
    parser.add_argument("-o", "--output", help="output file (onnx, engine) or folder (triton, all)")
    parser.add_argument("--preset", help="architecture of a reference-layout checkpoint")
    parser.add_argument("--config", help="reference YAML config of a reference-layout checkpoint")
    parser.add_argument("--half", action="store_true", default=None)
    parser.add_argument("--int8", action="store_true", default=None)
    parser.add_argument("--calib")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--dynamic-batch")
    parser.add_argument("--opset", type=int)
    parser.add_argument("--simplify", action="store_true", default=None)
    parser.add_argument("--anatomy-op", choices=("decomposed", "plugin"))
    parser.add_argument("--ort-attention", choices=ORT_ATTENTION_CHOICES)
    parser.add_argument("--workspace", type=float)
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--name", help="model name in the Triton repository (default: the checkpoint's stem)")
    parser.add_argument("--verbose", action="store_true",
                        help="let third-party warnings through (TorchScript tracer, ONNX Runtime quantisation)")
    return parser


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [o for a in parser._actions for o in a.option_strings]
        raise UsageError(f"unknown flag {unknown[0]}{_suggest(unknown[0].split('=')[0], known)}")
    if args.format not in FORMAT_NAMES:
        raise UsageError(f"unknown format {args.format!r} (choose {', '.join(FORMAT_NAMES)})"
                         f"{_suggest(args.format, FORMAT_NAMES)}")
    for flag in FLAGS:
        if getattr(args, flag.name) is not None and args.format not in flag.formats:
            where = ", ".join(sorted(flag.formats - {"all"}))
            raise UsageError(f"--{flag.name.replace('_', '-')} does not apply to --format {args.format} "
                             f"(it applies to: {where})")
    if args.preset and args.config:
        raise UsageError("--preset and --config are alternatives; give one")
    if args.half and args.int8:
        raise UsageError("--half and --int8 exclude each other (INT8 engines already fall back to FP16)")
    if args.calib and not args.int8:
        raise UsageError("--calib is for --int8 calibration; add --int8 or drop --calib")
    if args.batch is not None and args.dynamic_batch is not None:
        raise UsageError("--batch (fixed) and --dynamic-batch exclude each other")
    if args.batch is not None and args.batch < 1:
        raise UsageError("--batch must be >= 1")
    args.batch_range = _batch_range(args.dynamic_batch) if args.batch is None else None
    if args.opset is not None and args.opset < 17:
        raise UsageError(f"--opset {args.opset} is too old: kasf needs opset >= 17")
    if args.format in ("triton", "all") and args.batch is not None:
        raise UsageError("Triton's dynamic batching needs a dynamic batch: use --dynamic-batch, not --batch")
    return args


def _batch_range(text: str | None) -> tuple[int, int, int]:
    if text is None:
        return (1, 8, 64)
    try:
        low, opt, high = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--dynamic-batch takes MIN,OPT,MAX (e.g. 1,8,64), got {text!r}") from None
    if not 1 <= low <= opt <= high:
        raise UsageError(f"--dynamic-batch needs 1 <= MIN <= OPT <= MAX, got {text}")
    return low, opt, high


def _outputs(args: argparse.Namespace, stem: str) -> dict[str, Path]:
    """Artefact paths per format; 'all' and 'triton' take a folder."""
    if args.format in ("onnx", "onnx-cpu", "engine"):
        suffix = ".engine" if args.format == "engine" else ".onnx"
        default = stem + (".cpu.onnx" if args.format == "onnx-cpu" else suffix)
        main = Path(args.output) if args.output else Path(default)
        if main.suffix != suffix:
            raise UsageError(f"--format {args.format} writes a {suffix} file; -o {main} has another suffix")
        onnx_path = main if args.format != "engine" else main.with_suffix(".onnx")
        return {"onnx": onnx_path, "engine": main.with_suffix(".engine"), "folder": main.parent}
    folder = Path(args.output) if args.output else Path(stem + ("_triton" if args.format == "triton" else
                                                                  "_export"))
    return {"onnx": folder / f"{stem}.onnx", "engine": folder / f"{stem}.engine", "folder": folder,
            "triton": folder if args.format == "triton" else folder / "triton"}


def run_export(args: argparse.Namespace) -> list[Any]:
    """Do the export the parsed flags describe; returns the parity reports."""
    import torch

    from kasf.checkpoint import load_checkpoint, read_checkpoint, resolve_checkpoint_path
    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnx, quantize_int8
    from kasf.export.parity import check_parity, pytorch_references
    from kasf.export.windows import calibration_windows, load_real_windows
    from kasf.runtime.lifter import Lifter

    if args.format in ("engine", "all"):
        from kasf.tensorrt_api import import_tensorrt

        import_tensorrt()  # fail before the long work, with the install command
    device = args.device or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: PyTorch sees no CUDA GPU here")
    checkpoint = resolve_checkpoint_path(args.checkpoint)
    info = read_checkpoint(checkpoint)
    model = load_checkpoint(checkpoint, args.preset or args.config, device=device)
    preset = info.preset or args.preset
    stem = Path(args.checkpoint).stem if args.checkpoint != "demo" else "kasf-demo"
    paths = _outputs(args, stem)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    real = load_real_windows(model.n_frames)
    calib = calibration_windows(args.calib, model.n_frames) if args.calib else None
    anatomy_op = args.anatomy_op or "decomposed"

    reference, reference64 = pytorch_references(model, device)

    def meta(precision: str) -> dict[str, str]:
        return build_metadata(model.config, preset, precision, anatomy_op, args.batch_range, str(checkpoint))

    reports = []

    def judge(path: Path, precision: str, lifter: Lifter) -> None:
        report = check_parity(reference, lifter.predict, str(path), lifter.backend, precision, model.n_frames, real,
                              reference64)
        report.write(str(path) + ".parity.json")
        print(report.summary())
        reports.append(report)

    if args.format == "onnx-cpu":
        from kasf.export.onnx_export import export_onnxruntime_cpu

        onnx_path = export_onnxruntime_cpu(model, paths["onnx"], meta("fp32"), opset=args.opset or 17,
                                           batch=args.batch, attention=args.ort_attention or "contrib")
    else:
        onnx_path = export_onnx(model, paths["onnx"], meta("fp32"), opset=args.opset or 17, batch=args.batch,
                                anatomy_op=anatomy_op, simplify=bool(args.simplify))
    print(f"wrote {onnx_path}")
    judge(onnx_path, "fp32", Lifter.load(onnx_path, device=device))
    served = onnx_path
    if args.int8 and args.format in ("onnx", "onnx-cpu", "triton", "all"):
        int8_path = quantize_int8(onnx_path, onnx_path.with_suffix(".int8.onnx"), meta("int8"),
                                  calib)
        print(f"wrote {int8_path}")
        judge(int8_path, "int8", Lifter.load(int8_path, device="cpu"))
        served = int8_path
    engine_path = None
    if args.format in ("engine", "all"):
        engine_path = _build_engine(args, model, onnx_path, paths["engine"], meta,
                                    calib if calib is not None else real.inputs, anatomy_op)
        print(f"wrote {engine_path}")
        judge(engine_path, "int8" if args.int8 else "fp16" if args.half else "fp32",
              Lifter.load(engine_path, device="cuda"))
    if args.format in ("triton", "all"):
        from kasf.export.triton import write_repository

        low, _, high = args.batch_range
        models = write_repository(paths["triton"], args.name or stem.replace(".", "_"), served, model.n_frames,
                                  high, meta("int8" if args.int8 else "fp32"), fp16=bool(args.half))
        for kind, model_dir in models.items():
            print(f"wrote Triton repository {model_dir.parent} ({kind} server; model {model_dir.name}, "
                  f"from {served.name}): tritonserver --model-repository {model_dir.parent}")
    return reports


def _build_engine(args: argparse.Namespace, model: Any, onnx_path: Path, engine_path: Path, meta: Any,
                  calib: np.ndarray, anatomy_op: str) -> Path:
    from kasf.export.onnx_export import export_onnx, quantize_int8
    from kasf.export.tensorrt_build import BuildOptions, build_engine
    from kasf.tensorrt_api import import_tensorrt, tensorrt_major

    trt = import_tensorrt()
    precision = "int8" if args.int8 else "fp16" if args.half else "fp32"
    source = onnx_path
    if tensorrt_major(trt) >= 11 and precision != "fp32":
        # Strongly typed TensorRT: the precision must be in the ONNX itself.
        if precision == "fp16":
            source = export_onnx(model, onnx_path.with_suffix(".fp16.onnx"), meta("fp16"), opset=args.opset or 17,
                                 batch=args.batch, anatomy_op=anatomy_op, half=True)
        else:
            source = quantize_int8(onnx_path, onnx_path.with_suffix(".qdq.onnx"), meta("int8"), calib,
                                   symmetric=True)
    batch = (args.batch,) * 3 if args.batch else args.batch_range
    options = BuildOptions(precision=precision, batch=batch, workspace_gb=args.workspace or 4.0,
                           timing_cache_dir=engine_path.parent,
                           calibration=calib if precision == "int8" else None,
                           calibration_cache=engine_path.with_suffix(".calib.cache"))
    return build_engine(source, engine_path, meta(precision), options)


EXIT_PARITY_FAILED = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0, 2 for anything the user can fix (kasf.cli_errors), 3 when an artefact fails its parity check."""
    try:
        args = parse_args(argv)
        quiet_third_party(args.verbose)
        reports = run_export(args)
    except KeyboardInterrupt:
        return report_interrupt("kasf-export", "no artefact was left half written")
    except (OSError, ValueError, RuntimeError) as err:  # UsageError, CheckpointError, TensorRTMissing, ...
        return report_error("kasf-export", err)
    failed = [r for r in reports if not r.passed]
    if failed:
        print(f"kasf-export: parity FAILED for {', '.join(Path(r.artefact).name for r in failed)} "
              "(see the .parity.json beside each)", file=sys.stderr)
        return EXIT_PARITY_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
