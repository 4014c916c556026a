"""The first hour of a new user (issue 12): one line and the same exit code for every fixable error, nothing
lost on Ctrl-C, files others can read, third-party noise hidden."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kasf.runtime.lifter import Lifter
from kasf.runtime.sources import KeypointSource, SourceError
from kasf.runtime.stream import Pipeline, run
from tests.test_stream_units import index_lifter, index_source

REPO = Path(__file__).resolve().parents[1]


def _ctrl_c_during_lift(lifter: Lifter, at_call: int) -> Lifter:
    """The lifter, with a real SIGINT delivered to this process in the middle of its ``at_call``-th predict."""
    calls = [0]
    inner = lifter.predict

    def predict(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signal.SIGINT)
        return inner(x)

    lifter.predict = predict  # type: ignore[method-assign]
    return lifter


@pytest.mark.parametrize("mode, at_call", [("causal", 20), ("centre", 10), ("chunk", 4)])
def test_ctrl_c_inside_a_lift_loses_no_pose(mode, at_call):
    frames = 40
    pipeline = Pipeline(_ctrl_c_during_lift(index_lifter(), at_call), (1000, 800), mode=mode, stride=5)
    result = run(index_source(frames), pipeline, keep_poses=True)
    assert result.interrupted
    read = result.stats.frames_in
    assert read < frames  # it stopped early ...
    assert sorted(p.frame for p in result.poses) == list(range(read))  # ... and every frame read came out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_keypoint_file_that_is_not_an_npz(tmp_path):
    text = tmp_path / "x.npz"
    text.write_text("frame,x,y\n0,1,2\n")
    with pytest.raises(SourceError) as err:
        KeypointSource.from_file(text)
    assert "not an .npz file" in str(err.value) and "pickle" not in str(err.value)


def test_keypoint_shape_error_names_the_shape_given():
    with pytest.raises(SourceError, match=r"got \(50, 17, 3\)"):
        KeypointSource(np.zeros((50, 17, 3)), np.zeros((50, 17)), (640, 480), 30)
    with pytest.raises(SourceError, match=r"'scores' must be \(50, 17\).*got \(50, 16\)"):
        KeypointSource(np.zeros((50, 17, 2)), np.zeros((50, 16)), (640, 480), 30)


# --- config values checked against their type --------------------------------------------------------------------

TINY_MODEL = dict(model_name="KASportsFormer", n_layers=1, dim_feat=16, dim_rep=32, num_heads=2, n_frames=9)


@pytest.fixture(scope="module")
def reference_layout_tiny(tmp_path_factory) -> Path:
    """A tiny model saved as the reference implementation saves (DataParallel 'module.' keys, no architecture)."""
    import torch

    from kasf.model.presets import build

    model = build(TINY_MODEL)
    path = tmp_path_factory.mktemp("ref") / "tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_reference_yaml_with_pyyaml_string_numbers_loads(reference_layout_tiny, tmp_path):
    from kasf.checkpoint import load_checkpoint

    config = tmp_path / "ref.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in TINY_MODEL.items()) + "layer_scale_init_value: 1e-05\n"
                      "learning_rate: 5e-4\nmlp_ratio: '4'\n")
    model = load_checkpoint(reference_layout_tiny, str(config))
    assert model.config["layer_scale_init_value"] == 1e-05 and model.config["mlp_ratio"] == 4


def test_wrong_model_value_type_is_one_line_in_export(reference_layout_tiny, tmp_path, capsys):
    from kasf.export.cli import main

    config = tmp_path / "ref.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in TINY_MODEL.items() if k != "num_heads") + "num_heads: eight\n")
    assert main([str(reference_layout_tiny), "--config", str(config), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("kasf-export: error: ") and "ref.yaml" in err
    assert "'num_heads' expects int, got 'eight'" in err


@pytest.mark.parametrize("override, message", [
    ("batch_size=abc", "'batch_size' expects int, got 'abc'"),
    ("flip=7", "'flip' expects bool, got 7"),
    ("learning_rate=fast", "'learning_rate' expects float, got 'fast'"),
    ("dim_feat=1.5", "'dim_feat' expects int, got 1.5"),
    ("use_anatomy=maybe", "'use_anatomy' expects bool, got 'maybe'"),
    ("lambda_last_frame=-1", "'lambda_last_frame' must be >= 0, got -1"),
    ("lambda_p_mpjpe=-0.5", "'lambda_p_mpjpe' must be >= 0, got -0.5"),
])
def test_every_training_and_model_key_is_type_checked(override, message):
    from kasf.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, ["source_file=x.pkl", override])


def test_numeric_strings_are_numbers_in_training_configs(tmp_path):
    from kasf.training.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text("preset: kasportsformer-t\nsource_file: x.pkl\nlearning_rate: 5e-4\nweight_decay: 1e-2\n"
                      "layer_scale_init_value: 1e-05\nbatch_size: '8'\n")
    cfg = load_config(config)
    assert (cfg.learning_rate, cfg.weight_decay, cfg.batch_size) == (5e-4, 1e-2, 8)
    assert cfg.model_dict()["layer_scale_init_value"] == 1e-05


# --- training faults ---------------------------------------------------------------------------------------------

from tests.test_training_run import TINY, _rows, source  # noqa: E402,F401  (source: the shared fixture)


def _train_args(source, tmp_path, *extra):
    return TINY + [f"source_file={source}", "data_flavour=generic", f"cache_dir={tmp_path / 'cache'}",
                   f"output_dir={tmp_path / 'run'}", "seed=1", *extra]


def test_ctrl_c_in_training_saves_the_step_and_resumes_mid_epoch(source, tmp_path, monkeypatch, capsys):
    import torch

    from kasf.training import engine
    from kasf.training.cli import train_main

    calls = []
    real_loss, real_loader = engine.total_loss, engine.TrainingData.loader

    def loader(self, epoch, *a, **k):
        calls.append(f"epoch {epoch}")
        return real_loader(self, epoch, *a, **k)

    def loss_then_ctrl_c(*args, **kwargs):
        calls.append("step")
        if calls[-3:] == ["epoch 1", "step", "step"]:  # the second step of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(engine, "total_loss", loss_then_ctrl_c)
    monkeypatch.setattr(engine.TrainingData, "loader", loader)
    args = _train_args(source, tmp_path, "epochs=3", "batch_size=48")
    assert train_main(args) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "saved" in err and "latest.pt" in err
    state = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)["training_state"]
    steps_per_epoch = state["global_step"] - state["batches_done"]
    assert state["epoch"] == 1 and state["batches_done"] == 2 < steps_per_epoch

    monkeypatch.setattr(engine, "total_loss", real_loss)
    assert train_main(args) == 0
    assert "continuing in epoch 2 after batch" in capsys.readouterr().out
    rows = _rows(tmp_path / "run" / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [int(r["step"]) for r in rows] == [steps_per_epoch * e for e in (1, 2, 3)]  # no batch lost or redone
    assert all(r["loss_total"] for r in rows)


def test_truncated_latest_is_one_line_that_says_what_to_do(source, tmp_path, capsys):
    from kasf.training.cli import train_main

    args = _train_args(source, tmp_path, "epochs=1")
    assert train_main(args) == 0
    latest = tmp_path / "run" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    assert train_main(args[:-1] + ["epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kasf-train: error: ") and err.count("\n") == 0 and "Traceback" not in err
    assert str(latest) in err and "resume=false" in err


def test_rerunning_a_finished_run_appends_nothing(source, tmp_path, capsys):
    from kasf.training.cli import train_main

    args = _train_args(source, tmp_path, "epochs=2")
    assert train_main(args) == 0
    before = (tmp_path / "run" / "log.csv").read_text()
    capsys.readouterr()
    assert train_main(args) == 0
    assert "finished" in capsys.readouterr().out
    assert (tmp_path / "run" / "log.csv").read_text() == before
    assert train_main(args[:-1] + ["epochs=3"]) == 0
    assert "continuing with epoch 3" in capsys.readouterr().out  # counted from 1, as log.csv and the bar count
    rows = _rows(tmp_path / "run" / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and all(r["loss_total"] for r in rows)


def test_log_rows_keep_the_file_columns(tmp_path):
    from kasf.training.config import TrainConfig
    from kasf.training.engine import Logs

    logs = Logs(TrainConfig(use_tensorboard=False), tmp_path, True)
    logs.write({"epoch": 1, "loss_total": 0.5, "val_mpjpe": 90.0})
    Logs(TrainConfig(use_tensorboard=False), tmp_path, True).write({"epoch": 2, "val_mpjpe": 80.0})
    rows = _rows(tmp_path / "log.csv")
    assert rows[1] == {"epoch": "2", "loss_total": "", "val_mpjpe": "80.0"}


def test_resume_restores_numpy_random_state(source, tmp_path, monkeypatch):
    import torch

    from kasf.training import engine
    from kasf.training.cli import train_main

    args = _train_args(source, tmp_path, "epochs=1")
    assert train_main(args) == 0
    latest = tmp_path / "run" / "latest.pt"
    raw = torch.load(latest, weights_only=False)
    name, keys, pos, has_gauss, gauss = np.random.RandomState(12345).get_state()
    raw["training_state"]["numpy_rng"] = {"name": name, "keys": keys.tolist(), "pos": int(pos),
                                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    torch.save(raw, latest)
    seen = []
    real_loader = engine.TrainingData.loader

    def spy(self, epoch, *a, **k):
        if epoch == 1:
            seen.append(np.random.get_state()[1].copy())
        return real_loader(self, epoch, *a, **k)

    monkeypatch.setattr(engine.TrainingData, "loader", spy)
    assert train_main(args[:-1] + ["epochs=2"]) == 0
    assert np.array_equal(seen[0], keys)


# --- kasf-info --presets is instant, and its stored numbers are what the models count -----------------------------

def test_presets_table_is_instant():
    import time

    from kasf.info import main

    start = time.perf_counter()
    assert main(["--presets"]) == 0
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", ["kasportsformer", "kasportsformer-b", "kasportsformer-s", "kasportsformer-xs",
                                  "kasportsformer-t", "motionagformer", "motionagformer-b", "motionagformer-s",
                                  "motionagformer-xs", "motionagformer-t"])
def test_stored_preset_costs_are_counted(name):
    from kasf.model.presets import PRESET_COSTS, PRESETS, build, count_parameters, gflops_per_window

    assert set(PRESET_COSTS) == set(PRESETS)
    model = build(name)
    parameters, gflops = PRESET_COSTS[name]
    assert count_parameters(model) == parameters
    assert gflops_per_window(model) == pytest.approx(gflops, abs=1e-4)


def test_eval_shows_progress_and_prefixes_errors(source, tmp_path, capsys):
    from kasf.training.cli import eval_main

    assert eval_main(["--checkpoint", "demo", "--source", str(source), "--batch-size", "4",
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "evaluating" in capsys.readouterr().err
    assert eval_main(["--checkpoint", str(tmp_path / "none.pt"), "--source", str(source)]) == 2
    assert capsys.readouterr().err.startswith("kasf-eval: error: ")


# --- files others can read ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask):
    from kasf.checkpoint import save_checkpoint
    from kasf.export.onnx_export import export_onnx
    from kasf.model.presets import build
    from kasf.training.cli import write_source_pickle

    model = build(TINY_MODEL)
    old = os.umask(umask)
    try:
        written = [save_checkpoint(tmp_path / "best.pt", model),
                   write_source_pickle({"train": {}}, tmp_path / "source.pkl"),
                   export_onnx(model, tmp_path / "m.onnx", {"config": "{}"})]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# --- one line for a path that cannot be written -------------------------------------------------------------------

@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    from kasf.export.cli import main

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["demo", "-o", str(folder / "demo.onnx")]) == 2
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "permission denied" in err and str(folder / "demo.onnx") in err


def test_read_only_output_names_the_target_not_a_temporary(tmp_path, monkeypatch):
    import tempfile

    from kasf.atomic import atomic_path
    from kasf.cli_errors import error_line

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".x.onnx.abc.tmp.onnx"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as err:
        with atomic_path(tmp_path / "x.onnx"):
            pass
    assert error_line(err.value) == (f"{tmp_path / 'x.onnx'}: permission denied; choose a place you may write to "
                                     "(or read from), or fix its permissions")


def test_export_under_a_file_is_one_line(tmp_path, capsys):
    from kasf.export.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "afile" / "sub" / "demo.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kasf-export: error: ") and err.count("\n") == 0 and "choose another output path" in err


def test_training_output_under_a_file_is_one_line(source, tmp_path, capsys):
    from kasf.training.cli import train_main

    (tmp_path / "afile").write_text("x")
    args = TINY + [f"source_file={source}", f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'afile'}",
                   "epochs=1"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kasf-train: error: ") and err.count("\n") == 0 and "afile" in err


# --- kasf-stream: the flag its own message names, and no third-party noise -----------------------------------------

def _stream(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "kasf.runtime.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_allow_cpu_fallback_is_a_kasf_stream_flag(tmp_path, capsys):
    import torch

    from kasf.runtime.cli import main

    if torch.cuda.is_available():
        pytest.skip("this checks the machine without a GPU")
    assert main(["--device", "cuda", "--max-frames", "3"]) == 2
    err = capsys.readouterr().err
    assert "--allow-cpu-fallback" in err
    assert main(["--device", "cuda", "--allow-cpu-fallback", "--max-frames", "30", "--stats",
                 str(tmp_path / "s.json")]) == 0
    assert '"device": "cpu"' in (tmp_path / "s.json").read_text()


def test_missing_camera_is_one_line_without_opencv_noise():
    pytest.importorskip("cv2")
    done = _stream("--camera", "7", "--max-frames", "1")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kasf-stream: error: cannot open camera 7"), done.stderr


def test_third_party_noise_is_hidden_unless_verbose(caplog):
    import logging
    import warnings

    from torch.jit import TracerWarning

    from kasf.quiet import quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party(verbose=True)
        warnings.warn("Converting a tensor to a Python boolean", TracerWarning)
        assert len(seen) == 1
        quiet_third_party(verbose=False)
        warnings.warn("Converting a tensor to a Python boolean", TracerWarning)
        assert len(seen) == 1
    with caplog.at_level(logging.WARNING):
        logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
        logging.warning("a warning kasf users need")
    assert [r.getMessage() for r in caplog.records] == ["a warning kasf users need"]


# --- docs: the conventions page is the project's own, and matches the code -----------------------------------------

def test_every_cited_doc_is_in_the_repository():
    import re

    cited = set()
    for path in list((REPO / "kasf").rglob("*.py")) + list((REPO / "docs").glob("*.md")) + [REPO / "README.md"]:
        text = path.read_text(encoding="utf-8")
        assert "shared/docs" not in text, f"{path} cites a page users do not have"
        cited |= {(path, m) for m in re.findall(r"docs/[\w.-]+\.md", text)}
    for path, doc in cited:
        assert (REPO / doc).exists(), f"{path} cites {doc}, which is not in the repository"


def test_conventions_page_matches_the_code():
    from kasf import skeleton
    from kasf.conventions import NORMALIZATION_NAME

    text = (REPO / "docs" / "conventions.md").read_text()
    for index, name in enumerate(skeleton.JOINT_NAMES):
        assert f"| {index} | {name}" in text
    assert ", ".join(map(str, skeleton.PARENTS)) in text.replace("\n", " ")
    assert NORMALIZATION_NAME in text and skeleton.SKELETON_NAME in text
    flip = f"swaps joints {', '.join(map(str, skeleton.FLIP_RIGHT))} with {', '.join(map(str, skeleton.FLIP_LEFT))}"
    assert flip in text.replace("\n", " ")


def test_train_help_lists_the_config_keys(capsys):
    from kasf.training.cli import train_main

    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    assert "learning_rate" in out and "layer_scale_init_value" in out and "docs/training.md" in out


def test_readme_has_a_short_kasf_bench_example_and_explains_its_delta():
    text = (REPO / "README.md").read_text()
    assert "kasf-bench --presets kasportsformer-t" in text
    assert "*Δ vs fp32 mm* is" in text and "MPJPE change" in text
    assert "as a `--keypoints` file" in text


# --- the --save video's 3D panel ----------------------------------------------------------------------------------

def test_render_fps_does_not_start_at_one():
    from kasf.runtime.outputs import rendering_fps

    assert rendering_fps([]) is None and rendering_fps([5.0]) is None
    assert rendering_fps([0.0, 0.1, 0.2, 0.3]) == pytest.approx(10.0)


def test_3d_panel_has_axes_ground_and_track_id():
    cv2 = pytest.importorskip("cv2")
    from kasf.data.sample import load_sample
    from kasf.runtime.outputs import draw_3d

    pose = load_sample().joints3d_mm[0]
    bare = np.full((300, 300, 3), 30, np.uint8)
    draw_3d(cv2, bare, [])
    corner = bare[220:300, 0:100]
    assert (corner != 30).any()  # the axes marker is there even with nobody in view
    with_track, without = np.full((300, 600, 3), 30, np.uint8), np.full((300, 600, 3), 30, np.uint8)
    draw_3d(cv2, with_track, [pose, pose], tracks=[3, 7])
    draw_3d(cv2, without, [pose, pose])
    assert (with_track != without).any()  # the track labels
    b, g, r = (with_track[..., c].astype(int) for c in range(3))
    grey = (b == g) & (g == r) & (b > 45) & (b <= 80)
    assert grey.sum() > 100  # the ground grid's lines (anti-aliased grey)
