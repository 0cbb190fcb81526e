"""Checkpoint files: atomic writes, rotation (keep / best / timed), resumable discovery, rebuild."""

from __future__ import annotations

import errno
import time

import pytest
import torch

from conformer_vision.checkpoint import CheckpointManager, build_checkpoint, find_resumable, load_model
from conformer_vision.errors import CheckpointError
from conformer_vision.models import create_model
from conformer_vision.serialization import atomic_save, read_checkpoint


@pytest.fixture(scope="module")
def ckpt() -> dict:
    model = create_model("conformer_mini_test", num_classes=3)
    return build_checkpoint(model, class_names=["a", "b", "c"], train_state={"epoch": 0, "step": 1})


def test_keep_newest(tmp_path, ckpt):
    mgr = CheckpointManager(tmp_path / "ckpt", tmp_path / "best", keep=2)
    for step in (10, 20, 30):
        mgr.save_latest(ckpt, epoch=step // 10, step=step)
    assert [p.name for p in mgr.latest_files()] == ["conformer_e0002_s00000020.pt", "conformer_e0003_s00000030.pt"]


def test_keep_best(tmp_path, ckpt):
    mgr = CheckpointManager(tmp_path / "ckpt", tmp_path / "best", best_keep=2)
    saved = [mgr.save_best(ckpt, epoch=e, top1=acc) for e, acc in enumerate([0.5, 0.7, 0.6, 0.4])]
    assert [s is not None for s in saved] == [True, True, True, False]
    assert [acc for acc, _ in mgr.best_files()] == [0.7, 0.6]


def test_partial_writes_of_this_run_are_removed_and_nothing_else(tmp_path, ckpt):
    mgr = CheckpointManager(tmp_path / "ckpt", tmp_path / "best", prefix="tiny_0")
    mgr.save_latest(ckpt, epoch=1, step=10)
    partial = [
        tmp_path / "ckpt" / ".tiny_0_e0001_s00000020.pt.ab12cd.tmp",
        tmp_path / "best" / ".tiny_0_best_e0001_top1_0.5000.pt.x.tmp",
    ]
    others = [tmp_path / "ckpt" / ".other_0_e0001_s00000020.pt.ab12cd.tmp", tmp_path / "ckpt" / "notes.tmp"]
    for path in partial + others:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    assert sorted(mgr.remove_partial_writes()) == sorted(partial)
    assert not any(p.exists() for p in partial) and all(p.exists() for p in others)
    assert [p.name for p in mgr.latest_files()] == ["tiny_0_e0001_s00000010.pt"]
    assert (
        CheckpointManager(tmp_path / "ckpt", tmp_path / "best", prefix="other_0", enabled=False).remove_partial_writes()
        == []
    )
    assert others[0].exists()  # a disabled manager (not rank 0) touches nothing


def test_due_by_steps_and_seconds(tmp_path, ckpt):
    by_steps = CheckpointManager(tmp_path / "a", tmp_path / "b", every_steps=5)
    assert not by_steps.due(4) and by_steps.due(5)
    by_steps.save_latest(ckpt, 0, 5)
    assert not by_steps.due(9) and by_steps.due(10)
    by_time = CheckpointManager(tmp_path / "c", tmp_path / "d", every_seconds=0.05)
    assert not by_time.due(1)
    time.sleep(0.06)
    assert by_time.due(1)
    assert not CheckpointManager(tmp_path / "e", tmp_path / "f").due(10**6)


def test_atomic_save_on_full_disk_keeps_old_file(tmp_path, monkeypatch, ckpt):
    path = tmp_path / "c.pt"
    atomic_save({"v": torch.ones(1)}, path)

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(CheckpointError, match=f"could not write checkpoint {path}.*No space left"):
        atomic_save(ckpt, path)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["v"], torch.ones(1))


def test_find_resumable_skips_truncated_newest(tmp_path, ckpt, caplog):
    mgr = CheckpointManager(tmp_path / "ckpt", tmp_path / "best")
    good = mgr.save_latest(ckpt, 1, 10)
    bad = mgr.save_latest(ckpt, 2, 20)
    bad.write_bytes(bad.read_bytes()[:100])
    found = find_resumable(mgr.latest_files())
    assert found is not None and found[0] == good
    assert "skipping unreadable checkpoint" in caplog.text


@pytest.mark.slow
def test_load_model_rebuilds_from_the_file_alone(tmp_path, ckpt):
    path = atomic_save(ckpt, tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.arch == "conformer_mini_test" and loaded.class_names == ["a", "b", "c"]
    assert not loaded.model.training
    foreign = tmp_path / "sd.pth"
    torch.save(ckpt["model"], foreign)
    with pytest.raises(CheckpointError, match="pass --arch"):
        load_model(foreign)
    assert load_model(foreign, arch="conformer_mini_test").model.num_classes == 3


def test_load_model_reads_the_description_as_create_model_does(tmp_path, ckpt, caplog):
    # A field this version does not know: a clear error naming the file, not a TypeError traceback.
    newer = atomic_save({**ckpt, "model_args": {**ckpt["model_args"], "future_option": 1}}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer.pt.*future_option.*newer conformer-vision"):
        load_model(newer)
    # Overriding the numerics the model was trained with is used, and said.
    path = atomic_save(ckpt, tmp_path / "m.pt")
    with caplog.at_level("WARNING"):
        loaded = load_model(path, approximate_gelu=True)
    assert loaded.model.args.approximate_gelu
    assert "approximate_gelu=False; using approximate_gelu=True" in caplog.text
