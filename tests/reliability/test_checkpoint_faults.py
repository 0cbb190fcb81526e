"""Scenarios 3-7 of docs/reliability.md: a crash inside a checkpoint write, a full disk, truncated /
empty / foreign checkpoint files, a malicious pickle, and checkpoints of another architecture or

class count, each provoked through the ``conformer`` command."""

from __future__ import annotations

import builtins
import resource
import signal
import textwrap
from pathlib import Path

import pytest
import torch

from conformer_vision.checkpoint import build_checkpoint
from conformer_vision.models import create_model

from .conftest import (
    assert_same_weights,
    assert_user_error,
    checkpoints,
    child_env,
    conformer,
    conformer_inprocess,
    copy_run,
    load,
    noise_image,
    run_python,
    step_of,
    train_args,
)

pytestmark = pytest.mark.slow  # subprocess trainings (docs/architecture.md: test tiers)

# Runs `conformer ARGS` with torch.save replaced: while writing the file whose name contains
# $CRASH_WRITING, write the first half of the real bytes, fsync, then SIGKILL the process.
CRASHING_TRAINER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from conformer_vision.cli import main

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
        if os.environ["CRASH_WRITING"] in name:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    sys.exit(main(sys.argv[1:]))
""")


def test_3_kill_while_a_checkpoint_is_written_keeps_the_previous_one_and_resume_picks_it(
    dataset, reference_run, tmp_path
):
    run = tmp_path / "run"
    command = train_args(dataset, run, checkpoint="auto")
    script = tmp_path / "crashing_trainer.py"
    script.write_text(CRASHING_TRAINER)
    crashed = run_python([script, *command], env=child_env(CRASH_WRITING="_s00000004.pt"))
    assert crashed.rc == -signal.SIGKILL, crashed.output[-3000:]
    # Half of step 4's checkpoint is on disk, under a hidden temporary name only.
    temp = list((run / "checkpoints").glob(".*_s00000004.pt.*.tmp"))
    assert len(temp) == 1 and temp[0].stat().st_size > 0
    assert [step_of(p) for p in checkpoints(run)] == [1, 2, 3]
    for path, ref in zip(checkpoints(run), checkpoints(reference_run)):
        assert_same_weights(load(path), load(ref))  # the earlier ones are intact

    resumed = conformer(*command)
    assert resumed.rc == 0, resumed.output[-3000:]
    assert f"resumed from {run / 'checkpoints' / checkpoints(reference_run)[2].name}" in resumed.stderr
    assert f"removed {temp[0]}" in resumed.stderr and not temp[0].exists()  # the half write is cleaned up
    assert_same_weights(load(checkpoints(run)[-1]), load(checkpoints(reference_run)[-1]))


def _no_bigger_files_than(limit: int):
    def limit_file_size() -> None:  # in the child, before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size


def test_4_disk_full_during_a_checkpoint_write_is_a_clear_error_and_keeps_older_checkpoints(
    dataset, reference_run, tmp_path
):
    """The resumed run may write small files (logs, metrics) but no checkpoint (~3.7 MB) fits."""
    run = copy_run(reference_run, tmp_path / "run", only=lambda p: "best" not in str(p) and step_of(p) in (2, 3))
    before = {p.name: p.read_bytes() for p in checkpoints(run)}
    result = conformer(
        *train_args(dataset, run, checkpoint="auto", ckpt_keep_num=1), preexec_fn=_no_bigger_files_than(1_000_000)
    )
    target = run / "checkpoints" / "conformer_mini_test_0_e0001_s00000004.pt"
    assert_user_error(result, f"could not write checkpoint {target}", "Nothing was replaced")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(before)  # no temp file, none deleted
    assert {p.name: p.read_bytes() for p in checkpoints(run)} == before


@pytest.fixture
def bad_checkpoints(reference_run: Path, tmp_path: Path) -> dict[str, Path]:
    """Broken files: truncated (half of a real checkpoint), empty, text, and a weights file
    without training state."""
    real = checkpoints(reference_run)[-1].read_bytes()
    files = {
        "truncated": (tmp_path / "truncated.pt", real[: len(real) // 2]),
        "empty": (tmp_path / "empty.pt", b""),
        "text": (tmp_path / "notes.pt", b"these are my notes, not a checkpoint\n" * 10),
    }
    for path, data in files.values():
        path.write_bytes(data)
    out = {name: path for name, (path, _) in files.items()}
    out["weights_only"] = tmp_path / "weights.pt"
    torch.save(load(checkpoints(reference_run)[-1])["model"], out["weights_only"])
    return out


def test_5_resume_from_a_truncated_empty_or_foreign_file_is_a_clear_error(dataset, bad_checkpoints, tmp_path):
    for name, message in (
        ("truncated", "is truncated or corrupt"),
        ("empty", "is empty (0 bytes)"),
        ("text", "is not a checkpoint: it is a text file"),
        ("weights_only", "holds no training state"),
    ):
        result = conformer_inprocess(*train_args(dataset, tmp_path / name, checkpoint=bad_checkpoints[name]))
        assert_user_error(result, str(bad_checkpoints[name]), message)
        assert not (tmp_path / name).exists()  # nothing written
    # One real process as well: the error is the whole output, no traceback.
    result = conformer(*train_args(dataset, tmp_path / "run", checkpoint=bad_checkpoints["truncated"]))
    assert_user_error(result, f"{bad_checkpoints['truncated']} is truncated or corrupt")


def test_5_auto_resume_skips_a_truncated_newest_checkpoint_with_a_warning(dataset, reference_run, tmp_path):
    run = copy_run(reference_run, tmp_path / "run")
    newest = checkpoints(run)[-1]
    newest.write_bytes(newest.read_bytes()[:100_000])  # e.g. copied by a tool that is not atomic
    result = conformer(*train_args(dataset, run, checkpoint="auto"))
    assert result.rc == 0, result.output[-3000:]
    assert f"skipping unreadable checkpoint: {newest} is truncated or corrupt" in result.stderr
    assert f"resumed from {checkpoints(run)[-2]}" in result.stderr
    assert_same_weights(load(newest), load(checkpoints(reference_run)[-1]))  # step 6 redone exactly


def test_5_auto_resume_never_starts_from_scratch_when_only_broken_checkpoints_exist(dataset, reference_run, tmp_path):
    run = copy_run(reference_run, tmp_path / "run", only=lambda p: "best" not in str(p) and step_of(p) >= 5)
    for path in checkpoints(run):
        path.write_bytes(path.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = conformer_inprocess(*train_args(dataset, run, checkpoint="auto"))
    assert_user_error(result, "checkpoint: auto found 2 checkpoint(s)", "none is readable")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


class Payload:
    """Unpickling this calls open(path, "w"): the file appears if the loader runs the payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


def test_6_a_malicious_pickle_is_refused_by_every_command_and_its_payload_never_runs(dataset, tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"conv1.weight": Payload(marker)}, "arch": "conformer_mini_test"}, evil)
    image = tmp_path / "photo.png"
    noise_image(0).save(image)
    refusal = f"{evil} was refused: it contains Python objects other than tensors"
    commands = {
        "train --checkpoint": train_args(dataset, tmp_path / "r1", checkpoint=evil),
        "train --pretrained": train_args(dataset, tmp_path / "r2", pretrained=evil),
        "eval": [
            "eval",
            "--checkpoint",
            evil,
            "--data_url",
            dataset,
            "--val_dir",
            "val",
            "--arch",
            "conformer_mini_test",
            "--device_target",
            "cpu",
        ],
        "predict": [
            "predict",
            image,
            "--checkpoint",
            evil,
            "--arch",
            "conformer_mini_test",
            "--output",
            tmp_path / "p.json",
        ],
        "export": ["export", "--checkpoint", evil, "--arch", "conformer_mini_test", "--output", tmp_path / "m.onnx"],
    }
    for name, args in commands.items():
        result = conformer_inprocess(*args)
        assert_user_error(result, refusal)
        assert not marker.exists(), f"{name} ran the payload"
    # The control: the payload is live, an unsafe load runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """conformer_tiny_patch16 (2 classes) as our checkpoint and as a plain state dict (uninitialised
    values: only the architecture matters here)."""
    with torch.device("meta"):
        model = create_model("conformer_tiny_patch16", num_classes=2)
    model = model.to_empty(device="cpu")
    folder = tmp_path_factory.mktemp("tiny")
    paths = {"checkpoint": folder / "tiny_ckpt.pt", "state_dict": folder / "tiny_state_dict.pt"}
    torch.save(build_checkpoint(model, class_names=["cat", "dog"], train_state={"epoch": 1}), paths["checkpoint"])
    torch.save(model.state_dict(), paths["state_dict"])
    return paths


def test_7_weights_of_another_architecture_are_a_strict_error_naming_keys_and_file_architecture(
    dataset, reference_run, tiny_weights, tmp_path
):
    holds = "the file seems to hold conformer_tiny_patch16"
    result = conformer_inprocess(*train_args(dataset, tmp_path / "r1", pretrained=tiny_weights["state_dict"]))
    fits = f"{tiny_weights['state_dict']} does not fit conformer_mini_test"
    assert_user_error(result, fits, "mis-shaped keys", holds)
    result = conformer_inprocess(*train_args(dataset, tmp_path / "r2", checkpoint=tiny_weights["checkpoint"]))
    stored = f"cannot resume from {tiny_weights['checkpoint']}: the checkpoint (arch conformer_tiny_patch16)"
    assert_user_error(result, f"{stored} does not fit conformer_mini_test", "mis-shaped keys", holds)
    image = tmp_path / "photo.png"
    noise_image(0).save(image)
    mini = tmp_path / "mini_state_dict.pt"
    torch.save(load(checkpoints(reference_run)[-1])["model"], mini)
    result = conformer_inprocess(
        "predict", image, "--checkpoint", mini, "--arch", "conformer_tiny_patch16", "--output", tmp_path / "p.json"
    )
    assert_user_error(
        result,
        f"{mini} does not fit conformer_tiny_patch16",
        "626 mis-shaped keys",
        "the file seems to hold conformer_mini_test",
    )
    assert not (tmp_path / "p.json").exists()


def test_7_resuming_with_another_class_list_is_refused(dataset, reference_run, tmp_path):
    """Another class count is accepted only by --pretrained (transfer learning; the run of
    test_data_faults.py re-initialises the heads); --checkpoint resumes the same run only."""
    data = tmp_path / "three_classes"
    for split in ("train", "val"):
        for name in ("ant", "bee", "cow"):
            (data / split / name).mkdir(parents=True)
            for k in range(8 if split == "train" else 2):
                noise_image(k).save(data / split / name / f"{k}.png")
    run = copy_run(reference_run, tmp_path / "run")
    # epochs 3: the run is extended (resuming its 2 finished epochs alone would only say it is finished)
    result = conformer_inprocess(*train_args(data, run, num_classes=3, checkpoint="auto", epochs=3))
    assert_user_error(
        result,
        f"cannot resume from {checkpoints(run)[-1]}: the checkpoint's classes ['cat', 'dog']... "
        "differ from the data's ['ant', 'bee', 'cow']",
    )
