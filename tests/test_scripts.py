"""The shell scripts: the specification's wrappers (scripts/run_*.sh: the command line each one
builds, its usage errors, one real run), scripts/setup.sh's decisions about the project's virtual
environment (with stand-ins for python, apt-get and dpkg), test.sh, and how quickstart.sh splits the
CPU cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import pytest

pytestmark = pytest.mark.slow  # bash and the scripts in subprocesses, one real ONNX run

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


_VENVS: list[Path] = []  # the folder for stand-in environments of this module's tests


@pytest.fixture(scope="module", autouse=True)
def _venv_root(tmp_path_factory: pytest.TempPathFactory):
    _VENVS.append(tmp_path_factory.mktemp("venvs"))
    yield
    _VENVS.pop()


def venv_with(python: Path | str) -> Path:
    """A folder laid out like a virtual environment whose bin/python runs ``python``."""
    venv = _VENVS[-1] / f"venv_{len(list(_VENVS[-1].iterdir()))}"
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "python"
    script.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    script.chmod(0o755)
    return venv


def wrapper(
    name: str, *args: str, python: Path | str = sys.executable, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``bash scripts/NAME ARGS`` with ``python`` as the project's environment's interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "PYTHONPATH", "PYTHON")}
    venv = venv_with(python)
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env={**env, "VENV": str(venv)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def launched(name: str, *args: str, python: Path) -> dict:
    result = wrapper(name, *args, python=python)
    assert result.returncode == 0, result.stderr
    launch = json.loads(result.stdout)
    assert launch["pythonpath"].split(":")[0] == str(ROOT / "src")
    return launch


def test_single_device_wrappers_build_the_conformer_command(fake_python):
    train = launched(
        "run_standalone_train_gpu.sh",
        "cfg.yaml",
        "--device",
        "3",
        "--checkpoint",
        "auto",
        "--extra",
        "--batch_size",
        "48",
        python=fake_python,
    )
    assert train["cuda"] == "3"
    assert train["argv"] == [
        "-m",
        "conformer_vision",
        "train",
        "--config",
        "cfg.yaml",
        "--device_target",
        "cuda",
        "--device_id",
        "0",
        "--device_num",
        "1",
        "--checkpoint",
        "auto",
        "--batch_size",
        "48",
    ]
    evaluate = launched("run_eval_gpu.sh", "cfg.yaml", "--extra", "--use_ema", "--output", "m.json", python=fake_python)
    assert evaluate["cuda"] == "0"
    assert evaluate["argv"] == [
        "-m",
        "conformer_vision",
        "eval",
        "--config",
        "cfg.yaml",
        "--device_target",
        "cuda",
        "--device_id",
        "0",
        "--use_ema",
        "--output",
        "m.json",
    ]
    infer = launched(
        "run_infer_gpu.sh",
        "photos",
        "--checkpoint",
        "m.pt",
        "--arch",
        "conformer_tiny",
        "--device",
        "1",
        python=fake_python,
    )
    assert infer["cuda"] == "1"
    assert infer["argv"] == [
        "-m",
        "conformer_vision",
        "predict",
        "photos",
        "--checkpoint",
        "m.pt",
        "--output",
        "predictions.json",
        "--device",
        "cuda",
        "--arch",
        "conformer_tiny",
    ]
    assert launched("run_eval_onnx.sh", "data/val", python=fake_python)["argv"] == [
        "-m",
        "conformer_vision",
        "eval-onnx",
        "data/val",
        "--onnx_path",
        "conformer_tiny_patch16.onnx",
    ]
    assert launched(
        "run_infer_onnx.sh", "photos", "--onnx_path", "m.onnx", "--extra", "--topk", "5", python=fake_python
    )["argv"] == [
        "-m",
        "conformer_vision",
        "predict",
        "photos",
        "--checkpoint",
        "m.onnx",
        "--output",
        "predictions.json",
        "--topk",
        "5",
    ]


def test_distributed_wrapper_starts_one_process_per_listed_gpu(fake_python):
    run = launched(
        "run_distribute_train_gpu.sh", "cfg.yaml", "--device_ids", "0,2", "--extra", "--epochs", "3", python=fake_python
    )
    assert run["cuda"] == "0,2"
    assert run["argv"] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "conformer_vision",
        "train",
        "--config",
        "cfg.yaml",
        "--device_target",
        "cuda",
        "--device_num",
        "2",
        "--epochs",
        "3",
    ]
    assert (
        launched("run_distribute_train_gpu.sh", "cfg.yaml", "--num_devices", "4", python=fake_python)["cuda"]
        == "0,1,2,3"
    )
    bad = wrapper(
        "run_distribute_train_gpu.sh", "cfg.yaml", "--num_devices", "3", "--device_ids", "0,1", python=fake_python
    )
    assert bad.returncode == 2 and "--device_ids 0,1 does not list 3 devices" in bad.stderr
    if shutil.which("nvidia-smi") is None:
        none = wrapper("run_distribute_train_gpu.sh", "cfg.yaml", python=fake_python)
        assert none.returncode == 2 and "no GPU found: pass --num_devices N" in none.stderr


@pytest.mark.parametrize(
    "name",
    [
        "run_standalone_train_gpu.sh",
        "run_eval_gpu.sh",
        "run_eval_onnx.sh",
        "run_infer_gpu.sh",
        "run_infer_onnx.sh",
        "run_distribute_train_gpu.sh",
    ],
)
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
    result = wrapper(
        "run_infer_onnx.sh",
        str(photos),
        "--onnx_path",
        str(onnx_path),
        "--output",
        "out.json",
        "--extra",
        "--topk",
        "2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = json.loads((tmp_path / "out.json").read_text())
    assert len(predictions) == len(list(photos.iterdir())) > 0


# ---------------------------------------------------------------- setup.sh, test.sh, quickstart.sh

# Stand-ins, each logging its call as one JSON line to $FAKE_LOG. A base interpreter answers the
# identity query with its own name, has venv/ensurepip only when $FAKE_ENSUREPIP exists, and makes a
# "virtual environment" whose bin/python logs and succeeds (pip installs nothing).
FAKE_BASE = """#!{python}
import json, os, shutil, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([name, *args]) + "\\n")
if args[0] == "-c" and "ensurepip" in args[1]:
    sys.exit(0 if os.path.exists(os.environ["FAKE_ENSUREPIP"]) else 1)
if args[0] == "-c":  # which interpreter this really is
    print(f"/opt/{{name}} 3.11.9")
elif args[:2] == ["-m", "venv"]:
    venv = args[-1]
    if "--clear" in args:
        shutil.rmtree(venv)
    os.makedirs(os.path.join(venv, "bin"))
    shutil.copy(os.environ["FAKE_VENV_PYTHON"], os.path.join(venv, "bin", "python"))
"""
FAKE_VENV_PYTHON = """#!{python}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["venv-python", *sys.argv[1:]]) + "\\n")
"""
FAKE_APT = """#!/bin/sh
echo "[\\"apt-get\\", \\"$*\\"]" >> "$FAKE_LOG"
case "$*" in *python3-venv*) touch "$FAKE_ENSUREPIP";; esac
"""
FAKE_DPKG = """#!/bin/sh
case "$*" in
  *dataset-fashion-mnist*) [ -z "$FAKE_NO_DATASET" ];;
  *chromium*) [ -z "$FAKE_NO_CHROMIUM" ];;
esac
"""


class Machine:
    """A stand-in machine for setup.sh: base interpreters python-a and python-b, apt-get, dpkg."""

    def __init__(self, root: Path) -> None:
        self.bin, self.venv, self.log = root / "bin", root / "project" / ".venv", root / "calls.jsonl"
        self.bin.mkdir()
        self.venv.parent.mkdir()
        self.ensurepip = root / "ensurepip-installed"
        self.ensurepip.touch()
        scripts = {
            "python-a": FAKE_BASE,
            "python-b": FAKE_BASE,
            "venv-python": FAKE_VENV_PYTHON,
            "apt-get": FAKE_APT,
            "dpkg": FAKE_DPKG,
        }
        for name, text in scripts.items():
            (self.bin / name).write_text(text.format(python=sys.executable))
            (self.bin / name).chmod(0o755)

    def run(self, script: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        """``bash scripts/SCRIPT ARGS``; its result and the calls of the stand-ins."""
        self.log.write_text("")
        base = {
            k: v for k, v in os.environ.items() if k not in ("PYTHON", "VENV", "FAKE_NO_DATASET", "FAKE_NO_CHROMIUM")
        }
        env = {
            **base,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "VENV": str(self.venv),
            "FAKE_LOG": str(self.log),
            "FAKE_ENSUREPIP": str(self.ensurepip),
            "FAKE_VENV_PYTHON": str(self.bin / "venv-python"),
            **env,
        }
        result = subprocess.run(
            ["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=120
        )
        return result, [json.loads(line) for line in self.log.read_text().splitlines()]


def installs(calls: list[list[str]]) -> list[list[str]]:
    return [c[4:] for c in calls if c[:4] == ["venv-python", "-m", "pip", "install"]]


PINNED = ["-q", "--disable-pip-version-check", "torch==2.14.1", "torchvision==0.29.1"]
EDITABLE = ["-q", "--disable-pip-version-check", "-e", ".[test]"]


def test_setup_makes_the_venv_installs_into_it_once_and_test_sh_runs_its_python(tmp_path):
    machine = Machine(tmp_path)
    first, calls = machine.run("setup.sh", PYTHON="python-a")
    assert first.returncode == 0, first.stderr
    assert ["python-a", "-m", "venv", str(machine.venv)] in calls
    assert installs(calls) == [PINNED, EDITABLE]
    assert not [c for c in calls if c[0] == "apt-get"]  # python has venv, the dataset is installed
    assert f"installed in {machine.venv}; use it with: . {machine.venv}/bin/activate" in first.stdout
    again, calls = machine.run("setup.sh", PYTHON="python-a")  # everything there: nothing made or installed
    assert again.returncode == 0 and "already installed" in again.stdout
    assert not installs(calls) and not [c for c in calls if "venv" in c[1:3]]
    tests, calls = machine.run("test.sh", "-k", "config")  # README's test command: the venv's pytest
    assert tests.returncode == 0, tests.stderr
    assert calls[-1] == ["venv-python", "-m", "pytest", "tests", "-k", "config"] and not installs(calls)


def test_setup_makes_its_venv_anew_for_another_interpreter_or_when_it_no_longer_runs(tmp_path):
    machine = Machine(tmp_path)
    assert machine.run("setup.sh", PYTHON="python-a")[0].returncode == 0
    other, calls = machine.run("setup.sh", PYTHON="python-b")
    assert other.returncode == 0, other.stderr
    assert "was made from /opt/python-a 3.11.9, PYTHON=python-b is /opt/python-b 3.11.9: making it anew" in other.stdout
    assert ["python-b", "-m", "venv", "--clear", str(machine.venv)] in calls and installs(calls) == [PINNED, EDITABLE]
    (machine.venv / "bin" / "python").write_text("#!/bin/sh\nexit 127\n")  # its interpreter is gone
    healed, calls = machine.run("setup.sh", PYTHON="python-a")
    assert healed.returncode == 0, healed.stderr
    assert "no longer runs" in healed.stdout and ["python-a", "-m", "venv", "--clear", str(machine.venv)] in calls


def test_setup_leaves_a_broken_venv_it_did_not_make_alone(tmp_path):
    machine = Machine(tmp_path)
    (machine.venv / "bin").mkdir(parents=True)
    (machine.venv / "bin" / "python").write_text("#!/bin/sh\nexit 127\n")
    (machine.venv / "notes.txt").write_text("mine")
    result, calls = machine.run("setup.sh", PYTHON="python-a")
    assert result.returncode == 2
    assert (
        f"{machine.venv} exists but its python does not run, and this script did not make it; remove it"
        in result.stderr
    )
    assert (machine.venv / "notes.txt").read_text() == "mine" and not [c for c in calls if c[0] == "python-a"]


def test_setup_installs_python3_venv_the_dataset_and_chromium_with_apt_where_missing(tmp_path):
    machine = Machine(tmp_path)
    machine.ensurepip.unlink()  # Debian's python without python3-venv
    result, calls = machine.run("setup.sh", PYTHON="python-a", FAKE_NO_DATASET="1", FAKE_NO_CHROMIUM="1")
    assert result.returncode == 0, result.stderr
    apt = [c[1] for c in calls if c[0] == "apt-get"]
    assert apt == [
        "update -qq",
        "install -y -qq dataset-fashion-mnist",
        "install -y -qq chromium",
        "install -y -qq python3-venv",
    ]
    assert "cannot make virtual environments (no venv/ensurepip): installing python3-venv" in result.stdout
    assert ["python-a", "-m", "venv", str(machine.venv)] in calls and installs(calls) == [PINNED, EDITABLE]


@pytest.mark.parametrize("cores, threads, workers", [(1, 1, 1), (2, 1, 1), (4, 3, 1), (8, 6, 2), (16, 12, 4)])
def test_cpu_split_keeps_the_2_core_split_and_uses_bigger_cpus(tmp_path, cores, threads, workers):
    nproc = tmp_path / "nproc"  # the core count this machine would report
    nproc.write_text(f"#!/bin/sh\necho {cores}\n")
    nproc.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}  # not a core count
    out = subprocess.run(
        ["bash", "-c", f"source {SCRIPTS / 'wrapper_lib.sh'}; cpu_split; cpu_split {cores}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split("\n")[:2] == [f"{threads} {workers}"] * 2


def test_quickstart_runs_the_venv_python_with_threads_and_workers_from_the_core_count(tmp_path):
    machine = Machine(tmp_path)
    (machine.venv / "bin").mkdir(parents=True)
    venv_python = machine.venv / "bin" / "python"  # logs its environment's thread count, and ends training early
    venv_python.write_text(f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([os.environ.get("OMP_NUM_THREADS"), *sys.argv[1:]]) + "\\n")
sys.exit(3 if "train" in sys.argv else 0)
""")
    venv_python.chmod(0o755)
    (machine.bin / "nproc").write_text("#!/bin/sh\necho 16\n")
    (machine.bin / "nproc").chmod(0o755)
    env = {"SKIP_SETUP": "1", "OMP_NUM_THREADS": ""}
    result, calls = machine.run("quickstart.sh", "--epochs", "2", **env)
    assert result.returncode == 3  # the script stops where its training stopped
    assert "12 compute thread(s), 4 data-loading worker(s)" in result.stdout
    prepare, train = calls
    assert prepare[:4] == ["12", "-m", "conformer_vision", "prepare"]
    assert train == [
        "12",
        "-m",
        "conformer_vision",
        "train",
        "--config",
        "configs/quickstart_fashion_mnist.yaml",
        "--checkpoint",
        "auto",
        "--num_parallel_workers",
        "4",
        "--epochs",
        "2",
    ]
    _, calls = machine.run("quickstart.sh", SKIP_SETUP="1", OMP_NUM_THREADS="3")  # the user's setting wins
    assert calls[-1][0] == "3"
