"""kasf-export and Lifter: artefacts match PyTorch, flags are validated against the format table."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import kasf
from kasf.artefact import parse_metadata, read_onnx_metadata
from kasf.export.cli import UsageError, main, parse_args
from kasf.export.parity import check_parity
from kasf.runtime import Lifter, LifterError
from tests.conftest import perturbed_model, require_native_op

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return kasf.save_checkpoint(path, perturbed_model("kasportsformer-t"), preset="kasportsformer-t")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main([str(tiny_checkpoint), "--format", "onnx", "-o", str(out)]) == 0
    return out


# Every width/head configuration of the presets; depth cut to one block to keep the suite fast (depth repeats
# the same block, so it adds nothing an export could get wrong).
@pytest.mark.parametrize("preset,layers", [("kasportsformer", 1), ("kasportsformer-b", 1), ("kasportsformer-s", 1),
                                           ("kasportsformer-xs", 1), ("kasportsformer-t", None),
                                           ("motionagformer-t", None)])
def test_each_preset_exports_with_parity(preset, layers, tmp_path):
    overrides = {"n_layers": layers} if layers else {}
    ckpt = kasf.save_checkpoint(tmp_path / "m.pt", perturbed_model(preset, **overrides), preset=None)
    assert main([str(ckpt), "-o", str(tmp_path / "m.onnx")]) == 0
    report = json.loads((tmp_path / "m.onnx.parity.json").read_text())
    assert report["passed"] and report["windows_real"] > 0
    assert abs(report["mpjpe_change_mm"]) < 0.1
    assert report["mean_abs"] < 1e-4 and report["max_abs"] < 5e-2  # see kasf.export.parity on neighbour swaps


def test_onnx_cpu_format_fp32_and_int8_with_parity(tiny_checkpoint, tmp_path, monkeypatch):
    """--format onnx-cpu: the ONNX Runtime CPU graph (contrib attention, ORT fusions saved), judged like the rest."""
    from kasf.export.onnx_export import ORT_OPTIMIZED_KEY

    monkeypatch.chdir(tmp_path)
    assert main([str(tiny_checkpoint), "--format", "onnx-cpu", "--int8"]) == 0
    for name, precision, limit in (("tiny.cpu.onnx", "fp32", 0.1), ("tiny.cpu.int8.onnx", "int8", 1.0)):
        report = json.loads((tmp_path / f"{name}.parity.json").read_text())
        assert report["passed"] and report["precision"] == precision and abs(report["mpjpe_change_mm"]) < limit
    meta = read_onnx_metadata(tmp_path / "tiny.cpu.onnx")
    assert meta[ORT_OPTIMIZED_KEY] == "extended"
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "tiny.cpu.onnx")).graph.node}
    assert ops & {"Attention", "MultiHeadAttention"}  # the CPU graph, not the portable one
    assert meta["ort_attention"] == "contrib"


def test_onnx_cpu_format_with_standard_attention(tiny_checkpoint, tmp_path):
    """--ort-attention standard: no contrib attention nodes, the form recorded, parity judged like the rest."""
    import onnx

    out = tmp_path / "std.onnx"
    assert main([str(tiny_checkpoint), "--format", "onnx-cpu", "--ort-attention", "standard", "-o", str(out)]) == 0
    assert json.loads((tmp_path / "std.onnx.parity.json").read_text())["passed"]
    assert read_onnx_metadata(out)["ort_attention"] == "standard"
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "Softmax" in ops and not ops & {"Attention", "MultiHeadAttention"}


@pytest.mark.parametrize("preset, mode", [("kasportsformer-t", "window"), ("mlp-baseline", "frame")])
def test_input_norm_models_export_with_parity(preset, mode, tmp_path):
    model = perturbed_model(preset, input_norm=mode, **({} if preset.startswith("mlp") else {"n_layers": 1}))
    ckpt = kasf.save_checkpoint(tmp_path / "m.pt", model.eval(), preset=None)
    assert main([str(ckpt), "-o", str(tmp_path / "m.onnx")]) == 0
    report = json.loads((tmp_path / "m.onnx.parity.json").read_text())
    assert report["passed"] and abs(report["mpjpe_change_mm"]) < 0.1


def test_onnx_metadata_and_dynamic_batch(tiny_onnx, tiny_checkpoint):
    meta = parse_metadata(read_onnx_metadata(tiny_onnx))
    assert meta["preset"] == "kasportsformer-t" and meta["n_frames"] == 27 and meta["precision"] == "fp32"
    assert meta["normalization"] == "screen-width-v1" and meta["skeleton"] == "h36m-17"
    assert meta["config"] == kasf.load_checkpoint(tiny_checkpoint).config
    import onnx

    proto = onnx.load(str(tiny_onnx))
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_lifter_gives_same_numbers_from_checkpoint_and_onnx(tiny_checkpoint, tiny_onnx):
    windows = np.random.default_rng(1).normal(0, 0.3, size=(3, 27, 17, 3)).astype(np.float32)
    from_pt = Lifter.load(tiny_checkpoint, device="cpu")
    from_onnx = Lifter.load(tiny_onnx, device="cpu")
    assert from_pt.backend == "torch" and from_onnx.backend == "onnxruntime"
    assert np.abs(from_pt.predict(windows) - from_onnx.predict(windows)).max() < 1e-4
    assert from_onnx.metadata["preset"] == "kasportsformer-t"


def test_fp16_onnx_for_strongly_typed_tensorrt(tiny_checkpoint, tmp_path):
    """TensorRT 11 builds FP16 only from an FP16 graph: float32 I/O, float16 weights, same function."""
    import onnx
    import onnxruntime as ort

    from kasf.artefact import build_metadata
    from kasf.export.onnx_export import export_onnx

    model = kasf.load_checkpoint(tiny_checkpoint)
    path = export_onnx(model, tmp_path / "h.onnx", build_metadata(model.config, None, "fp16", "decomposed",
                                                                    (1, 8, 64), None), half=True)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    x = np.random.default_rng(0).normal(0, 0.3, size=(2, 27, 17, 3)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"keypoints2d": x})[0]
    with torch.no_grad():
        assert np.abs(got - model(torch.from_numpy(x)).numpy()).max() < 5e-2


def test_reference_layout_exports_with_config(reference_small_file, official_small, tmp_path):
    import yaml

    cfg = tmp_path / "ref.yaml"
    cfg.write_text(yaml.safe_dump({"model_name": "KASportsFormer", **official_small["config"]}))
    out = tmp_path / "ref.onnx"
    assert main([str(reference_small_file), "--config", str(cfg), "-o", str(out)]) == 0
    lifter = Lifter.load(out, device="cpu")
    got = lifter.predict(official_small["inputs"].numpy())
    assert np.abs(got - official_small["outputs"].numpy()).max() < 1e-4


def test_reference_layout_without_config_is_one_clear_error(reference_small_file, tmp_path, capsys):
    assert main([str(reference_small_file), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "pass a preset" in capsys.readouterr().err


def test_plugin_mode_exports_one_custom_node_and_matches(tiny_checkpoint, tmp_path):
    require_native_op()
    import onnx

    out = tmp_path / "plugin.onnx"
    assert main([str(tiny_checkpoint), "-o", str(out), "--anatomy-op", "plugin"]) == 0
    nodes = [n.op_type for n in onnx.load(str(out)).graph.node if n.domain == "kasf"]
    assert nodes == ["AnatomyFeatures"]
    assert json.loads((tmp_path / "plugin.onnx.parity.json").read_text())["passed"]
    assert Lifter.load(out, device="cpu").metadata["anatomy_op"] == "plugin"


def test_int8_onnx_accuracy_is_reported_and_bounded(tmp_path):
    # A trained model: the bundled demo checkpoint (INT8 error of an untrained model says nothing).
    out = tmp_path / "q.onnx"
    assert main(["demo", "-o", str(out), "--int8"]) == 0
    report = json.loads((tmp_path / "q.int8.onnx.parity.json").read_text())
    assert report["precision"] == "int8" and report["passed"]
    assert abs(report["mpjpe_change_mm"]) <= report["tolerance"]["mpjpe_change_mm"] == 1.0
    assert Lifter.load(tmp_path / "q.int8.onnx", device="cpu").precision == "int8"


def test_parity_check_fails_a_wrong_artefact():
    from kasf.export.windows import load_real_windows

    real = load_real_windows(27)
    model = perturbed_model("kasportsformer-t")

    def reference(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    double = copy.deepcopy(model).double()

    def reference64(x):
        with torch.no_grad():
            return double(torch.from_numpy(x).double()).numpy()

    report = check_parity(reference, lambda x: reference(x) + 1e-3, "x.onnx", "test", "fp32", 27, real, reference64)
    assert not report.passed and report.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert 0 < report.fp32_noise_mean_abs < 1e-5
    assert check_parity(reference, reference, "x.onnx", "test", "fp32", 27, real, reference64).passed


def test_triton_repositories_configs_parse(tiny_checkpoint, tmp_path):
    assert main([str(tiny_checkpoint), "--format", "triton", "-o", str(tmp_path / "repo"), "--name", "lifter",
                 "--dynamic-batch", "1,8,32"]) == 0
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="needs tritonclient[grpc] to parse config.pbtxt")
    from google.protobuf import text_format

    from kasf.runtime.triton_client import metadata_from_parameters

    configs = {}
    for kind, payload in (("nvidia", "model.onnx"), ("python", "model.py")):
        folder = tmp_path / "repo" / kind / "lifter"
        assert (folder / "1" / payload).exists()
        configs[kind] = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    nvidia, python = configs["nvidia"], configs["python"]
    assert nvidia.platform == "onnxruntime_onnx" and python.backend == "python"
    for config in configs.values():
        assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds > 0
        assert list(config.input[0].dims) == [27, 17, 3] and config.input[0].name == "keypoints2d"
        meta = metadata_from_parameters({k: v.string_value for k, v in config.parameters.items()})
        assert meta["n_frames"] == "27" and json.loads(meta["config"])["n_frames"] == 27


@pytest.mark.parametrize("argv,message", [
    (["--format", "onx"], "did you mean onnx"),
    (["--workspce", "2"], "did you mean --workspace"),
    (["--format", "onnx", "--workspace", "2"], "--workspace does not apply to --format onnx"),
    (["--format", "onnx", "--half"], "--half does not apply to --format onnx"),
    (["--half", "--int8", "--format", "engine"], "exclude each other"),
    (["--calib", "x.npz"], "--calib is for --int8"),
    (["--batch", "4", "--dynamic-batch", "1,4,8"], "exclude each other"),
    (["--dynamic-batch", "8,4,1"], "1 <= MIN <= OPT <= MAX"),
    (["--opset", "13"], "opset >= 17"),
    (["--format", "triton", "--batch", "4"], "dynamic batch"),
    (["--format", "onnx-cpu", "--anatomy-op", "plugin"], "--anatomy-op does not apply to --format onnx-cpu"),
    (["--format", "onnx", "--ort-attention", "standard"], "--ort-attention does not apply to --format onnx"),
])
def test_bad_flags_are_one_clear_error(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_args(["ckpt.pt", *argv])


def test_help_shows_the_flag_table(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--workspace" in out and "engine" in out and "triton" in out


def test_lifter_refuses_wrong_windows_and_silent_fallback(tiny_checkpoint, tiny_onnx):
    lifter = Lifter.load(tiny_onnx, device="cpu")
    with pytest.raises(ValueError, match=r"\(batch, 27, 17, 3\)"):
        lifter.predict(np.zeros((2, 27, 17, 2), np.float32))
    bad = np.zeros((1, 27, 17, 3), np.float32)
    bad[0, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lifter.predict(bad)
    if not torch.cuda.is_available():
        with pytest.raises(LifterError, match="no CUDA GPU"):
            Lifter.load(tiny_checkpoint, device="cuda")
        assert Lifter.load(tiny_checkpoint, device="cuda", allow_fallback=True).device == "cpu"
    with pytest.raises(FileNotFoundError):
        Lifter.load("missing.onnx")


def test_engine_needs_tensorrt_with_the_install_command(tiny_checkpoint, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this checks the message shown without it")
    except ImportError:
        pass
    assert main([str(tiny_checkpoint), "--format", "engine", "-o", str(tmp_path / "m.engine")]) == 2
    assert "pip install 'kasf[gpu]'" in capsys.readouterr().err


def test_tensorrt_engine_matches_pytorch(tiny_checkpoint, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT and an NVIDIA GPU (pip install 'kasf[gpu]')")
    pytest.importorskip("pycuda", reason="needs pycuda and an NVIDIA GPU")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    for extra, precision in (([], "fp32"), (["--half"], "fp16")):
        out = tmp_path / f"m{precision}.engine"
        assert main([str(tiny_checkpoint), "--format", "engine", "-o", str(out), *extra]) == 0
        report = json.loads((tmp_path / f"m{precision}.engine.parity.json").read_text())
        assert report["passed"] and report["precision"] == precision
