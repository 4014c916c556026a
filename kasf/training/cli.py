"""Console entry points: kasf-prepare, kasf-train, kasf-eval.

Every expected failure (missing file, bad field, unknown config key) ends with one line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from kasf.atomic import atomic_path
from kasf.cli_errors import report_error, report_interrupt
from kasf.checkpoint import CheckpointError
from kasf.data.sources import SourceError
from kasf.training.config import ConfigError
from kasf.training.mocap import MocapError

# Errors a user can fix, reported as one line with exit code 2 (kasf.cli_errors): bad values (ValueError, a NaN loss
# from too high a learning rate), and OSError for unreadable inputs
# and unwritable outputs (a read-only folder, a file where a folder should be).
_USER_ERRORS = (ConfigError, SourceError, MocapError, CheckpointError, OSError, ValueError, FloatingPointError)


def write_source_pickle(data: dict, path: str | os.PathLike) -> Path:
    """Write a source dict as a pickle (temporary name, then renamed)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def prepare_main(argv: Sequence[str] | None = None) -> int:
    """kasf-prepare mocap CLIPS_DIR --out FILE.pkl: 3D clips -> a generic source file through virtual cameras."""
    parser = argparse.ArgumentParser(prog="kasf-prepare", description="Prepare training data.")
    sub = parser.add_subparsers(dest="what", required=True)
    mocap = sub.add_parser("mocap", help="3D motion capture (npz clips, mm, Z up) -> generic source file")
    mocap.add_argument("clips", help="folder of clips (npz with 'joints3d', 'action', 'subject')")
    mocap.add_argument("--out", required=True, help="output source file (.pkl)")
    mocap.add_argument("--val-subjects", default="cmu16", help="comma-separated subjects for the test split")
    mocap.add_argument("--seed", type=int, default=0)
    mocap.add_argument("--train-cameras", type=int, default=4, help="virtual cameras per training clip")
    mocap.add_argument("--test-cameras", type=int, default=4, help="virtual cameras per test clip")
    args = parser.parse_args(argv)
    from kasf.training.mocap import prepare_mocap

    try:
        data = prepare_mocap(args.clips, [s for s in args.val_subjects.split(",") if s], seed=args.seed,
                             train_cameras=args.train_cameras, test_cameras=args.test_cameras)
        write_source_pickle(data, args.out)
    except _USER_ERRORS as err:
        return report_error("kasf-prepare", err)
    except KeyboardInterrupt:
        return report_interrupt("kasf-prepare", f"nothing was written to {args.out}")
    print(f"wrote {args.out}: train {len(data['train']['joint_2d'])} frames, "
          f"test {len(data['test'].get('joint_2d', []))} frames (generic flavour)")
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """kasf-train --config CONFIG.yaml [key=value ...]"""
    from kasf.training.config import config_keys_help

    parser = argparse.ArgumentParser(prog="kasf-train", description="Train KASportsFormer / MotionAGFormer.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config_keys_help())
    parser.add_argument("--config", help="YAML config (reference key names accepted)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 preset=kasportsformer-t")
    args = parser.parse_args(argv)
    from kasf.training.config import load_config
    from kasf.training.engine import train

    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "kasf-train " + " ".join(shlex.quote(a) for a in argv_list)
    try:
        cfg = load_config(args.config, args.overrides)
        result = train(cfg, command=command)
    except _USER_ERRORS as err:
        return report_error("kasf-train", err)
    except KeyboardInterrupt:  # a second Ctrl-C: the last end-of-epoch latest.pt stands
        return report_interrupt("kasf-train", "stopped at once; the last end-of-epoch latest.pt is kept")
    if result["interrupted"]:
        return report_interrupt(
            "kasf-train", f"saved {result['saved']} at epoch {result['epoch']}, batch {result['batches_done']} "
                          f"(step {result['step']}); run the same command again to resume from there")
    print(json.dumps({k: v for k, v in result.items() if k != "best_report"}))
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """kasf-eval --checkpoint CKPT --source FILE [--flavour ...] [--no-flip] [--report PATH.json]"""
    parser = argparse.ArgumentParser(prog="kasf-eval", description="Evaluate a checkpoint on a source file's test "
                                                                   "split (MPJPE, P-MPJPE, acceleration error in mm).")
    parser.add_argument("--checkpoint", required=True, help="checkpoint path (kasf or reference layout) or 'demo'")
    parser.add_argument("--preset", help="preset or YAML config for a reference-layout checkpoint")
    parser.add_argument("--source", help="source file; default for 'demo': the held-out mocap subject")
    parser.add_argument("--flavour", default="generic", choices=["sportspose", "worldpose", "generic"])
    parser.add_argument("--no-flip", action="store_true", help="disable flip test-time augmentation")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--cache-dir", help="where the memory-mapped test windows go")
    parser.add_argument("--allow-pickle", action="store_true", help="trust a checkpoint with Python objects")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    from kasf.checkpoint import load_checkpoint
    from kasf.data.sources import build_clip_store
    from kasf.training.evaluate import evaluate_model, format_report

    try:
        if not args.source:
            raise SourceError("--source is required (a SportsPose, WorldPose or generic source file; make one from "
                              "motion capture with kasf-prepare mocap)")
        model = load_checkpoint(args.checkpoint, args.preset, device=args.device, allow_pickle=args.allow_pickle)
        if not args.no_progress:
            print(f"kasf-eval: cutting the test windows of {args.source} ...", file=sys.stderr, flush=True)
        stores = build_clip_store(args.source, args.flavour, model.n_frames, cache_dir=args.cache_dir)
        report = evaluate_model(model, stores["test"], flip=not args.no_flip, batch_size=args.batch_size,
                                device=args.device, precision=args.precision, progress=not args.no_progress)
    except _USER_ERRORS as err:
        return report_error("kasf-eval", err)
    except KeyboardInterrupt:
        return report_interrupt("kasf-eval", "no report was written")
    report.update(checkpoint=str(args.checkpoint), source=str(args.source), flavour=args.flavour)
    print(format_report(report))
    if args.report:
        try:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=1, default=_json_default))
        except OSError as err:
            return report_error("kasf-eval", err)
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
