"""Scenarios 18-20, 25, 26, 28 (train), 32 and 33 of docs/reliability.md: a training run never
deletes or overwrites what it did not write, checks everything before it replaces a run, refuses
impossible output folders in one line, follows torchrun, and tells the truth about warm-up,
finished runs, epochs and best checkpoints.

Each scenario runs the real ``conformer train`` (a subprocess where the whole command matters, the
same CLI in-process where only an error path or a log line is checked) on the suite's tiny 32 px
runs, next to copies of the session's reference run (run directory ``run/``: ``checkpoints``,
``best``, ``summary``, and the manifest ``.conformer-run.json``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conformer_vision.config import load_config
from conformer_vision.models import create_model
from conformer_vision.optim import build_scheduler
from conformer_vision.rundir import LOCK_NAME, MANIFEST_NAME, RunManifest

from .conftest import (
    REPO,
    TRAIN_OPTIONS,
    Result,
    assert_user_error,
    checkpoints,
    child_env,
    conformer,
    conformer_inprocess,
    copy_run,
    load,
    step_of,
    train_args,
)

pytestmark = pytest.mark.slow  # subprocess trainings (docs/architecture.md: test tiers)


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every file under ``folder``: equal snapshots = nothing written or removed."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def conformer_in(cwd: Path, *args: object) -> Result:
    """``python -m conformer_vision ARGS`` as a subprocess in working directory ``cwd``."""
    proc = subprocess.run(
        [sys.executable, "-m", "conformer_vision", *map(str, args)],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------------------------
# 18-20: nothing another run or the user made is ever removed


def test_18_auto_never_deletes_another_runs_checkpoints(dataset, reference_run, tmp_path):
    """``--checkpoint auto`` for another model_postfix or arch in a folder that holds a run: one line
    naming the run there and how to continue it; every file stays as it was."""
    run = copy_run(reference_run, tmp_path / "run")
    before = snapshot(run)
    holds = f"{run} holds the run conformer_mini_test_0 ("
    result = conformer(*train_args(dataset, run, model_postfix=1, checkpoint="auto"))
    assert_user_error(
        result,
        holds,
        "not a run of conformer_mini_test_1",
        "never deletes anything",
        "--arch conformer_mini_test --model_postfix 0",
    )
    assert len(result.stderr.strip().splitlines()) == 1
    result = conformer_inprocess(*train_args(dataset, run, arch="conformer_tiny_patch16", checkpoint="auto"))
    assert_user_error(result, holds, "not a run of conformer_tiny_patch16_0")
    assert snapshot(run) == before


def test_18_a_new_run_beside_checkpoints_it_did_not_write_leaves_them_alone(dataset, reference_run, tmp_path):
    """Checkpoints of another postfix in the folders, without a run of them there (copied in, or
    written before run manifests): a run of another postfix starts beside them, and its rotation
    (keep 1) removes only its own files."""
    run = tmp_path / "run"
    for folder in ("checkpoints", "best"):
        shutil.copytree(reference_run / folder, run / folder)
    before = snapshot(run)
    result = conformer_inprocess(
        *train_args(dataset, run, model_postfix=1, checkpoint="auto", ckpt_keep_num=1, epochs=1)
    )
    assert result.rc == 0, result.output[-3000:]
    assert {p: snapshot(run)[p] for p in before} == before  # every file of the other postfix, untouched
    assert [p.name for p in checkpoints(run) if "_1_" in p.name] == ["conformer_mini_test_1_e0001_s00000003.pt"]
    assert RunManifest.read(run).prefix == "conformer_mini_test_1"


@pytest.fixture
def tiny_state_dict(tmp_path: Path) -> Path:
    """Weights of another architecture (uninitialised values: only the shapes matter here)."""
    with torch.device("meta"):
        model = create_model("conformer_tiny_patch16", num_classes=2)
    path = tmp_path / "tiny.pth"
    torch.save(model.to_empty(device="cpu").state_dict(), path)
    return path


def test_19_overwrite_checks_everything_before_removing_the_previous_run(
    dataset, reference_run, tiny_state_dict, tmp_path, monkeypatch
):
    """``--overwrite true`` with a val class unknown to train, pretrained weights of another
    architecture, an impossible summary folder, or too little disk for one checkpoint: one error
    each, and the previous run is still all there."""
    run = copy_run(reference_run, tmp_path / "run")
    before = snapshot(run)
    extra_class = tmp_path / "data"
    shutil.copytree(dataset, extra_class)
    shutil.copytree(extra_class / "val" / "dog", extra_class / "val" / "cow")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    cases = {
        "val class unknown to train": (train_args(extra_class, run, overwrite="true"), "['cow']"),
        "pretrained of another arch": (
            train_args(dataset, run, overwrite="true", pretrained=tiny_state_dict),
            "the file seems to hold conformer_tiny_patch16",
        ),
        "summary folder below a file": (
            train_args(dataset, run, overwrite="true", summary_root_dir=blocker / "tb"),
            f"summary_root_dir {blocker / 'tb'} cannot be created: {blocker} is a file",
        ),
    }
    for name, (args, message) in cases.items():
        assert_user_error(conformer_inprocess(*args), message)
        assert snapshot(run) == before, name
    # A nearly full disk. The previous run's checkpoints count as free space in their own folder
    # (they are removed first), so the new best folder is the one without room.
    monkeypatch.setattr("conformer_vision.train.free_bytes", lambda path: 100_000)
    result = conformer_inprocess(*train_args(dataset, run, overwrite="true", best_ckpt_root_dir=run / "best2"))
    assert_user_error(
        result, f"best_ckpt_root_dir {run / 'best2'}: 0.1 MiB free, but one checkpoint of this run needs about"
    )
    assert snapshot(run) == before


def test_20_a_run_removes_only_files_it_wrote_never_the_users(dataset, tmp_path, monkeypatch):
    """A working directory holding the user's config.yaml, metrics.jsonl and notes, output folders
    given as relative names in it: the run's own config copy and metrics go to its checkpoint folder
    (the run directory), the user's files are never read as a run's, never overwritten, and
    ``--overwrite true`` removes the previous run's listed files only. A run directory that holds a
    user's config.yaml is refused rather than written over."""
    work = tmp_path / "work"
    work.mkdir()
    options = {
        **TRAIN_OPTIONS,
        "data_url": str(dataset),
        "epochs": 1,
        "ckpt_root_dir": "ckpt",
        "best_ckpt_root_dir": "best",
        "summary_root_dir": "tb",
        "ckpt_save_every_step": 0,
    }
    (work / "config.yaml").write_text(yaml.safe_dump(options))
    (work / "metrics.jsonl").write_text('{"my": "own measurements"}\n')
    (work / "notes.txt").write_text("my notes\n")
    users = {name: (work / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "notes.txt")}

    first = conformer_in(work, "train", "--config", "config.yaml")
    assert first.rc == 0, first.output[-3000:]
    assert f"run directory {work / 'ckpt'}: a new run" in first.stderr
    assert {name: (work / name).read_bytes() for name in users} == users
    assert load_config(work / "ckpt" / "config.yaml").ckpt_root_dir == "ckpt"  # the run's copy, in its folder
    old = RunManifest.read(work / "ckpt").existing()
    assert {p.parent.name for p in old} == {"ckpt", "best", "tb"} and work / "config.yaml" not in old

    monkeypatch.chdir(work)
    second = conformer_inprocess("train", "--config", "config.yaml", "--overwrite", "true", "--seed", "1")
    assert second.rc == 0, second.output[-3000:]
    assert {name: (work / name).read_bytes() for name in users} == users
    new = RunManifest.read(work / "ckpt").existing()
    assert [p for p in old if p.exists()] == [p for p in old if p in new]  # only names the new run wrote again
    assert not [p for p in old if "tfevents" in p.name and p.exists()]  # the previous run's events: removed
    assert {load(p)["config"]["seed"] for p in new if p.suffix == ".pt"} == {1}  # every checkpoint: the new run's

    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("my: project settings\n")
    result = conformer_inprocess(*train_args(dataset, project, ckpt_root_dir=project / "ck"))
    assert_user_error(result, f"{project / 'config.yaml'} was not written by this run", "a folder of its own")
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml"]


def test_20_a_second_process_on_the_same_run_is_refused(dataset, reference_run, tmp_path):
    """Another process holds the run directory's lock (a second terminal running the same command):
    the run is refused once its checks have passed, before it writes or removes anything."""
    run = copy_run(reference_run, tmp_path / "run")
    before = snapshot(run)
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = conformer_inprocess(*train_args(dataset, run, overwrite="true"))
    finally:
        os.close(fd)
    assert_user_error(result, f"another conformer train process is writing the run in {run}")
    unlocked = {p: s for p, s in snapshot(run).items() if p.name != LOCK_NAME}
    assert unlocked == {p: s for p, s in before.items() if p.name != LOCK_NAME}  # the lock file itself is empty


# ---------------------------------------------------------------------------------------------
# 25, 33: a run shorter than its warm-up; what the log and metrics.jsonl say


@pytest.fixture(scope="module")
def warmup_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One epoch with the specification's 2 warm-up epochs (3 steps)."""
    run = tmp_path_factory.mktemp("warmup") / "run"
    result = conformer(*train_args(dataset, run, epochs=1, warmup_length=2, warmup_lr=1e-5, base_lr=1e-3))
    assert result.rc == 0, result.output[-3000:]
    return run, result


def test_25_a_run_not_longer_than_its_warm_up_is_warm_up_throughout(warmup_run):
    run, result = warmup_run
    warning = [line for line in result.stderr.splitlines() if "warmup_length 2 is not shorter than epochs 1" in line]
    assert len(warning) == 1 and "the whole run is warm-up" in warning[0] and "ends at 0.00034 " in warning[0]
    lrs = [r["lr"] for r in metrics(run) if r["kind"] == "train"]
    assert lrs == pytest.approx([1e-5 + (1e-3 - 1e-5) * k / 6 for k in range(3)])  # linear over 2 x 3 steps
    assert "training finished: 1 epochs, 3 steps" in result.stdout


def test_33_startup_summary_and_one_epoch_numbering(dataset, warmup_run):
    """The start-up summary (once, before the first step) and epochs counted from 1 in the log, the
    checkpoint names and metrics.jsonl alike."""
    run, result = warmup_run
    err = result.stderr
    assert f"run directory {run}: a new run" in err and f"data {dataset}: " in err
    assert "train 24 images in 2 classes (cat, dog), val 8 images in 2 of them; 3 steps per epoch of 8 images" in err
    assert (
        "model conformer_mini_test: 259,016 parameters, random initial weights; 1 epochs, adamw with cosine_lr" in err
    )
    assert "device cpu: 1 process(es), 1 compute thread(s) and 0 loader worker(s) per process" in err
    assert err.index("run directory") < err.index("epoch 1 step 1:")
    assert {r["epoch"] for r in metrics(run)} == {1} and "epoch 1 step 3: eval" in err
    assert [p.name for p in checkpoints(run)][-1] == "conformer_mini_test_0_e0001_s00000003.pt"
    assert "new best checkpoint (epoch 1, top-1" in err


def test_33_a_best_checkpoint_that_is_not_the_best_is_not_called_the_best(dataset, reference_run, tmp_path, caplog):
    """The run resumed after epoch 1 already holds a better best checkpoint (top-1 0.9): epoch 2's
    checkpoint is kept among the 5 best and said to be number 2, not "the best"."""
    run = copy_run(
        reference_run,
        tmp_path / "run",
        only=lambda p: "best" in p.name and "_e0001_" in p.name or "best" not in p.name and step_of(p) <= 3,
    )
    (epoch1,) = (run / "best").glob("*.pt")
    better = epoch1.with_name("conformer_mini_test_0_best_e0001_top1_0.9000.pt")
    epoch1.rename(better)
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    manifest["files"] = [f.replace(epoch1.name, better.name) for f in manifest["files"]]
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="conformer_vision.train"):
        result = conformer_inprocess(*train_args(dataset, run, checkpoint="auto"))
    assert result.rc == 0, result.output[-3000:]
    assert "new best checkpoint" not in caplog.text
    assert (
        "epoch 2 (top-1 " in caplog.text
        and "kept as number 2 of the 5 best checkpoints (best top-1 0.9000)" in caplog.text
    )
    assert [r["epoch"] for r in metrics(run) if r["kind"] == "val"] == [1, 2]


# ---------------------------------------------------------------------------------------------
# 26: torchrun's process count is the truth


def test_26_device_num_follows_the_launcher_and_only_a_set_contradiction_is_an_error(dataset, tmp_path, monkeypatch):
    """Unset, device_num follows the launcher (the 2-process torchrun runs of
    test_training_faults.py::test_2_sigterm_to_one_rank_of_torchrun_stops_all_ranks_at_the_same_step
    and tests/test_distributed.py give none); a set value that contradicts it is one line."""
    assert load_config(REPO / "configs" / "quickstart_fashion_mnist.yaml").device_num is None
    result = conformer_inprocess(*train_args(dataset, tmp_path / "a", device_num=2))
    assert_user_error(result, "device_num is 2 but 1 was started (no torchrun)", "--device_num 1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it, checked before joining
    monkeypatch.setenv("RANK", "0")
    result = conformer_inprocess(*train_args(dataset, tmp_path / "b", device_num=3))
    assert_user_error(result, "device_num is 3 but torchrun started 2 (WORLD_SIZE)", "torchrun --nproc_per_node 3")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# 28: impossible output folders


def test_28_an_impossible_output_folder_is_one_line_before_any_work(tmp_path):
    """Every output folder option, on /proc and below a regular file: exit 2, one line naming the
    option, before the (missing) data is even looked at."""
    blocker = tmp_path / "settings.yaml"
    blocker.write_text("a: 1\n")
    missing_data = tmp_path / "no_data_here"
    for option in ("ckpt_root_dir", "best_ckpt_root_dir", "summary_root_dir"):
        for folder, reason in ((Path("/proc/ck"), "cannot be written"), (blocker / "ck", f"{blocker} is a file")):
            result = conformer_inprocess(*train_args(missing_data, tmp_path / "run", **{option: folder}))
            assert_user_error(result, f"{option} {folder}", reason)
    result = conformer(*train_args(missing_data, tmp_path / "run", ckpt_root_dir="/proc/ck"))
    assert_user_error(result, "ckpt_root_dir /proc/ck cannot be written")
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.yaml"]  # nothing created


# ---------------------------------------------------------------------------------------------
# 32: finished runs and longer runs


def test_32_resuming_a_finished_run_says_so_and_a_larger_epochs_stretches_the_schedule(
    dataset, reference_run, tmp_path
):
    run = copy_run(reference_run, tmp_path / "run")
    before = snapshot(run)
    result = conformer_inprocess(*train_args(dataset, run, checkpoint="auto"))
    assert result.rc == 0, result.output[-3000:]
    assert f"the run in {run} is already finished: 2 epochs, 6 steps done" in result.stdout
    assert "nothing to do" in result.stdout and "larger --epochs" in result.stdout
    assert snapshot(run) == before

    extended = conformer(*train_args(dataset, run, checkpoint="auto", epochs=3))
    assert extended.rc == 0, extended.output[-3000:]
    assert (
        "epochs changed from 2 to 3: the run is extended to 3 epochs and its cosine_lr schedule is recomputed"
        in extended.stderr
    )
    assert (
        "resuming at epoch 3, step 6" in extended.stderr and "training finished: 3 epochs, 9 steps" in extended.stdout
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)  # the reference's base_lr, min_lr
    schedule = build_scheduler(optimizer, "cosine_lr", epochs=3, steps_per_epoch=3, min_lr=1e-5)
    expected = []
    for step in range(6, 9):  # the learning rates of steps 7-9 on a 3-epoch cosine
        schedule.step_update(step)
        expected.append(optimizer.param_groups[0]["lr"])
    lrs = [r["lr"] for r in metrics(run) if r["kind"] == "train" and r["step"] > 6]
    assert lrs == pytest.approx(expected) and lrs[0] > 1e-4  # not stuck at min_lr
