"""Real data: a few hundred steps on a Fashion-MNIST subset learn far above chance (10%)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformer_vision.config import load_config
from conformer_vision.data.fashion_mnist import DEFAULT_SOURCE_DIR, prepare_fashion_mnist
from conformer_vision.train import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEFAULT_SOURCE_DIR / "train-images-idx3-ubyte.gz").exists(),
        reason="Debian package dataset-fashion-mnist not installed (bash scripts/setup.sh installs it)",
    ),
]


def test_fashion_mnist_learns(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    prepared = prepare_fashion_mnist(tmp_path / "fm", image_size=32, limit_per_class=100, num_workers=1)
    assert (prepared["num_train"], prepared["num_val"]) == (1000, 1000)
    cfg = load_config(
        "configs/quickstart_fashion_mnist.yaml",
        {
            "data_url": str(tmp_path / "fm"),
            "val_num_samples": 500,
            "epochs": 6,
            "batch_size": 32,
            "eval_every": 6,
            "num_parallel_workers": 0,
            "ckpt_root_dir": str(tmp_path / "run" / "checkpoints"),
            "best_ckpt_root_dir": str(tmp_path / "run" / "best"),
            "summary_root_dir": str(tmp_path / "run" / "summary"),
            "ckpt_save_every_seconds": 0,
            "device_target": "cpu",
            "with_ema": False,
            "collect_input_data": False,
        },
    )
    result = train(cfg)
    assert result.step == 6 * 31  # 186 steps of 32 images
    print(f"Fashion-MNIST subset: val top-1 {result.metrics['Top1-Acc']:.3f} after {result.step} steps")
    assert result.metrics["Top1-Acc"] > 0.6
