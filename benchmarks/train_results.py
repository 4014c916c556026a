"""Held-out results of finished kasf-train runs, side by side: the table README's training section shows.

Not a test. For each run folder it reads ``best.pt`` (the checkpoint picked on the validation subject; its
metadata holds the config, the command, the budget and the validation report) and scores it again with kasf-eval's
code on a second test file of the same held-out subject seen through other cameras (``--source``, made by
``kasf-prepare mocap ... --seed 0``). It writes a markdown table (and JSON beside it):

    python benchmarks/train_results.py --source runs/cmu_mocap.pkl --out benchmarks/results/train_cmu16.md \\
        "per-frame MLP=runs/final-mlp" "KASportsFormer-t=runs/final-kasf-t"

``--fit`` adds a column scored on the run's own *training* clips, through new cameras of the training's camera
generator (seed 777, one camera per clip): a model whose error there is as high as on the held-out subject does
not overfit, it underfits, and regularisation is the wrong remedy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kasf.checkpoint import load_checkpoint, read_checkpoint
from kasf.data.sources import build_clip_store
from kasf.model import count_parameters
from kasf.training.evaluate import evaluate_model


def _training_clip_windows(cfg: dict[str, Any], n_frames: int) -> Any:
    from kasf.training.datasets import mocap_windows
    from kasf.training.mocap import load_clips, split_by_subject

    train, _ = split_by_subject(load_clips(cfg["mocap_root"]), cfg["val_subjects"])
    return mocap_windows(train, 777, n_frames, n_frames, 1, test=True)


def _row(label: str, run: Path, unseen: Any, fit: bool = False) -> dict[str, Any]:
    best = run / "best.pt"
    info = read_checkpoint(best)
    meta = info.metadata
    cfg = meta["train_config"]
    model = load_checkpoint(best)
    report = evaluate_model(model, unseen, flip=True)
    val = meta["best_report"] or meta["val_report"]
    with open(run / "log.csv") as f:
        last = f.read().strip().splitlines()[-1].split(",")
    fit_report = evaluate_model(model, _training_clip_windows(cfg, model.n_frames), flip=True) if fit else None
    return {
        "label": label, "run": str(run), "parameters": count_parameters(model),
        "budget_min": cfg["time_budget_min"], "clock": cfg.get("time_budget_clock", "wall"), "epochs": cfg["epochs"],
        "threads": cfg["threads"], "steps_at_best": meta["global_step"], "command": meta["command"],
        "val": {k: val[k] for k in ("mpjpe", "p_mpjpe", "mpjpe_last_frame", "mpjpe_centre_frame",
                                     "p_mpjpe_last_frame", "p_mpjpe_centre_frame") if k in val},
        "unseen": {k: report[k] for k in ("mpjpe", "p_mpjpe", "mpjpe_last_frame", "mpjpe_centre_frame",
                                          "p_mpjpe_last_frame", "p_mpjpe_centre_frame", "accel_error")},
        "log_last_row": last,
        "training_clips": None if fit_report is None else {k: fit_report[k] for k in ("mpjpe", "p_mpjpe")},
    }


def _table(rows: list[dict[str, Any]], source: str) -> str:
    fit = any(r.get("training_clips") for r in rows)
    lines = [
        f"Held-out subject cmu16 only (never trained on). \"val\": the training's validation windows (3 fixed "
        f"cameras per clip, seed 1234), on which `best.pt` was picked; \"unseen cameras\": `{source}` (4 other "
        "cameras per clip, other detector noise), scored by kasf-eval's code. Millimetres, flip test on, 27-frame "
        "windows; \"last\" is the causal streaming frame, \"centre\" the centre of the window; P = P-MPJPE.",
        "",
        *(["\"training clips\": the run's own training clips (other subjects) through new cameras of the training's "
            "camera generator (seed 777, one per clip), flip test on: as high as held-out means underfitting.", ""]
          if fit else []),
        "| model | parameters | budget | steps at best | val MPJPE | val P-MPJPE | unseen MPJPE | unseen P-MPJPE | "
        "last MPJPE / P | centre MPJPE / P | accel |" + (" training clips MPJPE / P |" if fit else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if fit else ""),
    ]
    for r in rows:
        u, v = r["unseen"], r["val"]
        budget = (f"{r['budget_min']:g} {'CPU-' if r['clock'] == 'cpu' else ''}min" if r["budget_min"] > 0
                  else f"{r.get('epochs')} epochs") + f", {r['threads']} thread(s)"
        fit_cell = ""
        if fit:
            t = r.get("training_clips")
            fit_cell = f" {t['mpjpe']:.1f} / {t['p_mpjpe']:.1f} |" if t else " - |"
        lines.append(
            f"| {r['label']} | {r['parameters']:,} | {budget} | {r['steps_at_best']} | {v['mpjpe']:.1f} | "
            f"{v['p_mpjpe']:.1f} | {u['mpjpe']:.1f} | {u['p_mpjpe']:.1f} | "
            f"{u['mpjpe_last_frame']:.1f} / {u['p_mpjpe_last_frame']:.1f} | "
            f"{u['mpjpe_centre_frame']:.1f} / {u['p_mpjpe_centre_frame']:.1f} | {u['accel_error']:.2f} |" + fit_cell)
    lines += ["", "Commands:", ""] + [f"- {r['label']}: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER (a kasf-train output_dir with best.pt)")
    parser.add_argument("--source", required=True, help="generic source file of the held-out subject")
    parser.add_argument("--out", required=True, help="markdown file to write (JSON beside it)")
    parser.add_argument("--fit", action="store_true", help="also score each run on its own training clips")
    args = parser.parse_args()
    unseen = build_clip_store(args.source, "generic", 27)["test"]
    rows = [_row(label, Path(folder), unseen, args.fit) for label, folder in (r.split("=", 1) for r in args.runs)]
    out = Path(args.out)
    out.write_text(_table(rows, args.source))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
