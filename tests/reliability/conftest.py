"""Helpers of the reliability suite (docs/reliability.md): tiny real ImageFolders, the ``conformer``
command run as a subprocess (``python -m conformer_vision``, ``PYTHONPATH=src``) or in-process, and
one uninterrupted reference training run that the fault tests compare against.

Every training run here is ``conformer_mini_test`` on 32x32 images, batch 8, 2 epochs of 3 steps,
a checkpoint after every step, no loader workers (exact resume), one CPU thread per process.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

# The recipe of every training run here: 24 train images / batch 8 = 3 steps per epoch, 2 epochs.
# Augmentation stays on (RandAugment, mixup/cutmix, random erasing, drop path) and an EMA is kept:
# exact resume must restore all of their random streams and state.
TRAIN_OPTIONS: dict[str, Any] = {
    "arch": "conformer_mini_test",
    "num_classes": 2,
    "image_size": 32,
    "batch_size": 8,
    "epochs": 2,
    "num_parallel_workers": 0,
    "device_target": "cpu",
    "warmup_length": 0,
    "print_loss_every": 1,
    "ckpt_save_every_step": 1,
    "ckpt_save_every_seconds": 0,
    "train_dir": "train",
    "val_dir": "val",
    "with_ema": "true",
    "ema_decay": 0.9,
}
STEPS_PER_EPOCH = 3
TOTAL_STEPS = 6


@dataclass
class Result:
    """Exit code and output of one ``conformer`` invocation."""

    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def assert_user_error(result: Result, *fragments: str) -> None:
    """The specification's "clear error": exit code 2, no traceback, each fragment in stderr."""
    assert result.rc == 2, f"exit code {result.rc}, expected 2\n{result.output[-3000:]}"
    assert "Traceback" not in result.output, result.output[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr[-3000:]}"


def interruptible() -> None:
    """``preexec_fn`` of a child that receives Ctrl-C: SIGINT's default disposition, as in a
    terminal. A child inherits an ignored SIGINT across exec (pytest-xdist's workers ignore it),
    and a process that was started with SIGINT ignored rightly keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child process: src on the path, one thread."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_python(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    preexec_fn: Callable[[], None] | None = None,
) -> Result:
    """``python ARGS`` in the repository root; returns its exit code and output."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def conformer(
    *args: Any, env: dict[str, str] | None = None, timeout: float = 180, preexec_fn: Callable[[], None] | None = None
) -> Result:
    """``python -m conformer_vision ARGS`` as a subprocess."""
    return run_python(["-m", "conformer_vision", *args], env=env, timeout=timeout, preexec_fn=preexec_fn)


def conformer_with_faults(*args: Any, timeout: float = 180, **faults: Any) -> Result:
    """``conformer ARGS`` as a subprocess that provokes ``faults`` in itself (``tests/fault_entry.py``:
    ``kill_at_step=N``, ``sigterm_at_step=N``, ``nan_at_step="N:COUNT"``)."""
    options = [t for name, value in faults.items() for t in (f"--{name}", value)]
    return run_python([REPO / "tests" / "fault_entry.py", *options, "--", *args], timeout=timeout)


def conformer_inprocess(*args: Any) -> Result:
    """``conformer ARGS`` through ``conformer_vision.cli.main`` in this process (for fast error
    paths: the same parser, handler and error printing as the command, without a torch start-up)."""
    from conformer_vision.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return Result(rc, out.getvalue(), err.getvalue())


def train_args(data: Path, run: Path, **overrides: Any) -> list[str]:
    """``train`` plus every option of TRAIN_OPTIONS (overridden) for data ``data`` and run directory
    ``run`` (checkpoints in run/checkpoints, best in run/best, TensorBoard in run/summary)."""
    options = {
        **TRAIN_OPTIONS,
        "data_url": data,
        "ckpt_root_dir": run / "checkpoints",
        "best_ckpt_root_dir": run / "best",
        "summary_root_dir": run / "summary",
        **overrides,
    }
    return ["train", *[str(t) for k, v in options.items() for t in (f"--{k}", v)]]


def checkpoints(run: Path) -> list[Path]:
    """The rotating checkpoints of a run directory, oldest first."""
    return sorted((run / "checkpoints").glob("*_e*_s*.pt"))


def step_of(path: Path) -> int:
    """The global step in a checkpoint's file name (``..._e0001_s00000004.pt`` -> 4)."""
    return int(path.stem.rsplit("_s", 1)[1])


def load(path: Path) -> dict[str, Any]:
    from conformer_vision.serialization import read_checkpoint

    return read_checkpoint(path)


def assert_same_weights(a: dict[str, Any], b: dict[str, Any], keys: Iterable[str] = ("model",)) -> None:
    """Bit-for-bit equality of the state dicts under ``keys`` of two checkpoints."""
    for key in keys:
        sa, sb = a[key], b[key]
        assert sa.keys() == sb.keys()
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{key}: {len(different)} tensors differ, e.g. {different[:3]}"


def noise_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_image_folder(root: Path, classes: dict[str, int], seed: int = 0, size: int = 32) -> Path:
    """``root/<class>/<k>.png|jpg`` noise images (every third one a JPEG): {class: count}."""
    for ci, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            image = noise_image(seed * 1000 + ci * 100 + k, size)
            image.save(root / name / (f"{k:03d}.jpg" if k % 3 == 2 else f"{k:03d}.png"))
    return root


def copy_run(src: Path, dst: Path, only: Callable[[Path], bool] = lambda p: True) -> Path:
    """A copy of run directory ``src`` at ``dst`` (checkpoints filtered by ``only``)."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.endswith(".pt") and not only(Path(d) / n)])
    return dst


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-class ImageFolder: train 2 x 12 images (3 batches of 8), val 2 x 4."""
    root = tmp_path_factory.mktemp("data")
    make_image_folder(root / "train", {"cat": 12, "dog": 12}, seed=0)
    make_image_folder(root / "val", {"cat": 4, "dog": 4}, seed=1)
    return root


@pytest.fixture(scope="session")
def reference_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of one uninterrupted training run (6 steps, a checkpoint after each)."""
    run = tmp_path_factory.mktemp("reference")
    result = conformer(*train_args(dataset, run, checkpoint="auto"))
    assert result.rc == 0, result.output[-3000:]
    assert [step_of(p) for p in checkpoints(run)] == list(range(1, TOTAL_STEPS + 1))
    return run


def write_odd_images(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Readable images in the modes scenario 10 names: CMYK JPEG, 16-bit PNG, palette PNG with a
    transparent colour, greyscale, RGBA. Returns {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = noise_image(seed)
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)  # the full 16-bit range
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1)))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    images = {
        "cmyk": (rgb.convert("CMYK"), "cmyk.jpg", {"quality": 95}),
        "png16": (Image.fromarray(ramp), "png16.png", {}),
        "palette": (rgb.quantize(16), "palette.png", {"transparency": 0}),
        "grey": (rgb.convert("L"), "grey.png", {}),
        "rgba": (rgba, "rgba.png", {}),
    }
    out = {}
    for kind, (image, name, options) in images.items():
        image.save(folder / name, **options)
        out[kind] = folder / name
    with Image.open(out["png16"]) as im:
        assert im.mode.startswith("I;16") or im.mode == "I", im.mode  # really 16-bit on disk
    return out


def write_bad_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Scenario 8 and 9's entries: a truncated JPEG, a zero-byte file, a text file named .jpg, a
    directory named x.jpg and a decompression bomb (a real 9500 x 9500 PNG of 11 kB, over Pillow's
    89.5 Mpixel limit). Returns {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    noise_image(seed, 64).save(buffer, "JPEG", quality=95)
    out = {
        kind: folder / name
        for kind, name in (
            ("truncated", "truncated.jpg"),
            ("empty", "empty.jpg"),
            ("text", "notes.jpg"),
            ("directory", "x.jpg"),
            ("bomb", "bomb.png"),
        )
    }
    out["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out["empty"].write_bytes(b"")
    out["text"].write_text("not an image, just a file with a .jpg name\n")
    out["directory"].mkdir()
    Image.new("1", (9500, 9500)).save(out["bomb"])
    return out


@pytest.fixture(scope="session")
def onnx_model(reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run's final checkpoint exported by ``conformer export`` (ONNX, the tracing
    exporter: seconds instead of the torch.export-based one's minute on a busy CPU; tests/test_export.py
    covers that one). The command checks the file against PyTorch itself before keeping it."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = conformer_inprocess(
        "export", "--checkpoint", checkpoints(reference_run)[-1], "--output", path, "--exporter", "torchscript"
    )
    assert result.rc == 0 and path.exists(), result.output[-3000:]
    return path
