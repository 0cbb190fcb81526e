"""Scenarios 1, 2, 13 and 15 of docs/reliability.md, provoked in real ``conformer train`` processes:
SIGKILL and SIGTERM (one process and a 2-process torchrun) with exact resume, NaN losses, and an
output directory that already holds a run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conformer_vision.serialization import read_checkpoint

from .conftest import (
    REPO,
    TOTAL_STEPS,
    assert_same_weights,
    assert_user_error,
    checkpoints,
    child_env,
    conformer,
    conformer_inprocess,
    conformer_with_faults,
    copy_run,
    interruptible,
    load,
    step_of,
    train_args,
    wait_for,
)

pytestmark = pytest.mark.slow  # subprocess trainings (docs/architecture.md: test tiers)


def history(run: Path) -> list[tuple]:
    """metrics.jsonl without the wall-clock fields: (kind, epoch, step, loss or top-1)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["epoch"], r["step"], r.get("loss", r.get("Top1-Acc"))) for r in lines]


def assert_resumed_equals_reference(run: Path, reference_run: Path) -> None:
    final, reference = load(checkpoints(run)[-1]), load(checkpoints(reference_run)[-1])
    assert final["train_state"]["step"] == reference["train_state"]["step"] == TOTAL_STEPS
    assert_same_weights(final, reference, keys=("model", "ema"))
    opt, ref_opt = final["train_state"]["optimizer"]["state"], reference["train_state"]["optimizer"]["state"]
    assert all(torch.equal(opt[i][k], ref_opt[i][k]) for i in ref_opt for k in ref_opt[i])
    assert final["metrics"] == reference["metrics"]
    assert history(run) == history(reference_run)  # one history: lines after the checkpoint were dropped


def test_1_sigkill_mid_epoch_then_the_same_command_resumes_exactly(dataset, reference_run, tmp_path):
    run = tmp_path / "run"
    command = train_args(dataset, run, checkpoint="auto")
    killed = conformer_with_faults(*command, kill_at_step=3)
    assert killed.rc == -signal.SIGKILL, killed.output[-2000:]
    # Killed after step 3, before its checkpoint: the newest one is mid-epoch (batch 2 of 3).
    assert [step_of(p) for p in checkpoints(run)] == [1, 2]
    state = load(checkpoints(run)[-1])["train_state"]
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 2, 2)

    resumed = conformer(*command)
    assert resumed.rc == 0, resumed.output[-3000:]
    assert f"resumed from {checkpoints(run)[1]}" in resumed.stderr
    assert_resumed_equals_reference(run, reference_run)


def test_2_sigterm_checkpoints_exits_143_and_resumes_exactly(dataset, reference_run, tmp_path):
    run = tmp_path / "run"
    command = train_args(dataset, run)
    stopped = conformer_with_faults(*command, sigterm_at_step=4)
    assert stopped.rc == 143, stopped.output[-3000:]
    assert "received SIGTERM" in stopped.stderr and "training stopped at step 4" in stopped.stdout
    # The step in progress was finished and checkpointed (mid-epoch: batch 1 of epoch 2).
    assert step_of(checkpoints(run)[-1]) == 4
    state = load(checkpoints(run)[-1])["train_state"]
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 1, 4)
    assert not list((run / "checkpoints").glob(".*"))  # no temp file left

    resumed = conformer(*command, "--checkpoint", checkpoints(run)[-1])
    assert resumed.rc == 0, resumed.output[-3000:]
    assert_resumed_equals_reference(run, reference_run)


def test_2_sigint_also_finishes_the_step_checkpoints_and_exits_130(dataset, tmp_path):
    """Ctrl-C from outside, at whatever step the run has reached (it logs every step)."""
    run = tmp_path / "run"
    log = (tmp_path / "train.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conformer_vision", *train_args(dataset, run, epochs=4)],
        cwd=REPO,
        env=child_env(),
        preexec_fn=interruptible,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: len(checkpoints(run)) >= 1 or proc.poll() is not None, 120, "the first checkpoint")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    output = log.read()
    assert rc == 130, output[-3000:]
    assert "received SIGINT" in output
    step = int(output.split("training stopped at step ")[1].split(";")[0])
    assert step < 12 and step_of(checkpoints(run)[-1]) == step
    assert load(checkpoints(run)[-1])["train_state"]["step"] == step


def _worker_pids(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the processes torchrun (pid ``launcher``) started."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and "RANK" in env:
            out[int(env["RANK"])] = int(entry.name)
    return out


def test_2_sigterm_to_one_rank_of_torchrun_stops_all_ranks_at_the_same_step(dataset, tmp_path):
    """SIGTERM reaches rank 1 only (as when a node's process is preempted): both ranks agree, stop
    after the same step, rank 0 writes that step's checkpoint, and nothing hangs. Also scenario 26:
    no device_num is given, the run follows torchrun's 2 processes, and rank 0 alone prints the
    closing line."""
    run = tmp_path / "run"
    command = train_args(dataset, run, batch_size=4, epochs=6)  # 3 steps/epoch on 2 ranks
    log = (tmp_path / "torchrun.log").open("w+")
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "conformer_vision",
            *command,
        ],
        cwd=REPO,
        env=child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(checkpoints(run)) >= 1 or launcher.poll() is not None, 150, "the first checkpoint")
        workers = _worker_pids(launcher.pid)
        assert sorted(workers) == [0, 1], f"workers {workers}; launcher exit {launcher.poll()}"
        os.kill(workers[1], signal.SIGTERM)
        rc = launcher.wait(timeout=120)  # a hang would end here
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    log.seek(0)
    output = log.read()
    assert rc != 0, output[-3000:]
    stops = [int(s) for s in re.findall(r"training stopped at step (\d+);", output)]
    assert len(stops) == 1, output[-3000:]  # rank 0 alone sums up
    step = stops[0]
    assert step < 18, "the run finished before the signal arrived"
    newest = checkpoints(run)[-1]
    state = read_checkpoint(newest)["train_state"]
    assert step_of(newest) == step and state["step"] == step and state["world_size"] == 2
    # both ranks' RNG states, gathered at that step: rank 1 stopped after the same step as rank 0
    assert len(state["rng"]) == 2


def test_13_nan_losses_are_skipped_then_stop_the_run_and_no_checkpoint_is_non_finite(dataset, reference_run, tmp_path):
    """Also scenario 15 (overwrite): the directory holds another run, replaced with --overwrite true."""
    run = copy_run(reference_run, tmp_path / "run")
    command = train_args(dataset, run, overwrite="true", max_nonfinite_steps=3)
    result = conformer_with_faults(*command, nan_at_step="2:3")  # NaN loss at steps 2, 3, 4
    assert_user_error(result, "training diverged: 3 consecutive steps with a non-finite loss")
    for step, streak in ((2, 1), (3, 2)):
        assert f"step {step}: non-finite loss, update skipped ({streak} in a row, limit 3)" in result.stderr
    left = [load(p) for p in checkpoints(run)]
    assert [c["train_state"]["step"] for c in left] == [1, 2, 3]  # none after the run stopped
    for ckpt in left:
        assert_all_finite(ckpt)
        assert_same_weights(ckpt, left[0])  # steps 2 and 3 changed nothing, BatchNorm statistics included
    # Scenario 15: nothing of the other run is left to be mixed with this one: its checkpoints of
    # steps 4-6, its epoch-2 best checkpoint and its metrics are gone.
    best = sorted((run / "best").glob("*.pt"))
    assert [p.name for p in best] == ["conformer_mini_test_0_best_e0001_top1_0.5000.pt"]
    assert_same_weights(load(best[0]), left[2])  # this run's epoch-1 weights
    assert [r[:3] for r in history(run)] == [("train", 1, 1), ("train", 1, 2), ("train", 1, 3), ("val", 1, 3)]
    assert len(list((run / "summary").glob("events.out.tfevents.*"))) == 1


def assert_all_finite(ckpt: dict) -> None:
    tensors = list(ckpt["model"].values()) + [
        t for s in ckpt["train_state"]["optimizer"]["state"].values() for t in s.values()
    ]
    assert all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_13_a_real_divergence_is_skipped_without_poisoning_batchnorm_then_stops(dataset, tmp_path):
    """A learning rate of 1e36 makes the forward overflow from step 2 on: those steps are skipped
    (BatchNorm statistics included), the run stops after 2 in a row, every checkpoint is finite."""
    run = tmp_path / "run"
    result = conformer(*train_args(dataset, run, base_lr=1e36, use_clip_grad_norm="false", max_nonfinite_steps=2))
    assert_user_error(result, "training diverged: 2 consecutive steps with a non-finite loss")
    assert "step 2: non-finite loss, update skipped (1 in a row, limit 2)" in result.stderr
    left = [load(p) for p in checkpoints(run)]
    assert [c["train_state"]["step"] for c in left] == [1, 2]
    for ckpt in left:
        assert_all_finite(ckpt)
    assert_same_weights(left[1], left[0])


def test_13_fp16_overflows_are_the_dynamic_scalers_to_handle_but_stop_a_static_scale(dataset, tmp_path):
    """fp16 autocast with a loss scale of 2**40: every scaled gradient overflows float16. With dynamic
    scaling the scaler skips each step and halves the scale; those skips are counted, never fatal,
    and change no weight. With the same scale fixed, the overflows are a divergence: the run stops
    after ``max_nonfinite_steps`` in a row with a clear error."""
    fp16 = dict(amp_level="O1", loss_scale=2.0**40, max_nonfinite_steps=2, use_clip_grad_norm="false")
    run = tmp_path / "dynamic"
    result = conformer(*train_args(dataset, run, is_dynamic_loss_scale="true", **fp16))
    assert result.rc == 0, result.output[-3000:]
    assert "training diverged" not in result.stderr
    left = [load(p) for p in checkpoints(run)]
    assert [c["train_state"]["step"] for c in left] == list(range(1, 7))
    assert [c["train_state"]["skipped_steps"] for c in left] == list(range(1, 7))
    assert [c["train_state"]["scaler"]["scale"] for c in left] == [2.0 ** (40 - k) for k in range(1, 7)]
    for ckpt in left:
        assert_all_finite(ckpt)
        assert_same_weights(ckpt, left[0])

    result = conformer(*train_args(dataset, tmp_path / "static", is_dynamic_loss_scale="false", **fp16))
    assert_user_error(result, "training diverged: 2 consecutive steps with a non-finite loss or gradients")
    assert "step 1: non-finite gradients, update skipped (1 in a row, limit 2)" in result.stderr


def test_15_a_directory_holding_a_run_is_refused_without_resume_or_overwrite(dataset, reference_run, tmp_path):
    run = copy_run(reference_run, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = conformer_inprocess(*train_args(dataset, run))
    assert_user_error(result, f"{run} already holds a run", "--checkpoint auto", "--overwrite true")
    # nothing written or deleted (the folders' writability probe leaves no file behind)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
