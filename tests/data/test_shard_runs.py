"""Real runs on Fashion-MNIST shards: ``conformer prepare shards`` -> ``conformer train`` ->
``conformer eval``, in one process and under ``torchrun --nproc_per_node 2`` (gloo, CPU), and what
each process of a 2-process job reads (tests/data/dist_probe.py): one process indexes class folders,
the processes' training images never overlap, every val image is read once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conformer_vision.checkpoint import read_checkpoint
from conformer_vision.cli import main
from conformer_vision.config import load_config
from conformer_vision.data import load_rgb, prepare_fashion_mnist
from conformer_vision.data.index import scan_split
from conformer_vision.train import train

pytestmark = pytest.mark.slow  # real trainings, two of them under torchrun

SRC = Path(__file__).resolve().parents[2] / "src"
RUN = dict(
    arch="conformer_mini_test",
    num_classes=10,
    image_size=32,
    batch_size=8,
    epochs=1,
    warmup_length=0,
    device_target="cpu",
    num_parallel_workers=2,
    print_loss_every=5,
    ckpt_save_every_seconds=0,
    data_format="webdataset",
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(class folders, shards): 12 train and 12 val images per class; shards of 10 images."""
    root = tmp_path_factory.mktemp("fashion")
    prepare_fashion_mnist(root / "folders", limit_per_class=12)
    assert main(["prepare", "shards", str(root / "folders"), str(root / "shards"), "--shard_size", "10"]) == 0
    return root / "folders", root / "shards"


def run_config(data: Path, out: Path, **overrides: object):
    options = {
        **RUN,
        "data_url": str(data),
        "ckpt_root_dir": str(out / "checkpoints"),
        "best_ckpt_root_dir": str(out / "best"),
        "summary_root_dir": str(out / "summary"),
        **overrides,
    }
    return load_config(None, options)


def evaluate(checkpoint: Path, out: Path, *options: str) -> dict:
    """``conformer eval`` (in this process) -> its --output JSON."""
    args = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--device_target",
        "cpu",
        "--batch_size",
        "16",
        "--num_parallel_workers",
        "2",
        "--output",
        str(out),
        *options,
    ]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_prepare_train_and_evaluate_from_shards(fashion: tuple[Path, Path], tmp_path: Path) -> None:
    """The spec's training recipe (RandAugment, random erasing, mixup/cutmix) from shards for 15
    steps; eval of the checkpoint on the val shards gives exactly the metrics of eval on the val
    class folders (the same 120 images, each once)."""
    folders, shards = fashion
    result = train(run_config(shards, tmp_path / "run"))
    assert result.status == "completed" and result.step == 15  # 120 images / batch 8
    assert result.metrics["num_samples"] == 120
    on_shards = evaluate(
        result.last_checkpoint, tmp_path / "shards.json", "--data_format", "webdataset", "--data_url", str(shards)
    )
    on_folders = evaluate(
        result.last_checkpoint, tmp_path / "folders.json", "--data_url", str(folders), "--val_dir", "val"
    )
    assert on_shards["num_samples"] == on_folders["num_samples"] == 120
    for key in ("Loss", "Top1-Acc", "Top5-Acc", "conv_top1", "trans_loss"):
        assert on_shards[key] == pytest.approx(on_folders[key], abs=1e-6), key
    assert on_shards["per_class"] == on_folders["per_class"]
    assert on_shards["val_root"] == f"val shards of {shards}/shards.json"


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pixel_digest(path: str) -> int:
    """The digest dist_probe.py gives a decoded image."""
    return int.from_bytes(hashlib.sha256(np.asarray(load_rgb(path)).tobytes()).digest()[:8], "little") >> 1


def test_two_processes_index_once_and_read_disjoint_shards(fashion: tuple[Path, Path], tmp_path: Path) -> None:
    folders, shards = fashion
    broken = tmp_path / "broken"
    (broken / "train" / "cat").mkdir(parents=True)
    (broken / "train" / "cat" / "0.jpg").write_bytes(b"x")
    (broken / "train" / "empty").mkdir()
    (broken / "val").mkdir()
    proc = torchrun(str(Path(__file__).parent / "dist_probe.py"), str(folders), str(broken), str(shards), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Class folders: rank 0 lists the directories (2 splits x (root + 10 classes), then the broken
    # train root, cat and empty), rank 1 none, and both hold the same index; rank 0's scanning error
    # reaches rank 1 instead of a hang.
    assert ranks[0]["listed"] == 2 * (1 + 10) + 3 and ranks[1]["listed"] == 0
    assert ranks[0]["train"] == ranks[1]["train"] and ranks[0]["train_labels"] == ranks[1]["train_labels"]
    assert ranks[0]["val"] == ranks[1]["val"] and len(ranks[1]["train"]) == 120
    assert all("class folder" in r["broken"] and "empty contains no images" in r["broken"] for r in ranks)
    # Shards: 12 train shards over 2 processes x 2 workers; each process trains on 7 batches of 8
    # from its own shards, images of the other process never; val images each once over both.
    digests = {pixel_digest(p): p for p in ranks[0]["train"]}
    assert len(digests) == 120  # every training image has its own pixels
    seen = [set(r["train_digests"]) for r in ranks]
    assert all(r["steps_per_epoch"] == 7 and len(r["train_digests"]) == 56 for r in ranks)
    assert seen[0] <= set(digests) and seen[1] <= set(digests) and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) >= 100
    val = scan_split(folders / "val", ranks[0]["classes"])
    assert sorted(ranks[0]["val_digests"] + ranks[1]["val_digests"]) == sorted(
        pixel_digest(val.path(i)) for i in range(120)
    )


def test_torchrun_trains_from_shards(fashion: tuple[Path, Path], tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m conformer_vision train`` with ``data_format: webdataset``:
    7 steps of 2 x 8 images, validation over both processes counts the 120 val images once."""
    _, shards = fashion
    # No loader workers here (dist_probe.py reads with 2 per process): 2 cores run both processes.
    (tmp_path / "run.yaml").write_text(run_config(shards, tmp_path / "run", num_parallel_workers=0).to_yaml())
    proc = torchrun("-m", "conformer_vision", "train", "--config", str(tmp_path / "run.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("training finished: 1 epochs, 7 steps") == 1, proc.stdout[-2000:]
    checkpoint = read_checkpoint(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1])
    assert checkpoint["train_state"]["world_size"] == 2 and checkpoint["metrics"]["num_samples"] == 120
