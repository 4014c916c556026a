"""Both checkpoint layouts, the round trip, and every kind of bad checkpoint giving one clear error."""

from __future__ import annotations

import pytest
import torch

import kasf
from kasf.checkpoint import CheckpointError, read_checkpoint
from kasf.info import main as info_main
from kasf.model import build


def test_reference_layout_loads_with_config_and_matches_outputs(reference_small_file, official_small):
    model = kasf.load_checkpoint(reference_small_file, official_small["config"])
    assert not model.training
    with torch.no_grad():
        assert (model(official_small["inputs"]) - official_small["outputs"]).abs().max() < 1e-5


def test_reference_layout_from_yaml_config(reference_small_file, official_small, tmp_path):
    import yaml

    cfg = tmp_path / "ref.yaml"
    cfg.write_text(yaml.safe_dump({"model_name": "KASportsFormer", "epochs": 800, **official_small["config"]}))
    model = kasf.load_checkpoint(reference_small_file, cfg)
    assert model.config["n_layers"] == 2 and model.config["dim_feat"] == 32


def test_reference_layout_without_architecture_says_what_to_pass(reference_small_file):
    with pytest.raises(CheckpointError, match="pass a preset"):
        kasf.load_checkpoint(reference_small_file)


def test_round_trip_keeps_config_outputs_and_metadata(reference_small_file, official_small, tmp_path):
    model = kasf.load_checkpoint(reference_small_file, official_small["config"])
    path = kasf.save_checkpoint(tmp_path / "own.pt", model, metadata={"epoch": 3, "val_mpjpe_mm": 61.5})
    info = read_checkpoint(path)
    assert info.layout == "kasf" and info.format_version == 1
    assert info.conventions["normalization"] == "screen-width-v1" and info.conventions["n_frames"] == 27
    assert info.metadata == {"epoch": 3, "val_mpjpe_mm": 61.5}
    assert not any(k.startswith("module.") for k in info.state_dict)
    reloaded = kasf.load_checkpoint(path)  # no preset needed: the config travels with the weights
    with torch.no_grad():
        assert torch.equal(reloaded(official_small["inputs"]), model(official_small["inputs"]))


def test_round_trip_of_a_preset_records_the_preset(tmp_path):
    path = kasf.save_checkpoint(tmp_path / "t.pt", build("kasportsformer-t"), preset="kasportsformer-t")
    assert read_checkpoint(path).preset == "kasportsformer-t"
    with pytest.raises(CheckpointError, match="n_layers: stored 4, requested 26"):
        kasf.load_checkpoint(path, "kasportsformer")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nowhere.pt"):
        kasf.load_checkpoint("nowhere.pt", "kasportsformer-t")


def test_truncated_file(tmp_path):
    good = kasf.save_checkpoint(tmp_path / "good.pt", build("kasportsformer-t"))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        kasf.load_checkpoint(cut)


def test_state_dict_of_another_architecture_lists_all_problems(reference_small_file):
    with pytest.raises(CheckpointError) as err:
        kasf.load_checkpoint(reference_small_file, "kasportsformer-t")
    text = str(err.value)
    assert "missing keys (212)" in text and "shape mismatches (3)" in text and "head.weight" in text


def test_arbitrary_pickles_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"model": build("kasportsformer-t").state_dict(), "args": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        kasf.load_checkpoint(path, "kasportsformer-t")
    assert kasf.load_checkpoint(path, "kasportsformer-t", allow_pickle=True).config["n_layers"] == 4


def test_no_half_file_when_saving_fails(tmp_path, monkeypatch):
    def broken_save(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        kasf.save_checkpoint(tmp_path / "x.pt", build("kasportsformer-t"))
    assert list(tmp_path.iterdir()) == []


def test_kasf_info_reports_reference_file(reference_small_file, capsys):
    assert info_main([str(reference_small_file), "--preset", "kasportsformer-t"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert info_main([str(reference_small_file)]) == 0
    out = capsys.readouterr().out
    assert "layout: reference" in out and "min_mpjpe: 58.0" in out


def test_kasf_info_reports_own_file(tmp_path, capsys):
    path = kasf.save_checkpoint(tmp_path / "t.pt", build("kasportsformer-t"), preset="kasportsformer-t")
    assert info_main([str(path), "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "kasf" and report["parameters"] == 302_066
    assert 0.2 < report["gflops_per_window"] < 0.4


class _Opaque:
    pass
