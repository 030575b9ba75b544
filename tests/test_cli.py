"""The CLI behaves for people: one line on Ctrl-C, tables that fit 80 columns, errors without tracebacks."""
from __future__ import annotations

import io

import pytest
from rich.console import Console
from cli_helpers import pathnas_edge



def test_ctrl_c_prints_one_line_saying_what_is_saved_and_how_to_continue(monkeypatch, capsys, tmp_path):
    import pathnas.train
    from pathnas.data import generate

    generate(tmp_path / "data", "classify", n_per_class=3, image_size=16, seed=0)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pathnas.train, "pretrain", interrupted)
    code, _, err = pathnas_edge("pretrain", "--data", str(tmp_path / "data"), "--run-dir",
                            str(tmp_path / "run"), "--input-size", "32")
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in err
    assert "last.pt" in lines[0] and "--resume" in lines[0]


def test_a_user_error_is_one_line_with_exit_2(monkeypatch, capsys, tmp_path):
    code, out, err = pathnas_edge("inspect", "--space", "shufflenet", "--arch", "3579")
    assert code == 2 and out == ""
    assert err.startswith("error: shufflenet:") and len(err.strip().splitlines()) == 1
    code, _, err = pathnas_edge("verify", str(tmp_path / "missing-bundle"))
    assert code == 1 and "missing-bundle" in err and "Traceback" not in err


def _report() -> dict:
    row = {"backend": "onnxruntime", "device": "CPUExecutionProvider", "precision": "fp32", "status": "passed",
           "reason": None, "size_mb": 1.235, "max_abs_diff": 2.2e-6, "cosine": 0.9999999, "top1_agreement_pct": 100.0,
           "metric": 85.83, "metric_delta": 0.0, "metric_name": "top1_pct", "latency_p50_ms": 0.137,
           "latency_p90_ms": 0.15, "images_per_s": 7299.0}
    skipped = {**{k: None for k in row}, "backend": "tensorrt", "precision": "fp32", "status": "skipped",
               "reason": "TensorRT is not installed (pip install 'pathnas-edge[tensorrt]' on the NVIDIA machine)"}
    return {"images": 120, "split": "val", "rows": [row, skipped], "passed": True,
            "notes": ["onnxruntime: INT8 is 1.52x the FP32 latency on this CPU (no VNNI): the CPU profiles keep FP32."]}


@pytest.mark.parametrize("width", [80, 200])
def test_the_validation_table_fits_the_terminal(monkeypatch, width):
    from pathnas.cli import common, ship

    buffer = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=buffer, width=width))
    monkeypatch.setattr(ship, "console", common.console)
    ship.print_report(_report())
    text = buffer.getvalue()
    table_lines = [line for line in text.splitlines() if line.startswith(("┃", "│", "┏", "└"))]
    assert table_lines and all(len(line) <= width for line in table_lines)
    assert "…" not in text  # no cell truncated to an ellipsis
    for figure in ("100.00", "0.137", "1.235", "skipped"):
        assert figure in text


# -- options come from the settings models ---------------------------------------------------------

def _options_of(command: str) -> dict:
    """The click parameters of ``pathnas-edge COMMAND`` by name."""
    import typer.main

    from pathnas.cli import app

    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


@pytest.mark.parametrize("command, model, left_out", [
    ("pipeline", "PipelineSettings", {"space"}),
    ("search", "SearchSettings", set()),
])
def test_every_setting_is_an_option_with_the_models_default(command, model, left_out):
    import pathnas.settings as settings

    fields = getattr(settings, model).model_fields
    options = _options_of(command)
    for name, info in fields.items():
        if name in left_out:
            assert name not in options
            continue
        assert name in options, f"{command} has no option for {model}.{name}"
        if not info.is_required() and name != "run_dir":  # the search's run directory has a CLI default
            default = info.get_default(call_default_factory=True)
            default = ",".join(default) if isinstance(default, tuple) else default
            assert options[name].default == default, name


def test_a_bad_setting_names_the_option_and_its_allowed_values(tmp_path):
    code, _, err = pathnas_edge("pipeline", "--run-dir", tmp_path / "run", "--proposer", "genetic",
                                "--formats", "onnx,tflite")
    assert code == 2 and "Traceback" not in err
    assert "--proposer: Input should be 'llm', 'llm-rank', 'prior-bo', 'evolution', 'random' or 'auto'" in err
    assert "format 'tflite': allowed values are onnx, openvino, tensorrt" in err
    assert not (tmp_path / "run").exists()


def test_each_proposer_named_in_the_settings_is_built_by_the_search():
    from pathnas.search import FACTORIES
    from pathnas.settings import PROPOSERS

    assert set(FACTORIES) == set(PROPOSERS) - {"auto"}
    assert all(f"{name}:" in _options_of("search")["proposer"].help for name in PROPOSERS)
