"""Distributed training on CPU: the gloo synchronised BatchNorm, and a 2-process torchrun run that
matches a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conformer_vision.checkpoint import read_checkpoint
from conformer_vision.distributed import GlooSyncBatchNorm, convert_sync_batchnorm
from conformer_vision.models import create_model
from conformer_vision.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_config, write_dataset  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def test_sync_batchnorm_in_one_process_is_batchnorm() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 3, dtype=torch.float64) * 3 + 40  # a large mean: one-pass formulas would lose digits
    dy = torch.randn_like(x)
    ref = torch.nn.BatchNorm2d(5, momentum=0.3).double()
    ref.weight.data.uniform_(0.5, 1.5)
    ref.bias.data.uniform_(-1, 1)
    sync = GlooSyncBatchNorm(5, momentum=0.3).double()
    sync.load_state_dict(ref.state_dict())
    outs = []
    for bn in (ref, sync):
        xi = x.clone().requires_grad_()
        y = bn(xi)
        y.backward(dy)
        outs.append((y, xi.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert sync.num_batches_tracked == 1
    sync.eval()
    ref.eval()
    torch.testing.assert_close(sync(x), ref(x))


def test_convert_keeps_the_state_dict() -> None:
    model = create_model("conformer_mini_test", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model.bn1, GlooSyncBatchNorm) and isinstance(
        model.conv_trans_12.expand_block.bn, GlooSyncBatchNorm
    )
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def losses(run_dir: Path) -> list[float]:
    return [
        json.loads(line)["loss"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """torchrun (gloo, 2 x batch 8, SyncBN) vs one process (batch 16): the same samples per step
    (DistributedSampler interleaves one shuffled order), the same statistics, averaged gradients.
    The config sets no device_num: the run follows torchrun's 2 processes, and rank 0 alone prints
    the closing line."""
    torch.set_num_threads(1)
    data = write_dataset(tmp_path / "data", classes=4, train=8, val=4)
    recipe = dict(
        num_classes=4,
        epochs=1,
        batch_size=16,
        sync_bn=True,
        optimizer="sgd",
        base_lr=0.01,
        print_loss_every=1,
        ckpt_save_every_step=0,
    )
    one = read_checkpoint(train(make_config(data, tmp_path / "one", **recipe)).last_checkpoint)
    two_cfg = make_config(data, tmp_path / "two", **{**recipe, "batch_size": 8})
    assert two_cfg.device_num is None
    (tmp_path / "two.yaml").write_text(two_cfg.to_yaml())
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "conformer_vision",
            "train",
            "--config",
            str(tmp_path / "two.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("training finished: 1 epochs, 2 steps") == 1, proc.stdout
    two = read_checkpoint(sorted((tmp_path / "two" / "checkpoints").glob("*.pt"))[-1])
    assert two["train_state"]["world_size"] == 2 and two["train_state"]["step"] == one["train_state"]["step"] == 2
    assert losses(tmp_path / "two") == __import__("pytest").approx(losses(tmp_path / "one"), rel=1e-5)
    torch.manual_seed(0)
    init = create_model("conformer_mini_test", num_classes=4).state_dict()
    params = [k for k in init if init[k].is_floating_point() and "running" not in k]
    gap = sum(((one["model"][k] - two["model"][k]).double() ** 2).sum() for k in params).sqrt()
    update = sum(((one["model"][k] - init[k]).double() ** 2).sum() for k in params).sqrt()
    print(
        f"1 vs 2 processes: losses {losses(tmp_path / 'one')} vs {losses(tmp_path / 'two')}, "
        f"weight gap {float(gap / update):.2e} of the update"
    )
    assert update > 0 and gap / update < 1e-2, float(gap / update)
    for key in ("Loss", "Top1-Acc", "conv_top1", "trans_loss", "num_samples"):  # val metrics all-reduced over ranks
        assert abs(one["metrics"][key] - two["metrics"][key]) < 1e-3 * max(1.0, abs(one["metrics"][key])), key
