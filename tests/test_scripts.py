"""The specification's shell wrappers (scripts/run_*.sh): the command line each one builds, its
usage errors, and one real run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
FAKE_PYTHON = """#!/bin/sh
exec "{python}" -c 'import json, os, sys; print(json.dumps({{"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pythonpath": os.environ["PYTHONPATH"]}}))' "$@"
"""


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for python that prints the arguments and environment it was started with."""
    path = tmp_path_factory.mktemp("bin") / "python"
    path.write_text(FAKE_PYTHON.format(python=sys.executable))
    path.chmod(0o755)
    return path


def wrapper(name: str, *args: str, python: Path | str = sys.executable, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH")}
    return subprocess.run(["bash", str(SCRIPTS / name), *args], env={**env, "PYTHON": str(python)}, cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def launched(name: str, *args: str, python: Path) -> dict:
    result = wrapper(name, *args, python=python)
    assert result.returncode == 0, result.stderr
    launch = json.loads(result.stdout)
    assert launch["pythonpath"].split(":")[0] == str(ROOT / "src")
    return launch


def test_single_device_wrappers_build_the_conformer_command(fake_python):
    train = launched("run_standalone_train_gpu.sh", "cfg.yaml", "--device", "3", "--checkpoint", "auto",
                     "--extra", "--batch_size", "48", python=fake_python)  # fmt: skip
    assert train["cuda"] == "3"
    assert train["argv"] == ["-m", "conformer_vision", "train", "--config", "cfg.yaml", "--device_target", "cuda",
                             "--device_id", "0", "--device_num", "1", "--checkpoint", "auto", "--batch_size", "48"]  # fmt: skip
    evaluate = launched("run_eval_gpu.sh", "cfg.yaml", "--extra", "--use_ema", "--output", "m.json", python=fake_python)
    assert evaluate["cuda"] == "0"
    assert evaluate["argv"] == ["-m", "conformer_vision", "eval", "--config", "cfg.yaml", "--device_target", "cuda",
                                "--device_id", "0", "--use_ema", "--output", "m.json"]  # fmt: skip
    infer = launched("run_infer_gpu.sh", "photos", "--checkpoint", "m.pt", "--arch", "conformer_tiny", "--device", "1",
                     python=fake_python)  # fmt: skip
    assert infer["cuda"] == "1"
    assert infer["argv"] == ["-m", "conformer_vision", "predict", "photos", "--checkpoint", "m.pt", "--output",
                             "predictions.json", "--device", "cuda", "--arch", "conformer_tiny"]  # fmt: skip
    assert launched("run_eval_onnx.sh", "data/val", python=fake_python)["argv"] == [
        "-m", "conformer_vision", "eval-onnx", "data/val", "--onnx_path", "conformer_tiny_patch16.onnx"]  # fmt: skip
    assert launched("run_infer_onnx.sh", "photos", "--onnx_path", "m.onnx", "--extra", "--topk", "5",
                    python=fake_python)["argv"] == [
        "-m", "conformer_vision", "predict", "photos", "--checkpoint", "m.onnx", "--output", "predictions.json",
        "--topk", "5"]  # fmt: skip


def test_distributed_wrapper_starts_one_process_per_listed_gpu(fake_python):
    run = launched("run_distribute_train_gpu.sh", "cfg.yaml", "--device_ids", "0,2", "--extra", "--epochs", "3",
                   python=fake_python)  # fmt: skip
    assert run["cuda"] == "0,2"
    assert run["argv"] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                           "conformer_vision", "train", "--config", "cfg.yaml", "--device_target", "cuda",
                           "--device_num", "2", "--epochs", "3"]  # fmt: skip
    assert launched("run_distribute_train_gpu.sh", "cfg.yaml", "--num_devices", "4", python=fake_python)["cuda"] == "0,1,2,3"
    bad = wrapper("run_distribute_train_gpu.sh", "cfg.yaml", "--num_devices", "3", "--device_ids", "0,1", python=fake_python)
    assert bad.returncode == 2 and "--device_ids 0,1 does not list 3 devices" in bad.stderr
    if shutil.which("nvidia-smi") is None:
        none = wrapper("run_distribute_train_gpu.sh", "cfg.yaml", python=fake_python)
        assert none.returncode == 2 and "no GPU found: pass --num_devices N" in none.stderr


@pytest.mark.parametrize("name", ["run_standalone_train_gpu.sh", "run_eval_gpu.sh", "run_eval_onnx.sh",
                                  "run_infer_gpu.sh", "run_infer_onnx.sh", "run_distribute_train_gpu.sh"])  # fmt: skip
def test_usage_and_usage_errors(fake_python, name):
    helped = wrapper(name, "--help", python=fake_python)
    assert helped.returncode == 0 and f"bash scripts/{name}" in helped.stdout and "#" not in helped.stdout
    assert "source" not in helped.stdout  # the header only
    missing = wrapper(name, python=fake_python)
    assert missing.returncode == 2 and "missing " in missing.stderr and f"bash scripts/{name}" in missing.stderr
    unknown = wrapper(name, "x", "--no_such_option", "1", python=fake_python)
    assert unknown.returncode == 2 and "'--no_such_option'" in unknown.stderr and not unknown.stdout
    dangling = wrapper(name, "x", "--checkpoint" if "onnx" not in name else "--onnx_path", python=fake_python)
    assert dangling.returncode == 2 and "missing value" in dangling.stderr


def test_infer_onnx_wrapper_classifies_a_folder(base, tmp_path):
    """A real run: run_infer_onnx.sh with the project's python on real photos and a real export."""
    onnx_path, photos = T.onnx_export(base), T.photos(base)
    result = wrapper("run_infer_onnx.sh", str(photos), "--onnx_path", str(onnx_path), "--output", "out.json",
                     "--extra", "--topk", "2", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = json.loads((tmp_path / "out.json").read_text())
    assert len(predictions) == len(list(photos.iterdir())) > 0
