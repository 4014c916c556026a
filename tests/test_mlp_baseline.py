"""The per-frame MLP baseline: the same window contract as KASportsFormer, frame independence, checkpoints, ONNX,
training through kasf-train, and one clear error for transformer keys in an MLP config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kasf
from kasf.model import PRESETS, PerFrameMLP, build, count_parameters, model_config
from kasf.training.config import ConfigError, load_config
from tests.conftest import perturbed_model

SMALL = {"hidden_dim": 64, "n_blocks": 2}


def test_preset_is_martinez_sized_and_keeps_the_window_shape():
    model = build("mlp-baseline").eval()
    assert isinstance(model, PerFrameMLP) and PRESETS["mlp-baseline"]["model_name"] == "mlp"
    assert 4.0e6 < count_parameters(model) < 4.5e6  # two residual blocks of width 1024
    out = model(torch.randn(3, 27, 17, 3))
    assert out.shape == (3, 27, 17, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(batch, 27, 17, 3\)"):
        model(torch.randn(3, 26, 17, 3))


def test_changing_one_frame_changes_only_that_frame():
    model = perturbed_model("mlp-baseline", **SMALL)
    x = torch.randn(2, 27, 17, 3)
    changed = x.clone()
    changed[:, 11] += torch.randn(2, 17, 3)
    with torch.no_grad():
        diff = (model(changed) - model(x)).abs().amax(dim=(0, 2, 3))
    assert diff[11] > 1e-3
    assert torch.all(diff[torch.arange(27) != 11] == 0)


def test_checkpoint_round_trip_keeps_config_and_outputs(tmp_path):
    model = perturbed_model("mlp-baseline", **SMALL)
    path = kasf.save_checkpoint(tmp_path / "mlp.pt", model, preset="mlp-baseline")
    loaded = kasf.load_checkpoint(path)
    assert isinstance(loaded, PerFrameMLP) and loaded.config == model.config
    x = torch.randn(2, 27, 17, 3)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(kasf.checkpoint.CheckpointError, match="hidden_dim"):
        kasf.load_checkpoint(path, "mlp-baseline")  # stored width 64, preset 1024


def test_lifter_runs_the_mlp_checkpoint(tmp_path):
    from kasf.runtime.lifter import Lifter

    path = kasf.save_checkpoint(tmp_path / "mlp.pt", perturbed_model("mlp-baseline", **SMALL))
    lifter = Lifter.load(path, device="cpu")
    windows = np.random.default_rng(0).normal(0, 0.3, size=(4, 27, 17, 3)).astype(np.float32)
    assert lifter.predict(windows).shape == (4, 27, 17, 3) and lifter.n_frames == 27


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")
    from kasf.export.cli import main

    ckpt = kasf.save_checkpoint(tmp_path / "mlp.pt", perturbed_model("mlp-baseline", **SMALL), preset="mlp-baseline")
    assert main([str(ckpt), "-o", str(tmp_path / "mlp.onnx")]) == 0
    report = json.loads((tmp_path / "mlp.onnx.parity.json").read_text())
    assert report["passed"] and report["windows_real"] > 0 and report["max_abs"] < 1e-4


def test_transformer_keys_in_an_mlp_config_are_named():
    with pytest.raises(ValueError) as err:
        model_config({"model_name": "mlp", "num_heads": 4, "dim_feat": 32, "hidden_dim": 256})
    assert "dim_feat, num_heads do not apply to the per-frame MLP" in str(err.value)
    with pytest.raises(ConfigError, match="layer_scale_init_value do not apply"):
        load_config("configs/mocap-kasportsformer-t.yaml", ["preset=mlp-baseline"])
    with pytest.raises(ValueError, match="hidden_dim do not apply to KASportsFormer"):
        model_config({"model_name": "KASportsFormer", "hidden_dim": 256})
    cfg = load_config("configs/mocap-mlp-baseline.yaml", ["hidden_dim=128"])
    assert cfg.model_dict()["hidden_dim"] == 128 and cfg.model_dict()["model_name"] == "mlp"


def test_kasf_train_trains_the_mlp(tmp_path):
    from kasf.training.cli import train_main
    from tests.training_fakes import write_mocap_folder

    folder = write_mocap_folder(tmp_path / "clips", frames=80)
    out = tmp_path / "run"
    assert train_main(["preset=mlp-baseline", "hidden_dim=64", "n_frames=9", "data_flavour=mocap",
                       f"mocap_root={folder}", "val_subjects=s3", "epochs=2", "batch_size=8", "precision=fp32",
                       "progress=false", "use_tensorboard=false", f"output_dir={out}", "threads=1"]) == 0
    model = kasf.load_checkpoint(out / "best.pt")
    assert isinstance(model, PerFrameMLP) and model.n_frames == 9
