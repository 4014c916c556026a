"""Metrics and losses against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kasf.training import losses, metrics


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def test_mpjpe_hand_computed():
    truth = np.zeros((1, 17, 3))
    pred = np.zeros((1, 17, 3))
    pred[0, 3] = [3.0, 4.0, 0.0]  # one joint 5 mm off
    assert metrics.mpjpe(pred, truth)[0] == pytest.approx(5.0 / 17)
    per_joint = metrics.joint_errors(pred, truth)[0]
    assert per_joint[3] == pytest.approx(5.0) and per_joint.sum() == pytest.approx(5.0)


def test_p_mpjpe_of_rotated_scaled_shifted_copy_is_zero():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 17, 3)) * 300
    pred = 1.7 * truth @ _rotation(rng) + np.array([50.0, -20.0, 400.0])
    assert metrics.mpjpe(pred, truth).mean() > 100
    np.testing.assert_allclose(metrics.p_mpjpe(pred, truth), 0, atol=1e-6)


def test_p_mpjpe_does_not_undo_a_mirror_image():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(2, 17, 3)) * 300
    mirrored = truth * np.array([-1.0, 1.0, 1.0])
    assert metrics.p_mpjpe(mirrored, truth).min() > 10


def test_n_mpjpe_ignores_scale_only():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(3, 17, 3)) * 200
    np.testing.assert_allclose(metrics.n_mpjpe(0.6 * truth, truth), 0, atol=1e-9)
    assert metrics.n_mpjpe(truth + 10, truth).mean() > 1


def test_acceleration_error_of_constant_velocity_is_zero():
    frames = np.arange(12)[:, None, None]
    truth = np.zeros((12, 17, 3))
    pred = truth + frames * np.array([3.0, -1.0, 2.0])  # drifts at a constant velocity
    np.testing.assert_allclose(metrics.acceleration_error(pred, truth), 0, atol=1e-12)
    assert metrics.velocity_error(pred, truth) == pytest.approx(np.full(11, np.sqrt(14)))
    jerk = truth.copy()
    jerk[5, 0, 0] = 2.0  # a 2 mm spike: second differences 2, -4, 2 on one joint
    np.testing.assert_allclose(metrics.acceleration_error(jerk, truth)[3:6], np.array([2, 4, 2]) / 17)


def test_body_parts_and_shape_mismatch():
    per_joint = np.arange(17, dtype=float)
    parts = metrics.body_part_errors(per_joint)
    assert parts["lower_body"] == pytest.approx(np.mean([1, 2, 3, 4, 5, 6]))
    assert parts["upper_body"] == pytest.approx(np.mean(range(7, 17)))
    with pytest.raises(ValueError, match="same"):
        metrics.mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 16, 3)))


def test_torch_losses_agree_with_numpy_metrics():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(2, 9, 17, 3))
    pred = truth + rng.normal(size=truth.shape) * 0.1
    t, p = torch.tensor(truth), torch.tensor(pred)
    assert float(losses.loss_mpjpe(p, t)) == pytest.approx(metrics.mpjpe(pred, truth).mean())
    assert float(losses.loss_n_mpjpe(p, t)) == pytest.approx(metrics.n_mpjpe(pred, truth).mean())
    assert float(losses.loss_velocity(p, t)) == pytest.approx(
        np.mean([metrics.velocity_error(pred[i], truth[i]) for i in range(2)]))
    total, parts = losses.total_loss(p, t, lambda_n_mpjpe=0.5, lambda_mpjpe_velocity=20.0)
    assert not any(v.requires_grad for v in parts.values())  # logging never keeps the graph alive
    assert float(total) == pytest.approx(float(parts["loss_mpjpe"] + 0.5 * parts["loss_n_mpjpe"]
                                               + 20 * parts["loss_velocity"]), rel=1e-5)


def test_last_frame_weight_adds_the_last_frames_error_only():
    """Hand-made case: only the last frame is wrong, by 3-4-5 triangles, so its MPJPE is 5 and the window's 5/T."""
    truth = torch.zeros(1, 4, 17, 3)
    pred = truth.clone()
    pred[:, -1, :, 0], pred[:, -1, :, 1] = 3.0, 4.0
    plain, _ = losses.total_loss(pred, truth, lambda_n_mpjpe=0.0, lambda_mpjpe_velocity=0.0)
    weighted, parts = losses.total_loss(pred, truth, lambda_n_mpjpe=0.0, lambda_mpjpe_velocity=0.0,
                                        lambda_last_frame=2.0)
    assert float(plain) == pytest.approx(5.0 / 4)
    assert float(parts["loss_last_frame"]) == pytest.approx(5.0)
    assert float(weighted) == pytest.approx(5.0 / 4 + 2.0 * 5.0)
    pred_first = truth.clone()
    pred_first[:, 0, :, 0] = 3.0  # an error away from the last frame is not weighted again
    weighted_first, _ = losses.total_loss(pred_first, truth, lambda_n_mpjpe=0.0, lambda_mpjpe_velocity=0.0,
                                          lambda_last_frame=2.0)
    assert float(weighted_first) == pytest.approx(3.0 / 4)


def test_p_mpjpe_loss_matches_the_metric_and_ignores_similarity_transforms():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(2, 5, 17, 3))
    pred = truth + 0.1 * rng.normal(size=truth.shape)
    expected = metrics.p_mpjpe(pred, truth).mean()
    got = losses.loss_p_mpjpe(torch.tensor(pred), torch.tensor(truth))
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # A rotated, scaled and shifted copy of the truth has the right shape: no loss, while MPJPE sees it.
    moved = 1.7 * truth @ _rotation(rng) + np.array([0.3, -2.0, 5.0])
    assert float(losses.loss_p_mpjpe(torch.tensor(moved), torch.tensor(truth))) == pytest.approx(0.0, abs=1e-9)
    assert float(losses.loss_mpjpe(torch.tensor(moved), torch.tensor(truth))) > 1.0
    # A mirror image is not a rotation: the loss must not align it away.
    mirrored = truth * np.array([-1.0, 1.0, 1.0])
    assert float(losses.loss_p_mpjpe(torch.tensor(mirrored), torch.tensor(truth))) > 0.1


def test_p_mpjpe_loss_gradient_points_towards_the_right_shape():
    """Gradient descent on the shape term alone lowers the metric (the transform is solved without gradient)."""
    rng = np.random.default_rng(4)
    truth = torch.tensor(rng.normal(size=(1, 3, 17, 3)), dtype=torch.float32)
    pred = (truth + 0.3 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    before = float(losses.loss_p_mpjpe(pred, truth))
    optimizer = torch.optim.SGD([pred], lr=5.0)
    for _ in range(50):
        optimizer.zero_grad()
        losses.loss_p_mpjpe(pred, truth).backward()
        optimizer.step()
    assert torch.isfinite(pred.grad).all()
    assert float(losses.loss_p_mpjpe(pred, truth)) < 0.25 * before


def test_p_mpjpe_weight_and_last_frame_weight_add_up():
    rng = np.random.default_rng(5)
    truth = torch.tensor(rng.normal(size=(2, 4, 17, 3)))
    pred = truth + 0.2 * torch.tensor(rng.normal(size=truth.shape))
    total, parts = losses.total_loss(pred, truth, lambda_n_mpjpe=0.0, lambda_mpjpe_velocity=0.0,
                                     lambda_last_frame=2.0, lambda_p_mpjpe=0.5)
    shape_all = losses.loss_p_mpjpe(pred, truth)
    last = losses.loss_mpjpe(pred[:, -1], truth[:, -1]) + 0.5 * losses.loss_p_mpjpe(pred[:, -1], truth[:, -1])
    assert float(parts["loss_p_mpjpe"]) == pytest.approx(float(shape_all))
    assert float(parts["loss_last_frame"]) == pytest.approx(float(last))
    assert float(total) == pytest.approx(float(losses.loss_mpjpe(pred, truth) + 0.5 * shape_all + 2.0 * last))
