"""The architecture holds: layers import downwards only (import-linter), the CLI starts without torch,
and every user error is one line with exit code 2."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folders installed under the one import package `pathnas` (pyproject's package-dir mapping).
MAPPED = ("export", "profiling", "deploy", "hardware_profiles")


def test_import_linter_contracts_hold(tmp_path):
    # import-linter walks the root package's folder on disk, so it is shown the installed shape:
    # pathnas/ with the mapped top-level folders inside it.
    view = tmp_path / "view"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "pathnas", view / "pathnas", ignore=ignore)
    for name in MAPPED:
        shutil.copytree(ROOT / name, view / "pathnas" / name, ignore=ignore)
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=view,
                            capture_output=True, text=True, env={"PYTHONPATH": str(view), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, runpy, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "fvcore", "onnx", "onnxruntime", "openvino"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Blocker())
    sys.argv = ["pathnas-edge", *sys.argv[1:]]
    runpy.run_module("pathnas.cli", run_name="__main__")
""")


def cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True)


def test_help_and_version_start_without_torch():
    for args in (["--help"], ["inspect", "--help"], ["pipeline", "--help"], ["search", "--help"]):
        result = cli_without_torch(*args)
        assert result.returncode == 0, result.stderr
        assert "Usage: pathnas-edge" in result.stdout
    version = cli_without_torch("--version")
    assert version.returncode == 0 and version.stdout.startswith("pathnas-edge ")


def test_usage_errors_are_short_and_exit_2():
    for args, message in ((["pretrain", "--epochs", "abc", "--data", "d", "--run-dir", "r"], "Invalid value for '--epochs'"),
                          (["pretrain", "--bogus"], "No such option: --bogus"),
                          (["nosuch"], "No such command 'nosuch'")):
        result = cli_without_torch(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 4


def test_defaults_come_from_the_settings_models():
    from pathnas.settings import PretrainConfig, RetrainConfig

    help_text = cli_without_torch("retrain", "--help").stdout
    assert f"default: {RetrainConfig.model_fields['batch_size'].default}" in " ".join(help_text.split())
    assert PretrainConfig.model_fields["batch_size"].default == 64


def test_the_space_names_match_the_registry():
    from pathnas.settings import SPACES
    from pathnas.spaces import SUPERNETS

    assert tuple(SUPERNETS) == SPACES
