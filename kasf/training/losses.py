"""Training losses of the reference recipe (torch): MPJPE + lambda_n * N-MPJPE + lambda_v * velocity error, plus
kasf's optional terms: lambda_p * P-MPJPE (the error left after the best similarity transform: the pose's shape) and
lambda_last * the last frame's position loss again (the frame causal streaming reports).

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


def loss_p_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after the per-frame similarity transform (rotation without reflection, scale, shift) that best maps
    pred onto target: only the shape of the pose is penalised. The transform is solved without gradient (a batched
    3x3 SVD, whose gradient is unstable at repeated singular values); the gradient reaches pred through the aligned
    pose. For the squared error that is the exact gradient of the aligned error (the transform is its optimum); for
    MPJPE a close one."""
    centred_pred = pred - pred.mean(dim=-2, keepdim=True)
    centred_target = target - target.mean(dim=-2, keepdim=True)
    with torch.no_grad():
        p, t = centred_pred.double(), centred_target.double()
        u, s, vt = torch.linalg.svd(p.transpose(-1, -2) @ t)
        # No reflections: where det(u vt) < 0, flip the axis of the smallest singular value.
        sign = torch.where(torch.linalg.det(u @ vt) < 0, -1.0, 1.0).to(u.dtype)
        u = torch.cat([u[..., :2], u[..., 2:] * sign[..., None, None]], dim=-1)
        s = torch.cat([s[..., :2], s[..., 2:] * sign[..., None]], dim=-1)
        rotation = u @ vt  # aligned rows: x @ rotation
        scale = s.sum(dim=-1)[..., None, None] / (p * p).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        transform = (scale * rotation).to(pred.dtype)
    return loss_mpjpe(centred_pred @ transform, centred_target)


def loss_velocity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Error of frame-to-frame motion (B, T, J, 3): smooth, temporally consistent output."""
    if pred.shape[1] <= 1:
        return pred.new_zeros(())
    return torch.linalg.vector_norm(torch.diff(pred, dim=1) - torch.diff(target, dim=1), dim=-1).mean()


def total_loss(pred: torch.Tensor, target: torch.Tensor, lambda_n_mpjpe: float = 0.5,
               lambda_mpjpe_velocity: float = 20.0,
               lambda_last_frame: float = 0.0,
               lambda_p_mpjpe: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference's weighted sum, plus its parts for logging: detached 0-d tensors, not floats, so a training
    step never waits for the device just to log (the caller sums them and reads them once in a while).

    ``lambda_p_mpjpe`` > 0 adds the P-MPJPE (:func:`loss_p_mpjpe`) with that weight. ``lambda_last_frame`` > 0 adds
    the last frame's position loss (its MPJPE, plus ``lambda_p_mpjpe`` times its P-MPJPE) again with that weight:
    the last frame sees no future context, so a window-averaged loss gives it 1/T of the attention that causal
    streaming needs."""
    pred = pred.float()
    parts = {"loss_mpjpe": loss_mpjpe(pred, target), "loss_n_mpjpe": loss_n_mpjpe(pred, target),
             "loss_velocity": loss_velocity(pred, target)}
    total = parts["loss_mpjpe"] + lambda_n_mpjpe * parts["loss_n_mpjpe"] + \
        lambda_mpjpe_velocity * parts["loss_velocity"]
    if lambda_p_mpjpe > 0:
        parts["loss_p_mpjpe"] = loss_p_mpjpe(pred, target)
        total = total + lambda_p_mpjpe * parts["loss_p_mpjpe"]
    if lambda_last_frame > 0:
        parts["loss_last_frame"] = loss_mpjpe(pred[:, -1], target[:, -1])
        if lambda_p_mpjpe > 0:
            parts["loss_last_frame"] = parts["loss_last_frame"] + \
                lambda_p_mpjpe * loss_p_mpjpe(pred[:, -1], target[:, -1])
        total = total + lambda_last_frame * parts["loss_last_frame"]
    return total, {k: v.detach() for k, v in parts.items()}
