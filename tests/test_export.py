"""Extract, retrain, quantize, export, validate, and the stage skip/resume mechanism."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pathnas.data import generate
from pathnas.errors import ConfigError
from pathnas.pipeline import RunLayout
from pathnas.pipeline.stages import stage_export, stage_extract, stage_validate
from pathnas.settings import CalibrationSettings
from pathnas.retrain import RetrainConfig, retrain
from pathnas.spaces import space_config
from pathnas.pipeline.record import run_stage
from pathnas.subnet import load_subnet
from pathnas.train import PretrainConfig, pretrain
from cli_helpers import pathnas_edge

TINY = dict(width_mult=0.25, input_size=32, stage_repeats=(1, 1, 1, 1))



def make_run(root: Path, task: str) -> tuple[Path, Path]:
    data = root / "data"
    generate(data, task, n_per_class=12 if task == "classify" else 5, image_size=32, seed=0)
    name, knobs = ("shufflenet", {**TINY, "num_classes": 4}) if task == "classify" else \
        ("unet", dict(width_mult=0.25, input_size=32, num_classes=2))
    cfg = PretrainConfig(data=data, run_dir=root / "run" / "supernet", epochs=2, batch_size=8, lr=0.02, workers=0,
                         eval_paths=0, device="cpu", mixup_alpha=0, cutmix_alpha=0)
    pretrain(space_config(name, **knobs), cfg, progress=False)
    return root / "run", data


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    run, data = make_run(tmp_path_factory.mktemp("cls"), "classify")
    stage_extract(RunLayout(run), run / "supernet" / "last.pt", "3575")
    return run, data


def test_extract_writes_a_standalone_subnet_with_the_supernet_weights(classify_run):
    run, _ = classify_run
    model, meta = load_subnet(run / "extract" / "subnet.pt")
    assert meta["arch"] == "3575" and meta["task"] == "classify" and len(meta["classes"]) == 4
    from pathnas.train import load_supernet

    supernet, _ = load_supernet(run / "supernet" / "last.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), supernet.eval()(x, "3575"), atol=1e-6)


def test_extract_refuses_a_search_without_a_feasible_best(tmp_path, classify_run):
    run, _ = classify_run
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "summary.json").write_text(json.dumps({"best": None}))
    with pytest.raises(ValueError, match="no architecture that meets every budget"):
        stage_extract(RunLayout(tmp_path), run / "supernet" / "last.pt")


def test_retrain_keeps_the_best_val_epoch_reads_test_once_and_resumes(classify_run, tmp_path):
    run, data = classify_run
    cfg = RetrainConfig(data=data, epochs=2, batch_size=8, lr=0.01, mixup_alpha=0, cutmix_alpha=0, warmup_epochs=0,
                        device="cpu")
    out = tmp_path / "retrain"
    summary = retrain(run / "extract" / "subnet.pt", cfg, out)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best_val = max([summary["val"]["top1_pct"]] + [h["val_top1_pct"] for h in history])
    assert summary["val"]["top1_pct"] == best_val and "top1_pct" in summary["test"]
    # a longer schedule cannot continue the checkpoint (its cosine schedule ended): refused, naming why
    with pytest.raises(ConfigError, match=r"epochs 2 -> 3\): the learning-rate schedule"):
        retrain(run / "extract" / "subnet.pt", cfg.model_copy(update={"epochs": 3}), out)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_stages_skip_when_inputs_are_unchanged_and_rerun_when_they_change(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a")
    out = tmp_path / "out.txt"
    calls = []

    def work():
        calls.append(1)
        out.write_text(source.read_text().upper())

    assert run_stage(RunLayout(tmp_path), "upper", {"source": source, "mode": 1}, [out], work)
    assert not run_stage(RunLayout(tmp_path), "upper", {"source": source, "mode": 1}, [out], work)
    source.write_text("b")
    assert run_stage(RunLayout(tmp_path), "upper", {"source": source, "mode": 1}, [out], work)
    out.unlink()  # a lost output reruns the stage
    assert run_stage(RunLayout(tmp_path), "upper", {"source": source, "mode": 1}, [out], work)
    assert run_stage(RunLayout(tmp_path), "upper", {"source": source, "mode": 2}, [out], work)
    assert len(calls) == 4 and out.read_text() == "B"
    recorded = json.loads((tmp_path / "stages.json").read_text())["upper"]
    assert recorded["outputs"] == ["out.txt"] and set(recorded["inputs"]) == {"source", "mode"}


def test_a_crashed_stage_is_not_recorded_and_runs_again(tmp_path):
    out = tmp_path / "out.txt"

    def crash():
        out.write_text("half")
        raise KeyboardInterrupt  # killed mid-stage

    with pytest.raises(KeyboardInterrupt):
        run_stage(RunLayout(tmp_path), "flaky", {"mode": 1}, [out], crash)
    assert not (tmp_path / "stages.json").exists()
    assert run_stage(RunLayout(tmp_path), "flaky", {"mode": 1}, [out], lambda: out.write_text("done"))
    assert not run_stage(RunLayout(tmp_path), "flaky", {"mode": 1}, [out], crash)
    with pytest.raises(RuntimeError, match="without writing"):
        run_stage(RunLayout(tmp_path), "lazy", {}, [tmp_path / "never.txt"], lambda: None)


@pytest.fixture(scope="module")
def exported(classify_run):
    run, data = classify_run
    rows = stage_export(RunLayout(run), data, ["onnx", "openvino", "tensorrt"], ["fp32", "fp16", "int8"],
                        CalibrationSettings(calibration_images=48))
    return run, data, rows


def test_export_writes_every_artifact_or_says_why_not(exported):
    run, _, rows = exported
    status = {(r["format"], r["precision"]): r["status"] for r in rows}
    assert status[("onnx", "fp32")] == status[("onnx", "int8")] == "exported"
    assert status[("openvino", "fp32")] == status[("openvino", "int8")] == "exported"
    assert status[("onnx", "fp16")] == "skipped"
    trt = [r for r in rows if r["format"] == "tensorrt"]
    assert all(r["status"] == "skipped" and ("TensorRT" in r["reason"] or "CUDA" in r["reason"]) for r in trt)
    model = onnx.load(str(run / "export" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pathnas.arch"] == "3575" and json.loads(meta["pathnas.preprocess"])["input_size"] == 32
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 32, 32]
    preprocess = json.loads((run / "export" / "preprocess.json").read_text())
    assert preprocess["channel_order"] == "RGB" and len(preprocess["mean"]) == 3
    assert json.loads((run / "export" / "labels.json").read_text()) == ["benign", "in_situ", "invasive", "normal"]
    # OpenVINO keeps FP32 weights FP32 (no silent FP16 compression)
    import openvino as ov

    ir = ov.Core().read_model(str(run / "export" / "openvino" / "model.xml"))
    consts = [op for op in ir.get_ordered_ops() if op.get_type_name() == "Constant" and op.get_output_size()]
    assert not any(op.get_output_element_type(0) == ov.Type.f16 for op in consts)


def test_int8_is_accuracy_controlled_qdq_calibrated_on_train(exported):
    run, _, rows = exported
    model = onnx.load(str(run / "quantize" / "model_int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    record = json.loads((run / "quantize" / "calibration.json").read_text())
    splits = json.loads((run.parent / "data" / "splits.json").read_text())
    # the images really used: 48 asked for, as many as the training split has
    assert record["calibration_split"] == "train" and record["calibration_images"] == min(48, len(splits["train"]))
    control = record["accuracy_control"]
    assert control["split"] == "val" and control["images"] == len(splits["val"])
    assert set(control["figures"]) >= {"top1_agreement_pct", "metric_delta", "cosine", "max_abs_diff"}
    assert control["steps"][0]["action"] == "quantize every layer"  # then layers back to float only if needed
    assert len(control["steps"]) == 1 + len(record["float_nodes"]) + sum(
        s["action"].startswith("skipped") for s in control["steps"])
    weight_scales = [i for i in model.graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1]
    assert weight_scales  # per-channel scales
    # nothing a runtime does not need: no shape annotations, no all-zero weight zero points, float biases
    assert not model.graph.value_info
    constants = {i.name for i in model.graph.initializer}
    conv_inputs = {i for n in model.graph.node if n.op_type == "Conv" for i in n.input}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants
                 and n.output[0] in conv_inputs]
    assert weight_dq and all(len(n.input) == 2 for n in weight_dq)  # a Gemm's keeps it: see slim_qdq
    assert not any(i.data_type == onnx.TensorProto.INT32 for i in model.graph.initializer)
    size_ratio = (run / "quantize" / "model_int8.onnx").stat().st_size / (run / "export" / "model.onnx").stat().st_size
    assert size_ratio == pytest.approx(record["size_ratio"])
    # every INT8 artifact says which layers stayed float
    assert all(r["float_nodes"] == record["float_nodes"] for r in rows if r["precision"] == "int8")


def test_slimming_a_qdq_model_keeps_its_outputs(exported, tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from pathnas.export.quantize import QUANTIZED_OPS, _reader, slim_qdq

    run, _, _ = exported
    fp32 = run / "export" / "model.onnx"
    rng = np.random.default_rng(0)
    name = onnx.load(str(fp32)).graph.input[0].name
    quantize_static(str(fp32), str(tmp_path / "raw.onnx"), _reader(name, [rng.standard_normal((4, 3, 32, 32), np.float32)]),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    raw = onnx.load(str(tmp_path / "raw.onnx"))
    slim = slim_qdq(onnx.load(str(tmp_path / "raw.onnx")))
    onnx.checker.check_model(slim, full_check=True)
    onnx.save(slim, str(tmp_path / "slim.onnx"))
    assert slim.ByteSize() < raw.ByteSize()
    x = rng.standard_normal((3, 3, 32, 32), np.float32)
    kernels, outputs = [], []
    for f in ("raw.onnx", "slim.onnx"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{f}.optimized")
        outputs.append(ort.InferenceSession(str(tmp_path / f), options, providers=["CPUExecutionProvider"])
                       .run(None, {name: x})[0])
        kernels.append(sorted(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node))
    # ONNX Runtime runs both with the same kernels (issue 19: without its weight's zero point the classifier's
    # DQ -> Gemm was not fused into QGemm, and ran in float, with other roundings), so the outputs are equal
    assert kernels[0] == kernels[1] and "QGemm" in kernels[1]
    np.testing.assert_array_equal(*outputs)
    scalars = [i.name for i in slim.graph.initializer if not i.dims and ("zero_point" in i.name or
                                                                          i.name.endswith("_zp"))]
    assert scalars == ["zero_point_int8"]  # one shared scalar zero for every activation
    constants = {i.name for i in slim.graph.initializer}
    consumers = {i: n.op_type for n in slim.graph.node for i in n.input}
    weight_dq = [n for n in slim.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert {consumers[n.output[0]] for n in weight_dq if len(n.input) == 3} == {"Gemm"}  # only the classifier's
    names = [t for n in slim.graph.node for t in (*n.input, *n.output, n.name)]
    assert not any(t.endswith(("_QuantizeLinear_Output", "_DequantizeLinear_Output", "_quantized")) for t in names)
    assert [i.name for i in slim.graph.input] == [name] and slim.graph.output[0].name == raw.graph.output[0].name


def test_accuracy_control_keeps_the_most_sensitive_layers_float_within_the_size_limit():
    """The search over float layers, on given validation figures (no model is built)."""
    from pathnas.export.quantize import QuantizableNode, _Candidate, _restore_float, _sensitivity

    errors = {(): 0.10, ("a",): 0.04, ("b",): 0.07, ("c",): 0.09, ("d",): 0.11, ("a", "c"): 0.035,
              ("b", "c"): 0.05, ("c", "b"): 0.05}
    sizes = {(): 0.25, ("a",): 0.40, ("b",): 0.26, ("c",): 0.255, ("d",): 0.25, ("b", "c"): 0.27}

    class Search:
        class writer:
            nodes = [QuantizableNode(n, "Conv", 10) for n in "abcd"]

        def get(self, float_nodes):
            key = tuple(sorted(float_nodes))
            passed = key == ("b", "c")  # only b and c together bring agreement to 98 %
            figures = {"relative_error": errors[key], "top1_agreement_pct": 98.5 if passed else 96.0,
                       "metric_delta": 0.0, "cosine": 1 - errors[key]}
            return _Candidate(key, None, sizes.get(key, 0.5), figures, passed, None if passed else "agreement")

    search = Search()
    full = search.get(())
    ranking = _sensitivity(search, full)
    assert [r["node"] for r in ranking] == ["a", "b", "c", "d"]  # by how much the error falls
    assert ranking[-1]["error_reduction"] < 0
    steps = []
    best = _restore_float(search, full, ranking, 0.30, steps)
    assert best.passed and best.float_nodes == ("b", "c")
    assert [(s["action"][:7], s["node"]) for s in steps] == [("skipped", "a"), ("keep fl", "b"), ("keep fl", "c")]


def test_int8_notes_give_the_speed_ratio_the_cpu_features_and_the_float_layers():
    from pathnas.deploy.machine import int8_cpu_features
    from pathnas.export.validate import int8_notes

    avx2 = int8_cpu_features({"avx2", "fma"})
    assert not avx2["vnni"] and avx2["summary"] == "AVX2; no VNNI, no AMX"
    zen4 = int8_cpu_features({"avx2", "avx512f", "avx512_vnni", "avx_vnni"})
    assert zen4["vnni"] and not zen4["amx"] and zen4["summary"] == "AVX-512; AVX-512 VNNI, AVX-VNNI; no AMX"
    sapphire = int8_cpu_features({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"})
    assert sapphire["amx"] and "AMX-INT8" in sapphire["summary"]

    def row(backend, precision, ms, **extra):
        return {"backend": backend, "precision": precision, "latency_p50_ms": ms, "top1_agreement_pct": 99.17,
                "cosine": 0.99959, **extra}

    report = {"rows": [row("onnxruntime", "fp32", 0.1), row("onnxruntime", "int8", 0.22, float_nodes=["node_linear"]),
                       row("openvino", "fp32", 4.0), row("openvino", "int8", 2.2, float_nodes=[])]}
    ort, ov = int8_notes(report, zen4)
    assert ort.startswith("onnxruntime: INT8 is 2.20x the FP32 latency on this CPU (AVX-512; AVX-512 VNNI")
    assert "slower, so the CPU profiles keep FP32" in ort and "cosine 0.99959" in ort
    assert ort.endswith("layers kept in float: node_linear.")
    assert ov.startswith("openvino: INT8 runs at 0.55x the FP32 latency") and ov.endswith("kept in float: none.")


def test_quantize_command_keeps_named_layers_float(exported, tmp_path, capsys, monkeypatch):
    run, data, _ = exported
    (tmp_path / "export").mkdir()
    for name in ("model.onnx", "preprocess.json"):
        (tmp_path / "export" / name).write_bytes((run / "export" / name).read_bytes())
    first_conv = next(n.name for n in onnx.load(str(run / "export" / "model.onnx")).graph.node if n.op_type == "Conv")
    code, out, _ = pathnas_edge("quantize", "--run-dir", str(tmp_path), "--data", str(data),
                       "--calibration-images", "16", "--keep-float", first_conv, "--no-accuracy-control", "--json")
    info = json.loads(out)
    assert code == 0 and info["float_nodes"] == [first_conv] and info["calibration_images"] == 16
    assert info["accuracy_control"] is None and info["forced_float_nodes"] == [first_conv]
    assert info["size_mb"] < info["fp32_size_mb"] and (tmp_path / "quantize" / "calibration.json").exists()
    code, _, err = pathnas_edge("quantize", "--run-dir", str(tmp_path), "--data", str(data),
                       "--keep-float", "no_such_layer", "--force")
    assert code == 2 and "--keep-float no_such_layer: no quantizable layer of that name; allowed: " in err
    assert first_conv in err


def test_validation_reports_every_backend_and_precision(exported, capsys, monkeypatch):
    run, data, _ = exported
    code, out, _ = pathnas_edge("validate", "--run-dir", str(run), "--data", str(data), "--json")
    report = json.loads(out)
    rows = {(r["backend"], r["precision"]): r for r in report["rows"]}
    fp32 = rows[("onnxruntime", "fp32")]
    assert fp32["status"] == "passed" and fp32["top1_agreement_pct"] == 100.0 and fp32["cosine"] >= 0.99999
    assert fp32["device"] == "CPUExecutionProvider" and fp32["latency_p50_ms"] > 0 and fp32["images_per_s"] > 0
    assert rows[("openvino", "fp32")]["status"] == "passed" and "OpenVINO CPU" in rows[("openvino", "fp32")]["device"]
    assert rows[("tensorrt", "fp16")]["status"] == "skipped"
    assert rows[("pytorch", "fp32")]["status"] == "reference"
    assert report["images"] == len(json.loads((data / "splits.json").read_text())["val"]) and report["split"] == "val"
    assert (run / "validate" / "report.md").read_text().startswith("# Validation against PyTorch")
    assert code == (0 if report["passed"] else 1)


def test_a_perturbed_model_fails_fp32_validation_and_says_by_how_much(exported, tmp_path, capsys, monkeypatch):
    run, data, _ = exported
    bad = tmp_path / "bad"
    for sub in ("extract", "export"):
        (bad / sub).mkdir(parents=True)
    (bad / "extract" / "subnet.pt").write_bytes((run / "extract" / "subnet.pt").read_bytes())
    model = onnx.load(str(run / "export" / "model.onnx"))
    classifier = next(n for n in reversed(model.graph.node) if n.op_type in ("Gemm", "MatMul"))
    weight = next(i for i in model.graph.initializer if i.name in classifier.input and len(i.dims) == 2)
    array = onnx.numpy_helper.to_array(weight).copy()
    array[0] *= 1.5  # a corrupted classifier weight (one class's row: scaling all rows keeps the cosine)
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(bad / "export" / "model.onnx"))
    (bad / "export" / "export.json").write_text(json.dumps({"artifacts": [
        {"format": "onnx", "backend": "onnxruntime", "precision": "fp32", "path": "export/model.onnx",
         "status": "exported", "reason": None}]}))
    code, out, _ = pathnas_edge("validate", "--run-dir", str(bad), "--data", str(data), "--json")
    assert code == 1
    report = json.loads(out)
    assert not report["passed"] and json.loads((bad / "validate" / "report.json").read_text()) == report
    row = next(r for r in report["rows"] if r["backend"] == "onnxruntime")
    assert row["status"] == "failed-validation" and "cosine" in row["reason"] and row["max_abs_diff"] > 1e-3


def test_segmentation_validation_reports_pixel_agreement_and_dice(tmp_path):
    run, data = make_run(tmp_path, "segment")
    stage_extract(RunLayout(run), run / "supernet" / "last.pt", "33333333")
    stage_export(RunLayout(run), data, ["onnx"], ["fp32"])
    report = stage_validate(RunLayout(run), data)
    row = next(r for r in report["rows"] if r["backend"] == "onnxruntime")
    assert row["status"] == "passed" and row["metric_name"] == "dice_pct"
    assert row["top1_agreement_pct"] == 100.0 and row["mask_dice_vs_pytorch_pct"] == 100.0


def test_bad_format_and_precision_lists_are_refused(classify_run, capsys, monkeypatch):
    run, data = classify_run
    code, _, err = pathnas_edge("export", "--run-dir", str(run), "--data", str(data), "--format", "onnx,coreml")
    assert code == 2 and "allowed values are onnx, openvino, tensorrt" in err
    code, _, err = pathnas_edge("export", "--run-dir", str(run), "--data", str(data), "--precision", "int4")
    assert code == 2 and "allowed values are fp32, fp16, int8" in err


class _Net(torch.nn.Module):
    """Two convolutions and a classifier: three quantizable layers, named by the ONNX export."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _quantized_layers(path) -> set[str]:
    """The Conv/Gemm nodes of a QDQ file whose weight comes through a DequantizeLinear."""
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in dq}


def test_each_runtime_gets_the_float_layers_its_own_figures_need(tmp_path, monkeypatch):
    """A constructed case of issue 19: the same QDQ graph, two runtimes that each break on another
    layer (ONNX Runtime's real outputs, with the class order reversed when the runtime's weak layer
    is quantized). Each runtime's accuracy control keeps its own layer float, in its own file, and
    the export offers each runtime's INT8 artifact from its file; a runtime that cannot pass within
    the size limit is exported as failed-validation with the reason in one line."""
    from pathnas.deploy.runtimes import open_runner
    from pathnas.export import quantize as q
    from pathnas.export.artifacts import convert_artifacts

    fp32 = tmp_path / "export" / "model.onnx"
    fp32.parent.mkdir()
    torch.onnx.export(_Net().eval(), torch.randn(1, 3, 16, 16), str(fp32), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    nodes = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Conv", "Gemm")]
    weak = {"onnxruntime": nodes[0], "openvino": nodes[2]}  # first conv; the classifier

    class Runtime:  # ONNX Runtime's outputs, broken while the runtime's weak layer is quantized
        def __init__(self, path, runtime, threads=None):
            self.inner = open_runner(path, "onnxruntime", threads)
            self.broken = weak[runtime] in _quantized_layers(path)

        def run(self, x):
            out = self.inner.run(x)
            return out[:, ::-1].copy() if self.broken else out

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

    monkeypatch.setattr(q, "open_runner", Runtime)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((16, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    with open_runner(fp32, "onnxruntime") as runner:
        reference = [runner.run(b) for b in batches]
    validation = q.ValidationSet(batches, [r.argmax(1) for r in reference], "classify", 4, reference)
    out = tmp_path / "quantize" / "model_int8.onnx"
    out.parent.mkdir()
    record = q.quantize_int8(fp32, out, batches, validation, runtimes=("onnxruntime", "openvino"), max_size_ratio=1.0)

    ort, ov = record["runtimes"]["onnxruntime"], record["runtimes"]["openvino"]
    assert ort["float_nodes"] == [weak["onnxruntime"]] and ov["float_nodes"] == [weak["openvino"]]
    assert ort["file"] == "model_int8.onnx" and ov["file"] == "model_int8_openvino.onnx"
    assert _quantized_layers(out) == set(nodes) - {weak["onnxruntime"]}
    assert _quantized_layers(out.parent / ov["file"]) == set(nodes) - {weak["openvino"]}
    for entry, runtime in ((ort, "onnxruntime"), (ov, "openvino")):
        control = entry["accuracy_control"]
        assert control["runtime"] == runtime and control["passed"] and control["figures"]["top1_agreement_pct"] == 100
        assert control["steps"][0]["action"] == "quantize every layer" and not control["steps"][0]["passed"]
        assert [(s["action"], s["node"]) for s in control["steps"][1:]] == [("keep float", weak[runtime])]
        assert control["sensitivity"][0]["node"] == weak[runtime]  # ranked first: it carries the error
    assert record["float_nodes"] == ort["float_nodes"] and record["accuracy_control"] == ort["accuracy_control"]

    rows = convert_artifacts(fp32.parent, out.parent, ["onnx", "openvino"], ["int8"], (1, 3, 16, 16), record)
    by_backend = {r["backend"]: r for r in rows}
    assert [r["status"] for r in rows] == ["exported", "exported"]
    assert by_backend["onnxruntime"]["path"] == str(out) and by_backend["openvino"]["float_nodes"] == ov["float_nodes"]
    assert Path(by_backend["openvino"]["path"]).with_suffix(".bin").exists()

    # within 1% of the FP32 size no layer may go back to float: neither runtime can pass
    record = q.quantize_int8(fp32, out, batches, validation, runtimes=("onnxruntime", "openvino"),
                             max_size_ratio=0.01)
    assert not (out.parent / "model_int8_openvino.onnx").exists()  # both runtimes run the same file now
    rows = convert_artifacts(fp32.parent, out.parent, ["onnx", "openvino"], ["int8"], (1, 3, 16, 16), record)
    for row in rows:
        assert row["status"] == "failed-validation" and "\n" not in row["reason"]
        assert row["reason"].startswith(f"INT8 accuracy control for {row['backend']} on val: top-1 agreement")
        assert "no other layer kept in float helps within 1% of the FP32 size" in row["reason"]


def test_the_markdown_report_is_a_pipe_table_whatever_the_cells_hold():
    from pathnas.export.report import COLUMNS, markdown

    rows = [{"backend": "onnxruntime", "precision": "int8", "status": "failed-validation", "device": "CPU",
             "reason": "top-1 agreement 96.67% < 98.0% | cosine 0.99707\nsecond line", "size_mb": 0.3,
             "top1_agreement_pct": 96.67, "cosine": 0.99707, "max_abs_diff": 0.2, "metric": 60.0, "metric_delta": -1.5,
             "latency_p50_ms": 1.0, "latency_p90_ms": 1.2, "images_per_s": 1000.0}]
    text = markdown({"rows": rows, "images": 240, "split": "val", "thresholds": {"int8": {"agreement_pct": 98.0}},
                     "versions": {"onnx": "1.23"}, "passed": False})
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 3 and set(table[1]) <= {"|", "-"}
    import re

    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table]  # unescaped pipes end cells
    assert [len(c) for c in cells] == [len(COLUMNS)] * 3
    assert cells[0][5].strip() == "max\\|Δ\\|" and "96.67% < 98.0% \\| cosine 0.99707 second line" in cells[2][3]
    assert text.startswith("# Validation against PyTorch (240 val images; metric: metric)")
    assert text.rstrip().endswith("Overall: FAILED")
