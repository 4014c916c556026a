"""Training losses of the reference recipe (torch): MPJPE + lambda_n * N-MPJPE + lambda_v * velocity error, plus
kasf's optional lambda_last * MPJPE of the window's last frame (the frame causal streaming reports).

They work in whatever units the targets use (normalised screen units during training).
"""

from __future__ import annotations

import torch


def loss_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean joint error."""
    return torch.linalg.vector_norm(pred - target, dim=-1).mean()


def loss_n_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after the optimal scale per frame (scale ambiguity of monocular lifting is not penalised twice)."""
    num = (pred * target).sum(dim=(-2, -1), keepdim=True)
    den = (pred * pred).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return loss_mpjpe(pred * (num / den), target)


def loss_velocity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Error of frame-to-frame motion (B, T, J, 3): smooth, temporally consistent output."""
    if pred.shape[1] <= 1:
        return pred.new_zeros(())
    return torch.linalg.vector_norm(torch.diff(pred, dim=1) - torch.diff(target, dim=1), dim=-1).mean()


def total_loss(pred: torch.Tensor, target: torch.Tensor, lambda_n_mpjpe: float = 0.5,
               lambda_mpjpe_velocity: float = 20.0,
               lambda_last_frame: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's weighted sum, plus its parts for logging: detached 0-d tensors, not floats, so a training
    step never waits for the device just to log (the caller sums them and reads them once in a while).

    ``lambda_last_frame`` > 0 adds the MPJPE of the last frame again with that weight: the last frame sees no
    future context, so a window-averaged loss gives it 1/T of the attention that causal streaming needs."""
    pred = pred.float()
    parts = {"loss_mpjpe": loss_mpjpe(pred, target), "loss_n_mpjpe": loss_n_mpjpe(pred, target),
             "loss_velocity": loss_velocity(pred, target)}
    total = parts["loss_mpjpe"] + lambda_n_mpjpe * parts["loss_n_mpjpe"] + \
        lambda_mpjpe_velocity * parts["loss_velocity"]
    if lambda_last_frame > 0:
        parts["loss_last_frame"] = loss_mpjpe(pred[:, -1], target[:, -1])
        total = total + lambda_last_frame * parts["loss_last_frame"]
    return total, {k: v.detach() for k, v in parts.items()}
