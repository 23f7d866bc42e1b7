"""What an installed edgec needs: the wheel's files, optional frameworks, nvcc for CUDA, --version.

`test_slow_wheel_installs_into_a_fresh_venv_without_torch` installs the wheel into a new virtual
environment (pip fetches apache-tvm, onnxruntime, ... from PyPI: minutes, and the network): it runs
only with EDGEC_INSTALL_TEST=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compiler import __version__
from tests.helpers import edgec, one_line_error

REPO = Path(__file__).resolve().parents[2]
SHIPPED_FILES = ("meta.json", "database_workload.json", "database_tuning_record.json")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """edgec built as a wheel, as `pip install .` builds it (no build isolation: no network)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(out)], check=True, capture_output=True, cwd=out)
    (path,) = out.glob("edgec-*.whl")
    return path


def test_wheel_holds_the_shipped_records_the_runner_and_the_qemu_plugin_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("x86-64", "x86-avx512"):
        assert {f"tuning_logs/{preset}/{name}" for name in SHIPPED_FILES} <= names
        source = REPO / "tuning_logs" / preset / "database_tuning_record.json"
        assert zipfile.ZipFile(wheel).read(f"tuning_logs/{preset}/database_tuning_record.json") == source.read_bytes()
    assert {"compiler/runtime/runner.cc", "compiler/runtime/instruction_count.c"} <= names
    assert not [n for n in names if "history-" in n or n.startswith(("tests/", "examples/"))]


def test_wheel_needs_onnxruntime_and_leaves_torch_to_an_extra(wheel):
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-')[0]}-{__version__}.dist-info/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "onnxruntime==1.31.1" in requires
    assert 'torch==2.13.0; extra == "torch"' in requires
    assert not [r for r in requires if r.startswith("torch") and "extra" not in r]


def test_every_edgec_module_imports_without_torch():
    """torch is an extra: no module of edgec's may need it to import. (TVM's tvm_ffi imports torch
    itself when it is installed, so the test hides it instead of checking sys.modules.)"""
    code = ("import importlib, pkgutil, sys; sys.modules['torch'] = None\n"
            "for package in ('compiler', 'passes', 'targets'):\n"
            "    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "print('imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "imported", result.stderr[-2000:]


def test_pt2_model_without_torch_names_the_extra(tmp_path, monkeypatch):
    model = tmp_path / "model.pt2"
    model.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    message = one_line_error("compile", model, "--target", "host", "-o", tmp_path / "out")
    assert message == "error: this model needs the 'torch' package: pip install 'edgec[torch]'"


def test_cuda_preset_without_nvcc_says_how_to_get_it(tmp_path, monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "nvcc" else which(name, *a, **k))
    message = one_line_error("compile", tmp_path / "model.onnx", "--target", "cuda-sm80", "-o", tmp_path / "out")
    assert "nvcc is not installed" in message and "apt-get install nvidia-cuda-toolkit" in message


def test_version():
    assert edgec("--version").strip() == f"edgec {__version__}"


@pytest.mark.skipif(os.environ.get("EDGEC_INSTALL_TEST") != "1",
                    reason="installs the wheel into a fresh venv, fetching its dependencies from PyPI (minutes, "
                           "network): set EDGEC_INSTALL_TEST=1")
def test_slow_wheel_installs_into_a_fresh_venv_without_torch(wheel, example, tmp_path):
    """From a directory that is not the repository: compile an ONNX model for x86-64 with the
    shipped records, evaluate it against onnxruntime; a .pt2 model asks for the torch extra."""
    from targets import resolve_target

    venv = tmp_path / "venv"
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    files = example("digits")
    np.savez(elsewhere / "eval.npz", input=files.input[None])
    env = {**os.environ, "EDGEC_TUNING_DIR": str(tmp_path / "user")}

    def run(*args: object, expect: int = 0) -> str:
        result = subprocess.run([str(venv / "bin" / "edgec"), *map(str, args)], capture_output=True, text=True,
                                cwd=elsewhere, env=env)
        assert result.returncode == expect, result.stdout + result.stderr
        return result.stdout + result.stderr

    assert subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True).returncode != 0
    out = run("compile", files.onnx, "--target", "x86-64", "-o", "digits")
    assert "kernels tuned" in out and f"from shipped {venv}" in out
    if resolve_target("x86-64").execution_here().mode == "native":
        report = run("evaluate", "digits", "--eval-data", "eval.npz")
        assert "top-1 agreement with" in report and "1.0000 over 1 samples" in report
    message = run("compile", files.pt2, "--target", "x86-64", "-o", "pt2", expect=2)
    assert "pip install 'edgec[torch]'" in message
