"""``kasf-stream``: live 3D poses from a camera, a video, an image folder or recorded keypoints.

With no source it runs the bundled sample (real motion capture through a virtual camera) and prints the MPJPE
against its 3D truth, so the whole pipeline can be checked with no camera and no download.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kasf.cli_errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, error_line, report_error, report_interrupt
from kasf.quiet import quiet_third_party
from kasf.runtime.stream import MODES, Pipeline, Pose, Stats, run



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kasf-stream", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Real-time 3D human pose from a camera, a video, images or 2D keypoints (docs/streaming.md).",
        epilog="Delay: causal 0 frames, centre +13 frames, chunk up to stride-1 frames (plus compute).\n"
               "With no source the bundled sample runs and its MPJPE against the 3D truth is printed.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="OpenCV camera index")
    src.add_argument("--video", metavar="PATH_OR_URL", help="video file or stream URL")
    src.add_argument("--images", metavar="DIR", help="folder of images, in name order")
    src.add_argument("--keypoints", metavar="FILE.npz", help="recorded 2D keypoints (see docs/streaming.md)")
    p.add_argument("--fps", type=float, help="frame rate of --images (default 30) or override for --camera")
    p.add_argument("--camera-retries", type=int, default=3, help="reconnect attempts before giving up")
    p.add_argument("--detector", choices=("rtmlib", "mediapipe"), default="rtmlib",
                   help="2D detector for image sources")
    p.add_argument("--det", help="rtmlib person detector: local .onnx or URL (default: rtmlib Body for --det-mode)")
    p.add_argument("--pose", help="rtmlib RTMPose model: local .onnx or URL")
    p.add_argument("--det-mode", default="balanced", help="rtmlib mode: lightweight, balanced, performance")
    p.add_argument("--det-backend", default="onnxruntime", help="rtmlib backend: onnxruntime, opencv, openvino")
    p.add_argument("--det-device", default="cpu", help="rtmlib device: cpu, cuda, mps")
    p.add_argument("--det-frequency", type=int, default=1, help="run the person detector every N frames")
    p.add_argument("--kpt-threshold", type=float, default=0.3,
                   help="rtmlib keypoints scoring below this count as missing (RTMPose scores are not probabilities)")
    p.add_argument("--model", default="demo",
                   help="checkpoint, .onnx, .engine or a Triton model: triton://HOST:PORT/MODEL (gRPC), "
                        "triton+http://HOST:PORT/MODEL (default: bundled demo)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--allow-cpu-fallback", action="store_true",
                   help="with --device cuda on a machine without a usable GPU, run on the CPU instead of failing")
    p.add_argument("--precision", default=None, help="fp32, bf16, fp16, int8 (as the artefact allows)")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch CPU threads for the lifter (default 1: the stream shares the CPU with capture, the "
                        "2D detector and rendering, and a small lifter at batch 1-4 loses more to thread hand-offs "
                        "than it gains; 0 keeps PyTorch's default)")
    p.add_argument("--inference-path", choices=("auto", "native", "reference", "fused"), default="auto",
                   help="how a checkpoint runs: 'native' is the whole forward in one C++ call on the CPU (fp32, or "
                        "bf16 products on AMX / AVX512-BF16 with --precision bf16); "
                        "'auto' (default) takes it on the CPU where it is available and says which it took")
    p.add_argument("--workers", type=int, default=1,
                   help="ONNX Runtime on the CPU (an .onnx model): lift each frame's people as this many parts at "
                        "once, one single-threaded session per part (e.g. 2 on a 2-core machine with several people)")
    p.add_argument("--mode", choices=MODES, default="causal")
    p.add_argument("--stride", type=int, default=9, help="frames per lift in chunk mode")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation (doubles the lift batch)")
    p.add_argument("--smooth", nargs="?", const="1.0,0.0", metavar="MIN_CUTOFF,BETA",
                   help="One-Euro smoothing of the 3D output (default 1.0,0.0)")
    p.add_argument("--hold", type=int, default=10, help="frames a lost person is held before the track is dropped")
    p.add_argument("--out", metavar="FILE.jsonl", help="JSON lines, one per person per frame ('-' = stdout)")
    p.add_argument("--udp", metavar="HOST:PORT", help="send each pose as a JSON datagram")
    p.add_argument("--save", metavar="FILE.mp4", help="video with 2D skeletons and a 3D panel (needs OpenCV)")
    p.add_argument("--show", action="store_true", help="live window (needs OpenCV with GUI)")
    p.add_argument("--stats", metavar="FILE.json", help="write counts and per-stage latency percentiles")
    p.add_argument("--max-frames", type=int, help="stop after this many input frames")
    p.add_argument("--realtime", action="store_true",
                   help="play the sample or --keypoints at their frame rate (default: as fast as the lifter goes)")
    p.add_argument("--loop", action="store_true", help="replay the sample or --keypoints until stopped (Ctrl-C)")
    p.add_argument("--serve", metavar="[HOST:]PORT",
                   help="live 3D view in a browser at http://HOST:PORT/ (host default 127.0.0.1; docs/streaming.md)")
    p.add_argument("--serve-token", metavar="TOKEN", help="with --serve: the page needs ?token=TOKEN in its URL")
    p.add_argument("--verbose", action="store_true", help="let third-party log lines (OpenCV, ONNX Runtime) through")
    return p


def _parse_smooth(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        min_cutoff, beta = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--smooth wants MIN_CUTOFF,BETA (e.g. 1.0,0.0); got {text!r}") from None
    if min_cutoff <= 0 or beta < 0:
        raise ValueError("--smooth: MIN_CUTOFF must be > 0 and BETA >= 0")
    return min_cutoff, beta


def _open_source(args: argparse.Namespace) -> tuple[Any, np.ndarray | None]:
    from kasf.runtime import sources

    if (args.realtime or args.loop) and (args.video or args.images or args.camera is not None):
        raise ValueError("--realtime and --loop apply to the sample and --keypoints (live sources are real time)")
    if args.keypoints:
        return _replayed(sources.KeypointSource.from_file(args.keypoints), args), None
    if args.video:
        return sources.VideoSource(args.video), None
    if args.images:
        return sources.ImageFolderSource(args.images, fps=args.fps or 30.0), None
    if args.camera is not None:
        return sources.CameraSource(args.camera, retries=args.camera_retries, fps=args.fps), None
    source, truth = sources.sample_source()
    return _replayed(source, args), truth


def _replayed(source: Any, args: argparse.Namespace) -> Any:
    source.realtime, source.loop = args.realtime, args.loop
    return source


def _detector(args: argparse.Namespace) -> Any:
    from kasf.runtime.detectors import build_detector

    if args.detector == "rtmlib":
        return build_detector("rtmlib", det=args.det, pose=args.pose, mode=args.det_mode, backend=args.det_backend,
                              device=args.det_device, det_frequency=args.det_frequency,
                              min_keypoint_score=args.kpt_threshold)
    return build_detector("mediapipe")


def sample_mpjpe(poses: list[Pose], truth: np.ndarray) -> float:
    """MPJPE (mm) of emitted poses against the sample's root-relative 3D truth of the same frames."""
    if not poses:
        raise ValueError("no poses to score")
    pred = np.stack([p.joints3d for p in poses]).astype(np.float64)
    ref = truth[[p.frame for p in poses]].astype(np.float64)
    return float(np.linalg.norm(pred - ref, axis=-1).mean())


def _print_summary(summary: dict[str, Any], pipeline: Pipeline, lifter: Any, stream: Any) -> None:
    err = sys.stderr
    print(f"kasf-stream: {summary['frames_in']} frames in, {summary['poses_out']} poses out, "
          f"{summary['dropped_frames']} dropped, {summary['lift_calls']} lift calls, mode {pipeline.mode} "
          f"(+{pipeline.delay_frames} frames delay), lifter {lifter.backend}/{lifter.device}"
          f"{', flip TTA' if pipeline.flip else ''}{', One-Euro' if pipeline.smooth else ''}", file=err)
    if lifter.choice:
        print(f"  {lifter.choice}", file=err)
    for stage, s in summary["stages"].items():
        print(f"  {stage:<10} p50 {s['p50_ms']:8.2f} ms  p95 {s['p95_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms  "
              f"(n={s['n']})", file=err)
    if summary.get("frames_per_s"):
        print(f"  throughput {summary['frames_per_s']:.1f} frames/s over {summary['wall_s']:.2f} s", file=err)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    source = None
    sinks: list[Any] = []
    try:
        smooth = _parse_smooth(args.smooth)
        if args.threads < 0:
            raise ValueError("--threads must be >= 0")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from kasf.runtime.lifter import Lifter

        lifter = Lifter.load(args.model, device=args.device, precision=args.precision,
                             allow_fallback=args.allow_cpu_fallback, workers=args.workers,
                             inference_path=args.inference_path)
        source, truth = _open_source(args)
        detector = _detector(args) if args.keypoints is None and truth is None else None
        pipeline = Pipeline(lifter, source.image_wh, mode=args.mode, stride=args.stride, flip=args.flip,
                            smooth=smooth, hold=args.hold, stats=Stats())
        from kasf.runtime import outputs

        if args.out:
            sinks.append(outputs.JsonlSink(args.out))
        if args.udp:
            sinks.append(outputs.UdpSink(args.udp))
        if args.save or args.show:
            sinks.append(outputs.VideoSink(args.save, args.show, source.image_wh, source.fps,
                                           delay=pipeline.delay_frames + args.hold + 1))
        if args.serve_token is not None and not args.serve:
            raise ValueError("--serve-token needs --serve")
        if args.serve:
            from kasf.runtime.serve import LiveServer, page_config

            sinks.append(LiveServer(args.serve, page_config(lifter, pipeline, source), pipeline.stats,
                                    dropped=lambda: source.dropped, token=args.serve_token,
                                    delay_frames=pipeline.delay_frames))
    except KeyboardInterrupt:
        for sink in sinks:
            sink.close()
        return EXIT_INTERRUPTED
    except Exception as err:
        for sink in sinks:
            sink.close()
        if source is not None:
            source.close()
        hint = ""
        if args.model == "demo" and "demo" in str(err) and "not found" in str(err):
            hint = (" (the bundled demo checkpoint is missing from this install: reinstall kasf, or pass --model "
                    "with a checkpoint, .onnx or .engine of your own, e.g. from kasf-train)")
        return report_error("kasf-stream", err, hint)
    try:
        result = run(source, pipeline, detector, sinks, keep_poses=truth is not None and not args.loop,
                     max_frames=args.max_frames)
    except Exception as err:  # outputs were flushed and closed by run(); say what broke, without a traceback
        print(f"kasf-stream: error after {pipeline.stats.frames_in} frames (outputs so far are kept): "
              f"{type(err).__name__}: {error_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = result.stats.summary()
    summary.update(mode=pipeline.mode, delay_frames=pipeline.delay_frames, flip=pipeline.flip,
                   smooth=smooth, threads=args.threads, model=str(args.model), backend=lifter.backend, device=lifter.device,
                   source=source.name, error=result.error, interrupted=result.interrupted)
    if truth is not None and result.poses:
        summary["mpjpe_mm"] = sample_mpjpe(result.poses, truth)
    _print_summary(summary, pipeline, lifter, source)
    if "mpjpe_mm" in summary:
        print(f"  MPJPE vs the sample's 3D truth: {summary['mpjpe_mm']:.1f} mm over {len(result.poses)} poses "
              f"({source.name})", file=sys.stderr)
    if args.stats:
        try:
            Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
            Path(args.stats).write_text(json.dumps(summary, indent=2))
        except OSError as err:
            return report_error("kasf-stream", err)
    if result.error:
        print(f"kasf-stream: error: {result.error} (the {summary['poses_out']} poses emitted were written)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if result.interrupted:
        return report_interrupt("kasf-stream", f"every frame read came out as a pose ({summary['poses_out']} "
                                               "poses); outputs flushed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
