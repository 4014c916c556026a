"""Evaluation in millimetres: predictions of test windows, metrics per action / joint / body part, the report.

The protocol of the reference: optional flip test-time augmentation (average with the mirrored prediction of the
mirrored input), root set to zero, prediction denormalised to pixels, multiplied by each frame's 2.5D factor,
made root-relative and compared with the root-relative ``joints_2.5d_image``. Metrics are averaged per action,
then over actions. MPJPE of the last and of the centre frame of each window tell what streaming in causal and
centre mode would get.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from kasf import skeleton
from kasf.conventions import flip_pose, to_millimetres
from kasf.data.sources import Windows
from kasf.training import metrics

REPORT_KEYS = ("mpjpe", "p_mpjpe", "accel_error", "mpjpe_last_frame", "mpjpe_centre_frame", "p_mpjpe_last_frame",
               "p_mpjpe_centre_frame", "per_action", "per_joint")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for 'bf16'/'fp16', nothing for 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: np.ndarray | torch.Tensor, flip: bool = True, batch_size: int = 256,
            device: str | torch.device = "cpu", precision: str = "fp32", progress: bool = False) -> np.ndarray:
    """Normalised root-relative predictions (N, T, 17, 3) for windows (N, T, 17, 3), with flip TTA if asked;
    ``progress`` shows a bar on stderr (a full test split takes tens of seconds on a CPU)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        starts = range(0, len(inputs), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="evaluating", unit="batch", leave=False, dynamic_ncols=True)
        for start in starts:
            x = torch.as_tensor(np.asarray(inputs[start:start + batch_size]), dtype=torch.float32).to(device)
            with autocast_context(device, precision):
                y = model(x).float()
                if flip:
                    y = (y + flip_pose(model(flip_pose(x)).float())) / 2
            y[:, :, skeleton.ROOT_JOINT] = 0
            outputs.append(y.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0,) + tuple(np.shape(inputs)[1:]), np.float32)


def _mean_over_actions(values: np.ndarray, actions: np.ndarray) -> float:
    return float(np.mean([values[actions == a].mean() for a in np.unique(actions)]))


def evaluate_predictions(pred: np.ndarray, windows: Windows) -> dict[str, Any]:
    """All metrics of normalised predictions of every test window; a JSON-friendly report."""
    index = np.arange(len(windows))
    image_wh = windows.window_field("image_wh", index)[:, 0]
    factor = windows.window_field("2.5d_factor", index)
    truth = windows.window_field("joints_2.5d_image", index).astype(np.float64)
    truth = truth - truth[:, :, skeleton.ROOT_JOINT:skeleton.ROOT_JOINT + 1]
    actions = windows.window_field("action", index)[:, 0]
    pred_mm = to_millimetres(pred, image_wh, factor)
    joint_err = metrics.joint_errors(pred_mm, truth)  # (N, T, 17)
    frame_mpjpe = joint_err.mean(-1)  # (N, T)
    frame_pa = metrics.p_mpjpe(pred_mm, truth)
    frame_n = metrics.n_mpjpe(pred_mm, truth)
    accel = metrics.acceleration_error(pred_mm, truth).mean(-1) if pred.shape[1] > 2 else np.zeros(len(pred))
    centre = pred.shape[1] // 2
    per_action = {}
    for action in np.unique(actions):
        sel = actions == action
        per_action[str(action)] = {"mpjpe": float(frame_mpjpe[sel].mean()), "p_mpjpe": float(frame_pa[sel].mean()),
                                   "accel_error": float(accel[sel].mean()), "windows": int(sel.sum())}
    per_joint_by_action = np.stack([joint_err[actions == a].mean(axis=(0, 1)) for a in np.unique(actions)])
    per_joint = per_joint_by_action.mean(0)
    report = {
        "mpjpe": _mean_over_actions(frame_mpjpe.mean(1), actions),
        "p_mpjpe": _mean_over_actions(frame_pa.mean(1), actions),
        "n_mpjpe": _mean_over_actions(frame_n.mean(1), actions),
        "accel_error": _mean_over_actions(accel, actions),
        "mpjpe_last_frame": _mean_over_actions(frame_mpjpe[:, -1], actions),
        "mpjpe_centre_frame": _mean_over_actions(frame_mpjpe[:, centre], actions),
        "p_mpjpe_last_frame": _mean_over_actions(frame_pa[:, -1], actions),
        "p_mpjpe_centre_frame": _mean_over_actions(frame_pa[:, centre], actions),
        "per_action": per_action,
        "per_joint": {name: float(v) for name, v in zip(skeleton.JOINT_NAMES, per_joint)},
        **metrics.body_part_errors(per_joint),
        "windows": int(len(pred)), "frames_per_window": int(pred.shape[1]),
    }
    return report


def evaluate_model(model: torch.nn.Module, windows: Windows, flip: bool = True, batch_size: int = 256,
                   device: str | torch.device = "cpu", precision: str = "fp32", progress: bool = False
                   ) -> dict[str, Any]:
    """Predict every test window and compute the report (see :func:`evaluate_predictions`)."""
    if not windows.is_test:
        raise ValueError("evaluation needs a test split (with joints_2.5d_image, 2.5d_factor and action)")
    inputs = windows.window_field("inputs", np.arange(len(windows)))
    pred = predict(model, inputs, flip=flip, batch_size=batch_size, device=device, precision=precision,
                   progress=progress)
    report = evaluate_predictions(pred, windows)
    report["flip"] = bool(flip)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the main numbers, per action and per body part."""
    lines = [f"MPJPE {report['mpjpe']:.1f} mm | P-MPJPE {report['p_mpjpe']:.1f} mm | "
             f"accel {report['accel_error']:.2f} mm/frame^2 | last frame {report['mpjpe_last_frame']:.1f} mm "
             f"(P {report['p_mpjpe_last_frame']:.1f}) | centre frame {report['mpjpe_centre_frame']:.1f} mm "
             f"(P {report['p_mpjpe_centre_frame']:.1f}) | upper {report['upper_body']:.1f} mm | "
             f"lower {report['lower_body']:.1f} mm | flip {'on' if report.get('flip') else 'off'} | "
             f"{report['windows']} windows",
             f"{'action':<28}{'MPJPE':>9}{'P-MPJPE':>9}{'accel':>8}{'windows':>9}"]
    for action, row in sorted(report["per_action"].items()):
        lines.append(f"{action:<28}{row['mpjpe']:>9.1f}{row['p_mpjpe']:>9.1f}{row['accel_error']:>8.2f}"
                     f"{row['windows']:>9d}")
    lines.append("per joint: " + ", ".join(f"{k} {v:.0f}" for k, v in report["per_joint"].items()))
    return "\n".join(lines)
