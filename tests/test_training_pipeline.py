"""The training data path: a camera pool renders each camera set once; a starved step is reported with its wait."""

from __future__ import annotations

import csv

from kasf.training.config import load_config
from kasf.training.engine import Dist, TrainingData, train
from tests.training_fakes import write_mocap_folder

TINY = ["preset=kasportsformer-t", "n_layers=1", "dim_feat=16", "dim_rep=32", "num_heads=2", "n_frames=9",
        "batch_size=8", "precision=fp32", "progress=false", "use_tensorboard=false", "threads=1",
        "data_flavour=mocap", "val_subjects=s3"]


def test_camera_pool_reuses_renders_and_default_draws_new_ones(tmp_path):
    folder = write_mocap_folder(tmp_path / "clips", frames=80)
    pooled = TrainingData(load_config(None, TINY + [f"mocap_root={folder}", "camera_pool=2"]), Dist())
    assert pooled.epoch_windows(0) is pooled.epoch_windows(2)
    first, second = pooled.epoch_windows(0), pooled.epoch_windows(1)
    assert (first.window_field("inputs", [0]) != second.window_field("inputs", [0])).any()
    fresh = TrainingData(load_config(None, TINY + [f"mocap_root={folder}"]), Dist())
    assert (fresh.epoch_windows(0).window_field("inputs", [0])
            != fresh.epoch_windows(2).window_field("inputs", [0])).any()


def test_log_has_samples_per_second_and_a_starved_loop_is_reported(tmp_path, capsys):
    folder = write_mocap_folder(tmp_path / "clips", frames=80)
    out = tmp_path / "run"
    # Any wait at all counts as starved at threshold 0: the warning names the measured seconds.
    train(load_config(None, TINY + [f"mocap_root={folder}", "epochs=1", f"output_dir={out}",
                                    "data_wait_warning=0"]))
    printed = capsys.readouterr().out
    assert "warning: data workers starved: the model waited" in printed and " s for batches" in printed
    with open(out / "log.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["train_samples_per_s"]) > 0 and float(row["data_wait_s"]) >= 0
