"""kasf-info: what a checkpoint holds, and the table of model presets."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kasf.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from kasf.cli_errors import report_error
from kasf.model.presets import PRESETS, count_parameters, gflops_per_window, presets_table


def describe_checkpoint(path: str, preset_or_config: str | None = None, allow_pickle: bool = False
                        ) -> dict[str, Any]:
    """Format, config, size and metadata of a checkpoint, as a JSON-friendly dict."""
    info = read_checkpoint(path, allow_pickle=allow_pickle)
    report: dict[str, Any] = {"path": path, "layout": info.layout, "format_version": info.format_version,
                              "preset": info.preset, "tensors": len(info.state_dict),
                              "stored_parameters": int(sum(t.numel() for k, t in info.state_dict.items()
                                                           if "running_" not in k and "num_batches" not in k)),
                              "metadata": info.metadata, **{k: v for k, v in info.conventions.items() if v}}
    if info.layout == "reference" and preset_or_config is None:
        report["note"] = "reference layout stores no architecture; pass --preset or --config to check it"
        return report
    model = load_checkpoint(path, preset_or_config, allow_pickle=allow_pickle)
    report.update(config=model.config, parameters=count_parameters(model),
                  gflops_per_window=round(gflops_per_window(model), 3))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kasf-info", description="Show what a kasf or reference checkpoint holds, or the model presets.")
    parser.add_argument("checkpoint", nargs="?", help="a .pt/.pth checkpoint (kasf or reference layout)")
    parser.add_argument("--preset", choices=list(PRESETS), help="architecture of a reference-layout checkpoint")
    parser.add_argument("--config", help="reference YAML config of a reference-layout checkpoint")
    parser.add_argument("--presets", action="store_true", help="print parameters and GFLOPs of every preset")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also unpickle Python objects (only for files you trust)")
    parser.add_argument("--env", action="store_true",
                        help="say which anatomy-feature path (native C++/CUDA operator or pure PyTorch) is active, "
                             "and why")
    args = parser.parse_args(argv)
    if args.env:
        from kasf.anatomy_op.native import status

        env = status()
        print(json.dumps(env, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in env.items()))
        return 0
    if args.presets:
        print(presets_table())
        return 0
    if not args.checkpoint:
        parser.error("give a CHECKPOINT, --presets or --env")
    if args.preset and args.config:
        parser.error("--preset and --config are alternatives; give one")
    try:
        report = describe_checkpoint(args.checkpoint, args.preset or args.config, args.allow_pickle)
    except (OSError, CheckpointError, ValueError) as err:
        return report_error("kasf-info", err)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            else:
                print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
