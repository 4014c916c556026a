"""End to end on tiny generated data: kasf-prepare, kasf-train (loss goes down, resume), kasf-eval, 'demo'."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from kasf.checkpoint import BUNDLED, load_checkpoint, read_checkpoint, resolve_checkpoint_path
from kasf.training.cli import eval_main, prepare_main, train_main
from kasf.training.evaluate import REPORT_KEYS
from tests.training_fakes import write_mocap_folder

TINY = ["preset=kasportsformer-t", "n_layers=1", "dim_feat=16", "dim_rep=32", "num_heads=2", "n_frames=9",
        "layer_scale_init_value=0.1", "batch_size=16", "learning_rate=0.003", "schedule=cosine", "warmup_steps=2",
        "precision=fp32", "progress=false", "use_tensorboard=false", "threads=1"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = write_mocap_folder(tmp_path_factory.mktemp("clips"), frames=80)
    out = tmp_path_factory.mktemp("src") / "mocap.pkl"
    assert prepare_main(["mocap", str(folder), "--out", str(out), "--val-subjects", "s3", "--train-cameras", "3",
                         "--test-cameras", "1"]) == 0
    return out


def test_training_lowers_the_loss_and_eval_reports(source, tmp_path, capsys):
    out = tmp_path / "run"
    args = [f"source_file={source}", "data_flavour=generic", f"cache_dir={tmp_path / 'cache'}",
            f"output_dir={out}", "epochs=5", "seed=1"]
    assert train_main(TINY + args) == 0
    rows = _rows(out / "log.csv")
    assert len(rows) == 5
    assert float(rows[-1]["loss_total"]) < 0.7 * float(rows[0]["loss_total"])
    assert float(rows[-1]["val_mpjpe"]) < float(rows[0]["val_mpjpe"])
    info = read_checkpoint(out / "best.pt")
    assert info.layout == "kasf" and info.config["dim_feat"] == 16
    assert info.metadata["command"].startswith("kasf-train ") and "epochs=5" in info.metadata["command"]
    assert info.metadata["train_config"]["learning_rate"] == 0.003
    report_path = tmp_path / "report.json"
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(out / "best.pt"), "--source", str(source), "--report", str(report_path),
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert set(REPORT_KEYS) <= set(report) and set(report["per_action"]) == {"walk", "jump"}
    assert len(report["per_joint"]) == 17 and report["flip"] is True
    assert abs(report["mpjpe"] - info.metadata["best_val_mpjpe"]) < 1e-3  # same protocol in training and eval
    assert "MPJPE" in printed and "jump" in printed
    assert eval_main(["--checkpoint", str(out / "best.pt"), "--source", str(source), "--no-flip",
                      "--cache-dir", str(tmp_path / "cache")]) == 0


def test_mocap_training_resumes_where_it_stopped(tmp_path, capsys):
    folder = write_mocap_folder(tmp_path / "clips", frames=60)
    out = tmp_path / "run"
    args = TINY + ["data_flavour=mocap", f"mocap_root={folder}", "val_subjects=s3", "cameras_per_clip=1",
                   "val_cameras_per_clip=1", f"output_dir={out}"]
    assert train_main(args + ["epochs=2"]) == 0
    first = read_checkpoint(out / "latest.pt")
    assert first.metadata["epoch"] == 2
    capsys.readouterr()
    assert train_main(args + ["epochs=3"]) == 0  # as if the run had been killed after epoch 2
    assert "resumed from" in capsys.readouterr().out
    rows = _rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert int(rows[2]["step"]) > int(rows[1]["step"])
    raw = torch.load(out / "latest.pt", weights_only=False)
    assert raw["training_state"]["epoch"] == 2 and raw["metadata"]["epoch"] == 3
    model = load_checkpoint(out / "latest.pt")
    assert model.n_frames == 9


def test_bad_config_is_one_line_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("preset: kasportsformer-t\nsource_file: x.pkl\nbatchsize: 3\n")
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: unknown config key 'batchsize'" in err and "Traceback" not in err
    assert train_main(["--config", str(config), "batch_size=3"]) == 2
    assert eval_main(["--checkpoint", str(tmp_path / "none.pt"), "--source", "x.pkl"]) == 2
    assert "not found" in capsys.readouterr().err


def test_demo_name_resolves_to_the_bundled_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint_path("demo") == BUNDLED["demo"]
    (tmp_path / "demo").write_bytes(b"")  # a real file of that name wins
    assert resolve_checkpoint_path("demo").resolve() == (tmp_path / "demo").resolve()
    assert resolve_checkpoint_path("runs/x.pt").as_posix() == "runs/x.pt"
    if not BUNDLED["demo"].exists():
        pytest.skip("the demo checkpoint is not in this checkout")
    (tmp_path / "demo").unlink()
    info = read_checkpoint("demo")
    assert info.layout == "kasf" and "kasf-train" in info.metadata["command"]
    assert BUNDLED["demo"].stat().st_size <= 10 * 1024 * 1024
    model = load_checkpoint("demo")
    with torch.no_grad():
        assert model(torch.zeros(1, model.n_frames, 17, 3)).shape == (1, model.n_frames, 17, 3)


def test_ddp_with_torchrun_on_cpu(tmp_path):
    """Two Gloo processes: DDP wrapping, sharded batches, rank 0 writes the files."""
    import subprocess
    import sys
    from pathlib import Path

    folder = write_mocap_folder(tmp_path / "clips", frames=60)
    script = tmp_path / "run.py"
    script.write_text("import sys\nfrom kasf.training.cli import train_main\nsys.exit(train_main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
         str(script), *TINY, "epochs=2", "data_flavour=mocap", f"mocap_root={folder}", "val_subjects=s3",
         "cameras_per_clip=1", "val_cameras_per_clip=1", "batch_size=8", f"output_dir={out}"],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(out / "log.csv")
    assert len(rows) == 2  # one writer
    assert read_checkpoint(out / "best.pt").metadata["world_size"] == 2


def test_ddp_time_budget_ends_every_rank_at_the_same_step(tmp_path):
    """Rank 1's wall clock runs 4x fast. Each rank reading its own clock, rank 1 would leave the loop first and
    rank 0 would wait for it in the gradient all-reduce (a hang, or a crash once rank 1 exits: both seen); the
    ranks agree on the clock, so both stop at the same step and the run ends."""
    import subprocess
    import sys
    from pathlib import Path

    folder = write_mocap_folder(tmp_path / "clips", frames=60)
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys, time, types\n"
        "import kasf.training.engine as engine\n"
        "from kasf.training.cli import train_main\n"
        "if os.environ['RANK'] == '1':\n"
        "    start = time.time()\n"
        "    fast = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith('_')})\n"
        "    fast.time = lambda: start + 4 * (time.time() - start)\n"
        "    engine.time = fast\n"
        "sys.exit(train_main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
         str(script), *TINY, "epochs=100", "time_budget_min=0.1", "data_flavour=mocap", f"mocap_root={folder}",
         "val_subjects=s3", "cameras_per_clip=1", "val_cameras_per_clip=1", "batch_size=4", f"output_dir={out}"],
        capture_output=True, text=True, timeout=150, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time budget of 0.1 min reached" in proc.stdout


def test_learning_rate_schedules():
    from kasf.training.config import TrainConfig
    from kasf.training.engine import LearningRate

    cosine = LearningRate(TrainConfig(schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-5, warmup_steps=10,
                                      epochs=10, mocap_root="x"), steps_per_epoch=100)
    assert cosine.at(0, 0) == pytest.approx(1e-4) and cosine.at(9, 0) == pytest.approx(1e-3)
    assert cosine.at(505, 5) == pytest.approx(0.5 * (1e-3 + 1e-5), rel=1e-6)
    assert cosine.at(999, 9) == pytest.approx(1e-5, rel=1e-3)
    timed = LearningRate(TrainConfig(schedule="cosine", learning_rate=1e-3, min_learning_rate=0.0, warmup_steps=1,
                                     time_budget_min=10, epochs=1000), steps_per_epoch=100)
    assert timed.at(50, 0, elapsed_s=300) == pytest.approx(0.5e-3)  # half the budget, whatever the step
    assert timed.at(50, 0, elapsed_s=600) == pytest.approx(0.0)
    plateau = LearningRate(TrainConfig(learning_rate=1e-3, warmup_epoches=2), steps_per_epoch=10)
    assert plateau.at(0, 0) == pytest.approx(1e-5) and plateau.at(30, 3) == pytest.approx(1e-3)
    for epoch, val in enumerate([9, 9, 5, 6, 6, 6]):  # three epochs without improvement after the best (5)
        plateau.end_of_epoch(epoch, val)
    assert plateau.at(70, 7) == pytest.approx(0.9e-3)


def test_cpu_clock_budget_with_augmentation_and_input_norm(tmp_path, monkeypatch, capsys):
    """time_budget_clock=cpu stops on this process's CPU seconds (a fake clock here: 20 s a reading), not on
    wall time; the 3D augmentation and input_norm run through the real loop."""
    import itertools

    from kasf.training import engine

    ticks = itertools.count()
    monkeypatch.setattr(engine.time, "process_time", lambda: 20.0 * next(ticks))
    folder = write_mocap_folder(tmp_path / "clips", frames=60)
    out = tmp_path / "run"
    args = TINY + ["data_flavour=mocap", f"mocap_root={folder}", "val_subjects=s3", "cameras_per_clip=2",
                   "val_cameras_per_clip=1", f"output_dir={out}", "epochs=50", "time_budget_min=1",
                   "time_budget_clock=cpu", "augment_bone_scale=0.05", "augment_speed=[0.8, 1.25]",
                   "input_norm=window"]
    assert train_main(args) == 0
    rows = _rows(out / "log.csv")
    assert "time budget of 1 min reached" in capsys.readouterr().out
    assert len(rows) == 1 and 1 <= int(rows[-1]["step"]) <= 4  # 60 fake CPU seconds: 3 readings of the loop
    assert read_checkpoint(out / "best.pt").config["input_norm"] == "window"


def test_weight_average_is_what_is_validated_saved_and_resumed(source, tmp_path, capsys):
    """ema_decay: best.pt holds the averaged weights (kasf-eval on it gives the logged validation MPJPE), not the
    live ones in latest.pt; a resume carries the average on, and a run without one is not resumed with one."""
    out = tmp_path / "run"
    args = TINY + [f"source_file={source}", "data_flavour=generic", f"cache_dir={tmp_path / 'cache'}",
                   f"output_dir={out}", "seed=1", "ema_decay=0.9"]
    assert train_main(args + ["epochs=2"]) == 0
    best = torch.load(out / "best.pt", weights_only=False)
    latest = torch.load(out / "latest.pt", weights_only=False)
    ema_state = latest["training_state"]["ema"]
    assert ema_state["n_averaged"].item() == int(_rows(out / "log.csv")[-1]["step"])
    name = "joints_embed.weight"
    assert not torch.equal(best["state_dict"][name], latest["state_dict"][name])
    if best["metadata"]["epoch"] == 2:
        assert torch.equal(best["state_dict"][name], ema_state[f"module.{name}"])
    report_path = tmp_path / "report.json"
    assert eval_main(["--checkpoint", str(out / "best.pt"), "--source", str(source), "--report", str(report_path),
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    assert abs(json.loads(report_path.read_text())["mpjpe"] - best["metadata"]["best_val_mpjpe"]) < 1e-3
    capsys.readouterr()
    assert train_main(args + ["epochs=3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = torch.load(out / "latest.pt", weights_only=False)["training_state"]["ema"]
    assert resumed["n_averaged"].item() == int(_rows(out / "log.csv")[-1]["step"])

    plain = tmp_path / "plain"
    no_ema = [a for a in args if not a.startswith(("ema_decay", "output_dir"))] + [f"output_dir={plain}"]
    assert train_main(no_ema + ["epochs=1"]) == 0
    capsys.readouterr()
    assert train_main(no_ema + ["epochs=2", "ema_decay=0.9"]) == 2
    assert "trained without ema_decay" in capsys.readouterr().err
    assert train_main(no_ema + ["ema_decay=1.0"]) == 2
    assert "'ema_decay' must be in [0, 1)" in capsys.readouterr().err


def test_weight_average_averages_floats_by_hand_and_copies_index_tables():
    from kasf.training.engine import make_ema

    model = torch.nn.BatchNorm1d(2)
    model.register_buffer("index", torch.tensor([3, 5]))
    ema = make_ema(model, 0.75)
    assert make_ema(model, 0.0) is None
    with torch.no_grad():
        model.weight.fill_(2.0)  # first update: a copy
        model.running_mean.fill_(4.0)
        ema.update(model)
        model.weight.fill_(6.0)
        model.running_mean.fill_(8.0)
        model.index.fill_(7)
        ema.update(model)
    d = 2 / 11  # the warm-up: min(0.75, (1 + n) / (10 + n)) after n = 1 update
    assert torch.allclose(ema.module.weight, torch.full((2,), d * 2 + (1 - d) * 6))
    assert torch.allclose(ema.module.running_mean, torch.full((2,), d * 4 + (1 - d) * 8))
    assert ema.decay_at(100) == 0.75
    assert ema.module.index.tolist() == [7, 7] and ema.module.index.dtype == torch.int64
