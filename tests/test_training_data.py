"""Source files, clip stores, virtual cameras, flip, and one clear error for each kind of bad input."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

from kasf import skeleton
from kasf.conventions import flip_pose
from kasf.data.sources import (ClipStore, SourceError, Windows, build_clip_store, cut_windows, read_source_file,
                               validate_split)
from kasf.training import mocap
from kasf.training.config import ConfigError, load_config
from kasf.training.datasets import WindowBatches, mocap_windows
from tests.training_fakes import (flavoured_source, generic_source, synthetic_clip, write_mocap_folder,
                                  write_pickle)


# ------------------------------------------------------------------------------------------------ cameras, noise

def test_camera_projection_round_trip():
    clip = synthetic_clip(40)
    camera = mocap.random_camera(clip.joints3d, np.random.default_rng(0))
    cam = camera.to_camera(clip.joints3d)
    assert (cam[..., 2] > 0).all()
    pixels = camera.project(cam)
    np.testing.assert_allclose(camera.unproject(pixels, cam[..., 2]), cam, atol=1e-6)
    # world -> camera is a rigid motion: bone lengths survive it
    bone = np.linalg.norm(clip.joints3d[:, 2] - clip.joints3d[:, 1], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(cam[:, 2] - cam[:, 1], axis=-1), bone, rtol=1e-9)


def test_rendered_fields_follow_the_2p5d_convention():
    fields = mocap.render_clip(synthetic_clip(40), np.random.default_rng(1), noise=False)
    cam = fields["joints3d_camera"].astype(np.float64)
    mm = fields["joints_2.5d_image"].astype(np.float64)
    z, z_root = cam[..., 2], cam[:, :1, 2]
    # depth relative to the root is exact in mm; x, y are the weak-perspective pose X * Z_root / Z
    np.testing.assert_allclose(mm[..., 2] - mm[:, :1, 2], z - z_root, atol=0.05)
    np.testing.assert_allclose(mm[..., :2] - mm[:, :1, :2], cam[..., :2] * (z_root / z)[..., None] - cam[:, :1, :2],
                               atol=0.05)
    np.testing.assert_allclose(fields["joint_2d"], fields["joint3d_image"][..., :2], atol=1e-3)
    assert (fields["confidence"] == 1).all()


def test_cameras_and_noise_are_seeded_and_realistic():
    clip = synthetic_clip(200)
    a = mocap.render_clip(clip, np.random.default_rng(5))
    b = mocap.render_clip(clip, np.random.default_rng(5))
    c = mocap.render_clip(clip, np.random.default_rng(6))
    np.testing.assert_array_equal(a["joint_2d"], b["joint_2d"])
    assert not np.allclose(a["joint_2d"], c["joint_2d"])
    clean = a["joint3d_image"][..., :2]
    size = np.linalg.norm(clean.max(1) - clean.min(1), axis=-1)[:, None]
    relative = np.linalg.norm(a["joint_2d"] - clean, axis=-1) / size
    assert 0.002 < np.median(relative) < 0.05  # a few pixels, scaled to the person
    conf = a["confidence"]
    assert conf.min() >= 0.05 and conf.max() <= 1
    assert conf[relative > np.percentile(relative, 95)].mean() < conf[relative < np.median(relative)].mean()


def test_prepare_mocap_splits_by_subject_and_is_reproducible(tmp_path):
    folder = write_mocap_folder(tmp_path / "clips")
    first = mocap.prepare_mocap(folder, ["s3"], seed=3, train_cameras=2, test_cameras=1)
    again = mocap.prepare_mocap(folder, ["s3"], seed=3, train_cameras=2, test_cameras=1)
    assert set(first["train"]["subject"]) == {"s1", "s2"} and set(first["test"]["subject"]) == {"s3"}
    np.testing.assert_array_equal(first["test"]["joint_2d"], again["test"]["joint_2d"])
    assert len(first["train"]["joint_2d"]) == 2 * 2 * 2 * 60
    with pytest.raises(mocap.MocapError, match="not in the data"):
        mocap.prepare_mocap(folder, ["nobody"])


def test_mocap_windows_new_cameras_each_epoch(tmp_path):
    clips = [synthetic_clip(80, seed=i) for i in range(2)]
    one = mocap_windows(clips, seed=1, n_frames=9, stride=3, cameras_per_clip=1)
    two = mocap_windows(clips, seed=2, n_frames=9, stride=3, cameras_per_clip=1)
    assert one.window_field("inputs", [0]).shape == (1, 9, 17, 3)
    assert not np.allclose(one.arrays["inputs"][:50], two.arrays["inputs"][:50])
    val = mocap_windows(clips, seed=7, n_frames=9, stride=9, cameras_per_clip=2, test=True)
    assert val.is_test and len(val) == 2 * 2 * (80 // 9)


def _bone_lengths(joints: np.ndarray) -> np.ndarray:
    children = [j for j, p in enumerate(skeleton.PARENTS) if p >= 0]
    parents = [skeleton.PARENTS[j] for j in children]
    return np.linalg.norm(joints[:, children] - joints[:, parents], axis=-1)  # (T, 16)


def test_augment_clip_new_body_keeps_angles_and_symmetry():
    clip = synthetic_clip(30)
    same = mocap.augment_clip(clip, np.random.default_rng(0))
    np.testing.assert_array_equal(same.joints3d, clip.joints3d)  # the defaults change nothing
    body = mocap.augment_clip(clip, np.random.default_rng(0), bone_scale=0.1).joints3d
    ratio = _bone_lengths(body) / _bone_lengths(clip.joints3d)
    np.testing.assert_allclose(ratio, ratio[:1].repeat(len(ratio), 0), rtol=1e-9)  # one factor per bone
    assert ratio[0].std() > 0.01  # bones scaled differently
    children = [j for j, p in enumerate(skeleton.PARENTS) if p >= 0]
    for left, right in zip(skeleton.FLIP_LEFT, skeleton.FLIP_RIGHT):  # a left bone and its right twin agree
        assert ratio[0, children.index(left)] == pytest.approx(ratio[0, children.index(right)])
    # directions of the bones (the pose's angles) are those of the original body
    for joint in children:
        parent = skeleton.PARENTS[joint]
        unit = lambda j: (j[:, joint] - j[:, parent]) / np.linalg.norm(j[:, joint] - j[:, parent], axis=-1)[:, None]
        np.testing.assert_allclose(unit(body), unit(clip.joints3d), atol=1e-9)
    assert body[..., 2].min() == pytest.approx(clip.joints3d[..., 2].min())  # still standing on the same ground


def test_augment_clip_tempo_resamples_by_hand_computed_times():
    clip = synthetic_clip(31)
    fast = mocap.augment_clip(clip, np.random.default_rng(0), speed=(2.0, 2.0)).joints3d
    np.testing.assert_allclose(fast, clip.joints3d[::2])  # twice as fast: every other frame, 16 frames
    slow = mocap.augment_clip(clip, np.random.default_rng(0), speed=(0.5, 0.5)).joints3d
    assert len(slow) == 61
    np.testing.assert_allclose(slow[1], (clip.joints3d[0] + clip.joints3d[1]) / 2)
    drawn = [len(mocap.augment_clip(clip, np.random.default_rng(s), speed=(0.8, 1.25)).joints3d) for s in range(20)]
    assert min(drawn) >= 25 and max(drawn) <= 38 and len(set(drawn)) > 3  # 30 / rate + 1 frames


def test_augmentation_is_for_training_windows_only_and_checked_in_configs(tmp_path):
    clips = [synthetic_clip(80, seed=i) for i in range(2)]
    plain = mocap_windows(clips, seed=1, n_frames=9, stride=3, cameras_per_clip=1)
    again = mocap_windows(clips, seed=1, n_frames=9, stride=3, cameras_per_clip=1, bone_scale=0.0)
    np.testing.assert_array_equal(plain.arrays["inputs"], again.arrays["inputs"])
    with pytest.raises(ValueError, match="training windows only"):
        mocap_windows(clips, seed=7, n_frames=9, stride=9, cameras_per_clip=1, test=True, bone_scale=0.1)
    folder = write_mocap_folder(tmp_path / "clips")
    base = ["data_flavour=mocap", f"mocap_root={folder}", "val_subjects=[s3]", "preset=kasportsformer-t"]
    cfg = load_config(None, base + ["augment_speed=[0.8, 1.25]"])
    assert cfg.augment_speed == [0.8, 1.25]
    for bad, says in (("augment_speed=[2, 1]", "0 < low <= high"), ("augment_speed=[a, b]", "list[float]"),
                      ("augment_bone_scale=-0.1", ">= 0")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            load_config(None, base + [bad])


# ------------------------------------------------------------------------------------------------------------ flip

def test_flip_is_an_involution_and_mirrors_projections():
    x = torch.randn(2, 5, 17, 3)
    torch.testing.assert_close(flip_pose(flip_pose(x)), x)
    flipped = flip_pose(x)
    assert torch.equal(flipped[..., 1, 0], -x[..., 4, 0]) and torch.equal(flipped[..., 16, 1:], x[..., 13, 1:])
    # projecting a mirrored world equals mirroring the projection (principal point at the image centre)
    clip = synthetic_clip(3).joints3d
    pose = clip - clip.mean(axis=(0, 1)) + [0, 0, 4000]
    focal = 1000.0
    proj = focal * pose[..., :2] / pose[..., 2:]
    mirrored_world = pose[:, list(skeleton.FLIP_PERMUTATION)] * [-1, 1, 1]
    proj_mirrored = focal * mirrored_world[..., :2] / mirrored_world[..., 2:]
    np.testing.assert_allclose(proj_mirrored, flip_pose(proj), atol=1e-9)


def test_flip_augmentation_keeps_pairs_consistent():
    data = generic_source()
    frames = validate_split(data["train"], "generic", "t", test=False)
    windows = Windows.from_frames(frames, cut_windows(frames.source, 9, 3), test=False)
    plain = WindowBatches(windows, flip=False)[list(range(16))]
    flipped = WindowBatches(windows, flip=True, seed=0)[list(range(16))]
    for i in range(16):
        same = torch.equal(flipped[0][i], plain[0][i])
        mirrored = torch.allclose(flipped[0][i], flip_pose(plain[0][i]))
        assert same or mirrored
        # the target is flipped exactly when the input is
        assert torch.allclose(flipped[1][i], plain[1][i] if same else flip_pose(plain[1][i]))
    assert torch.equal(plain[1][:, :, 0], torch.zeros_like(plain[1][:, :, 0]))  # root-relative targets


# ------------------------------------------------------------------------------------------------- source files

@pytest.mark.parametrize("flavour", ["generic", "sportspose", "worldpose"])
def test_each_flavour_builds_a_memory_mapped_store(tmp_path, flavour):
    path = write_pickle(flavoured_source(flavour), tmp_path / f"{flavour}.pkl")
    stores = build_clip_store(path, flavour, n_frames=9, cache_dir=tmp_path / "cache")
    train, test = stores["train"], stores["test"]
    assert isinstance(train.arrays["inputs"], np.memmap) and train.arrays["inputs"].flags.c_contiguous
    assert train.windows.shape[1] == 9 and len(train) > len(test)
    x = train.window_field("inputs", [0, 1])
    assert x.shape == (2, 9, 17, 3) and np.abs(x[..., 0]).max() <= 1.5
    wh = test.arrays["image_wh"][0]
    expected = {"sportspose": (1312, 1216), "worldpose": (1920, 1080)}.get(flavour)
    if expected:
        assert tuple(wh) == expected
    # a second call reuses the store instead of re-reading the pickle
    path.write_bytes(path.read_bytes())  # same content, new mtime -> rebuilt; then reused
    again = build_clip_store(path, flavour, n_frames=9, cache_dir=tmp_path / "cache")
    assert again["train"].directory.parent == build_clip_store(path, flavour, 9,
                                                               cache_dir=tmp_path / "cache")["train"].directory.parent


def test_windows_never_cross_sequences_and_short_sequences():
    source = np.array(["a"] * 20 + ["b"] * 5 + ["c"] * 9)
    windows = cut_windows(source, 9, 3)
    for row in windows:
        assert len(set(source[row])) == 1
    assert sum(1 for row in windows if source[row[0]] == "b") == 1  # resampled to one window
    assert len(cut_windows(source, 9, 3, short="drop")) == len(windows) - 1
    with pytest.raises(SourceError, match="'source'.*'b' has 5 frames"):
        cut_windows(source, 9, 3, short="error", where="f.pkl [train]")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        read_source_file(tmp_path / "absent.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(generic_source())[:200])  # truncated
    with pytest.raises(SourceError, match="bad.pkl: not a readable source file"):
        build_clip_store(bad, "generic", 9, cache_dir=tmp_path)
    with pytest.raises(SourceError, match="missing split 'test'"):
        build_clip_store(write_pickle({"train": {}}, tmp_path / "x.pkl"), "generic", 9, cache_dir=tmp_path)
    with pytest.raises(mocap.MocapError, match="not found"):
        mocap.load_clip(tmp_path / "none.npz")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(mocap.MocapError, match="c.npz: not a readable npz"):
        mocap.load_clip(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", joints3d=np.zeros((10, 16, 3)))
    with pytest.raises(mocap.MocapError, match=r"d.npz: field 'joints3d' must have shape \(T, 17, 3\)"):
        mocap.load_clip(tmp_path / "d.npz")


@pytest.mark.parametrize("field, change, message", [
    ("joint_2d", "drop", "missing field 'joint_2d'"),
    ("source", "drop", "missing field 'source'"),
    ("image_wh", "drop", "missing field 'image_wh'"),
    ("joint3d_image", "shape", r"field 'joint3d_image' must have shape \(\d+, 17, 3\)"),
    ("confidence", "shape", "field 'confidence' must have shape"),
    ("joint_2d", "nan", "field 'joint_2d' has NaN or infinite values in 1 frame.*frame 7"),
    ("joint_2d", "inf", "field 'joint_2d' has NaN or infinite"),
])
def test_bad_fields_name_file_split_and_field(tmp_path, field, change, message):
    data = generic_source()
    split = data["train"]
    if change == "drop":
        del split[field]
    elif change == "shape":
        split[field] = split[field][:, :16]
    else:
        split[field][7, 3, 0] = np.nan if change == "nan" else np.inf
    path = write_pickle(data, tmp_path / "src.pkl")
    with pytest.raises(SourceError, match=r"src.pkl \[train\]: " + message):
        build_clip_store(path, "generic", 9, cache_dir=tmp_path / "cache")


def test_test_split_needs_evaluation_fields(tmp_path):
    data = generic_source()
    del data["test"]["2.5d_factor"]
    with pytest.raises(SourceError, match=r"\[test\]: missing field '2.5d_factor'"):
        build_clip_store(write_pickle(data, tmp_path / "s.pkl"), "generic", 9, cache_dir=tmp_path)
    data = flavoured_source("sportspose")
    data["train"]["camera_name"][:] = "studio"
    with pytest.raises(SourceError, match="camera_name' has unknown values"):
        build_clip_store(write_pickle(data, tmp_path / "sp.pkl"), "sportspose", 9, cache_dir=tmp_path)


def test_store_reopens_and_reports_a_damaged_folder(tmp_path):
    stores = build_clip_store(write_pickle(generic_source(), tmp_path / "g.pkl"), "generic", 9,
                              cache_dir=tmp_path / "cache")
    folder = stores["test"].directory
    assert len(ClipStore(folder)) == len(stores["test"])
    (folder / "action.npy").unlink()
    with pytest.raises(SourceError, match="lacks action.npy"):
        ClipStore(folder)


# ------------------------------------------------------------------------------------------------------- configs

def test_unknown_config_key_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: kasportsformer-t\ndata_flavour: mocap\nmocap_root: x\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'learning_rat'.*learning_rate"):
        load_config(path)
    path.write_text("preset: kasportsformer-t\ndata_flavour: mocap\nmocap_root: x\nbatch_size: many\n")
    with pytest.raises(ConfigError, match="c.yaml: key 'batch_size' expects int"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    path.write_text("preset: kasportsformer-t\ndata_flavour: mocap\nmocap_root: x\n")
    with pytest.raises(ConfigError, match="command-line override: unknown config key 'epoch'"):
        load_config(path, ["epoch=3"])


def test_reference_style_config_builds_the_model(tmp_path):
    path = tmp_path / "ref.yaml"
    path.write_text(
        "model_name: MotionAGFormer\nn_layers: 2\ndim_feat: 16\ndim_rep: 32\nnum_heads: 2\nqkv_scale: None\n"
        "learning_rate: 0.0005\nweight_decay: 0.01\nlearning_rate_decay: 0.9\nwarmup: true\nwarmup_epoches: 10\n"
        "training_epoch_patience: 20\nlambda_mpjpe_velocity: 20\nlambda_n_mpjpe: 0.5\nflip: true\nbatch_size: 32\n"
        "epochs: 800\nn_frames: 27\ndata_root: data/\ndt_file: sp_hr_conf_cam_source_1camera.pkl\n"
        "data_flavour: sportspose\nnum_cpus: 8\nuse_wandb: false\nwandb_name: run\n")
    cfg = load_config(path, ["learning_rate=0.001"])
    model = cfg.model_dict()
    assert model["use_anatomy"] is False and model["n_layers"] == 2 and model["qkv_scale"] is None
    assert cfg.learning_rate == 0.001 and cfg.source_file.endswith("data/sp_hr_conf_cam_source_1camera.pkl")


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    families = set()
    for path in configs:
        cfg = load_config(path)
        model = cfg.model_dict()
        families.add((cfg.data_flavour, model.get("use_anatomy", model.get("model_name"))))
        assert cfg.output_dir.startswith("runs/")
    assert {("sportspose", True), ("sportspose", False), ("worldpose", True), ("worldpose", False),
            ("mocap", True), ("mocap", False), ("mocap", "mlp")} <= families
