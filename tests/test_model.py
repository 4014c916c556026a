"""The model against the reference implementation's fixtures, and its behaviour on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from kasf import skeleton
from kasf.model import KASportsFormer, build, count_parameters, model_config
from kasf.anatomy_op.features import bone_features
from kasf.model.layers import _attend, _row_heads, normalize_adjacency, spatial_adjacency
from tests.conftest import SHARED, need_shared


def _strip(state_dict):
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def small_model(official_small) -> KASportsFormer:
    model = KASportsFormer(**official_small["config"]).eval()
    model.load_state_dict(_strip(official_small["checkpoint"]["model"]), strict=True)
    return model


def test_outputs_match_reference(small_model, official_small):
    with torch.no_grad():
        out = small_model(official_small["inputs"])
    err = (out - official_small["outputs"]).abs().max().item()
    assert err < 1e-5, f"max abs error {err}"


def test_fused_inference_path_matches_too(official_small):
    model = KASportsFormer(**official_small["config"]).eval().set_inference_path("fused")
    model.load_state_dict(_strip(official_small["checkpoint"]["model"]))
    with torch.no_grad():
        assert (model(official_small["inputs"]) - official_small["outputs"]).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="inference path must be one of"):
        model.set_inference_path("turbo")


def test_grouped_limb_fuser_follows_weight_updates():
    """The packed-weight cache of the grouped path must see in-place weight changes (optimizer steps, loads)."""
    model = build("kasportsformer-t").eval()
    fuser = model.bone_refusion
    fuser.grouped = True
    x = torch.randn(2, 27, 17, 3)
    with torch.no_grad():
        before = fuser(x)
        fuser.mlp_layers[5].mlp_len.fc2.bias.add_(1.0)
        after = fuser(x)
        fuser.grouped = False
        reference = fuser(x)
    assert torch.allclose(after[..., 5, 2], before[..., 5, 2] + 1.0, atol=1e-6)
    assert torch.allclose(after, reference, atol=1e-6)


def test_representation_matches_reference(small_model, official_small):
    with torch.no_grad():
        rep = small_model(official_small["inputs"], return_rep=True)
    assert rep.shape == official_small["rep"].shape
    assert (rep - official_small["rep"]).abs().max().item() < 1e-5


def test_full_model_names_shapes_and_order_match_reference():
    ref = json.loads(need_shared(SHARED / "fixtures" / "official_full_keys.json").read_text())
    model = build("kasportsformer")
    names = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(names) == list(ref["state_dict"])  # order too: reference optimizer states index by it
    assert names == ref["state_dict"]
    assert count_parameters(model) == ref["n_params"] == 29_365_668


def test_reference_yaml_style_config_builds_same_model(official_small):
    cfg = {"model_name": "KASportsFormer", "learning_rate": 5e-4, "batch_size": 32, **official_small["config"]}
    assert model_config(cfg) == model_config(official_small["config"])
    assert model_config({**cfg, "model_name": "MotionAGFormer"})["use_anatomy"] is False


def test_standard_export_form_of_attention_is_multi_head_attention():
    """The ORT-CPU export's 'standard' form (packed q, k, v split with one transpose) against attention written
    out head by head (4 heads of 8 channels, head-major channel order)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 5, 17, 32).unbind(0)  # token rows (N, L, D)
    scale = 8 ** -0.5
    by_head = [torch.softmax(q[..., h * 8:(h + 1) * 8] @ k[..., h * 8:(h + 1) * 8].transpose(1, 2) * scale, -1)
               @ v[..., h * 8:(h + 1) * 8] for h in range(4)]
    expected = torch.cat(by_head, dim=-1)
    heads = _row_heads(torch.cat([q, k, v], -1), 3, 4, 17, 32).unbind(0)
    got = _attend(*heads, scale, torch.nn.Dropout(0.0), fused=False).transpose(1, 2).reshape(-1, 17, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_bone_features_hand_computed():
    joints = torch.zeros(1, 17, 2)
    joints[0, 1] = torch.tensor([3.0, 4.0])  # pelvis->right hip: vector = pelvis - hip = (-3, -4), length 5
    feats = bone_features(joints, torch.tensor(skeleton.BONE_PROXIMAL), torch.tensor(skeleton.BONE_DISTAL))
    assert torch.allclose(feats[0, 0], torch.tensor([-0.6, -0.8, 5.0]))
    # right hip -> right knee: knee at origin, vector = hip - knee = (3, 4)
    assert torch.allclose(feats[0, 1], torch.tensor([0.6, 0.8, 5.0]))
    # a zero-length bone: direction 0, guarded length 1 (as the reference computes)
    assert torch.equal(feats[0, 2], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(feats[0, 16], feats[0, :16].mean(dim=0))


def test_spatial_adjacency_is_symmetric_skeleton_and_normalised():
    adj = spatial_adjacency()
    assert torch.equal(adj, adj.T)
    assert adj.diagonal().sum() == 0
    for joint, parent in enumerate(skeleton.PARENTS):
        if parent >= 0:
            assert adj[joint, parent] == 1
    norm = normalize_adjacency(adj)
    deg = adj.sum(-1)
    assert torch.allclose(norm[0, 1], 1 / torch.sqrt(deg[0] * deg[1]))


@pytest.mark.parametrize("shape", [(2, 27, 17), (2, 26, 17, 3), (2, 27, 16, 3), (2, 27, 17, 2)])
def test_wrong_input_shape_is_one_clear_error(shape):
    model = build("kasportsformer-t").eval()
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 27, 17, 3\)"):
        model(torch.zeros(shape))


def test_integer_input_is_rejected():
    with pytest.raises(ValueError, match="floating-point"):
        build("kasportsformer-t")(torch.zeros(1, 27, 17, 3, dtype=torch.long))


@pytest.mark.parametrize("key,value", [("use_tcn", True), ("hierarchical", True), ("num_joints", 16),
                                       ("act_layer", "swish")])
def test_unsupported_options_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=key if key != "act_layer" else "act_layer"):
        build("kasportsformer-t", **{key: value})


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="kasportsformer-xs"):
        build("kasportsformer-xxl")


def test_training_mode_uses_dropout_drop_path_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = build("kasportsformer-t", drop=0.1, drop_path=0.2)
    x = torch.randn(4, 27, 17, 3)
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, second), "dropout/drop-path must make training passes stochastic"
    bn = model.blocks[0].graph_spatial.mixer.batch_norm
    assert bn.num_batches_tracked.item() == 2
    first.square().mean().backward()
    # As in the reference, norm1_limb exists in every module but only the bone mixer uses it.
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad and all(".norm1_limb." in n and ".bone_" not in n for n in no_grad)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_motionagformer_twin_has_reference_names():
    names = list(build("motionagformer-t").state_dict())
    assert "layers.0.fusion.weight" in names
    assert not any("bone" in n or "limb" in n for n in names)


# ------------------------------------------------------------------------------------------- input_norm (kasf's)

@pytest.mark.parametrize("name, mode", [("kasportsformer-t", "window"), ("kasportsformer-t", "frame"),
                                        ("mlp-baseline", "frame")])
def test_input_norm_makes_the_lifter_equivariant_to_2d_position_and_size(name: str, mode: str) -> None:
    """Moving the person in the image changes nothing; making them k times larger scales the 3D by k."""
    torch.manual_seed(0)
    model = build(name, input_norm=mode).eval()
    x = torch.rand(2, 27, 17, 3)
    moved = x.clone()
    moved[..., :2] = 2.5 * x[..., :2] + torch.tensor([0.3, -0.7])
    with torch.no_grad():
        torch.testing.assert_close(model(moved), 2.5 * model(x), rtol=1e-4, atol=1e-5)


def test_input_norm_by_hand_and_its_limits() -> None:
    from kasf.model.input_norm import canonical_input

    x = torch.zeros(1, 2, 17, 3)
    x[..., 2] = 1.0
    x[0, 0, 1, :2] = torch.tensor([3.0, 4.0])  # one joint 5 units from the pelvis in frame 0, none in frame 1
    x[..., 0] += 10.0  # the whole person moved
    out, size = canonical_input(x, "frame")
    assert size[0, 0].item() == pytest.approx(5 / 17 ** 0.5, rel=1e-5)  # RMS over the 17 joints
    assert size[0, 1].item() == pytest.approx(1e-4)  # a degenerate pose is not divided by zero
    torch.testing.assert_close(out[0, 0, 1, :2], torch.tensor([3.0, 4.0]) / size[0, 0, 0])
    _, window = canonical_input(x, "window")
    assert window.shape == (1, 1, 1, 1) and window.item() == pytest.approx(5 / 34 ** 0.5, rel=1e-5)
    assert canonical_input(x, "none")[0] is x
    with pytest.raises(ValueError, match="input_norm must be one of none, frame, window"):
        build("kasportsformer-t", input_norm="bbox")
    with pytest.raises(ValueError, match="input_norm must be one of none, frame"):
        build("mlp-baseline", input_norm="window")  # would share the size across frames
