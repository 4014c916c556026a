"""Package a finished run's ``best.pt`` as the bundled demo checkpoint (``kasf/assets/demo.pt``).

Not a test. The checkpoint keeps its config, command, training config and validation report, and gains what a
user of ``kasf-info demo`` needs to trust it: its score on the held-out subject through cameras the run never saw
(``--source``, with the command that made it), the per-frame baseline it was compared with, and where it came
from. Refuses a file over the size limit (the package carries it).

    python benchmarks/package_demo.py runs/final-kasf-t --source runs/cmu_mocap.pkl \\
        --source-command "kasf-prepare mocap ../shared/data/cmu_mocap --out runs/cmu_mocap.pkl --val-subjects cmu16 --seed 0" \\
        --baseline benchmarks/results/train_cmu16.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kasf.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from kasf.data.sources import build_clip_store
from kasf.training.evaluate import evaluate_model

DEMO = Path(__file__).resolve().parents[1] / "kasf" / "assets" / "demo.pt"
MAX_BYTES = 10 * 1024 * 1024
SUMMARY_KEYS = ("mpjpe", "p_mpjpe", "n_mpjpe", "accel_error", "mpjpe_last_frame", "mpjpe_centre_frame",
                "p_mpjpe_last_frame", "p_mpjpe_centre_frame", "upper_body", "lower_body", "windows", "flip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="kasf-train output_dir holding best.pt")
    parser.add_argument("--source", required=True, help="held-out test file through unseen cameras")
    parser.add_argument("--source-command", required=True, help="the command that made --source")
    parser.add_argument("--baseline", help="JSON of benchmarks/train_results.py with the equal-budget comparison")
    parser.add_argument("--out", default=str(DEMO))
    args = parser.parse_args()
    best = Path(args.run) / "best.pt"
    info = read_checkpoint(best)
    model = load_checkpoint(best)
    report = evaluate_model(model, build_clip_store(args.source, "generic", model.n_frames)["test"], flip=True)
    metadata = dict(info.metadata)
    metadata["eval_unseen_cameras"] = {**{k: report[k] for k in SUMMARY_KEYS},
                                       "command": f"{args.source_command} && kasf-eval --checkpoint demo "
                                                  f"--source {args.source}"}
    metadata["packaged_from"] = f"{best} (best validation epoch of the run started by 'command')"
    if args.baseline:
        metadata["equal_budget_comparison"] = [
            {"label": r["label"], "command": r["command"], "val": r["val"], "unseen": r["unseen"]}
            for r in json.loads(Path(args.baseline).read_text())]
    out = save_checkpoint(args.out, model, info.preset, metadata)
    size = out.stat().st_size
    if size > MAX_BYTES:
        out.unlink()
        raise SystemExit(f"{out}: {size / 1e6:.1f} MB is over the demo's {MAX_BYTES / 1e6:.0f} MB limit; removed")
    print(f"wrote {out} ({size / 1e6:.2f} MB): unseen cameras MPJPE {report['mpjpe']:.1f} mm, "
          f"P-MPJPE {report['p_mpjpe']:.1f} mm, last frame {report['mpjpe_last_frame']:.1f} mm")


if __name__ == "__main__":
    main()
