"""Scenarios 27, 29 and 33 of docs/reliability.md, the parts that need a real run or process: the
aliases of other codebases' names work alike in YAML and on the command line, Ctrl-C during
start-up is one line and exit 130, and a policy string timm would ignore is refused before any
work. The command line's own contract (no abbreviations, "did you mean" in every subcommand,
``conformer`` alone, ``--version``) is tested in tests/cli/test_main.py."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import (
    REPO,
    assert_user_error,
    checkpoints,
    child_env,
    conformer_inprocess,
    interruptible,
    load,
    train_args,
    wait_for,
)


def _without(args: list[str], option: str) -> list[str]:
    """``args`` without ``option`` and its value."""
    i = args.index(option)
    return args[:i] + args[i + 2 :]


@pytest.mark.slow
def test_27_lr_is_an_alias_and_an_alias_with_its_option_is_an_error(dataset, tmp_path):
    """A real run given ``warmup_epochs`` in its YAML and ``--lr`` on the command line stores
    ``warmup_length`` and ``base_lr``; an alias and its option given together is an error naming
    both, on the command line and in YAML."""
    config = tmp_path / "run.yaml"
    config.write_text("warmup_epochs: 0\n")  # the default is 2
    run = tmp_path / "run"
    args = _without(train_args(dataset, run, epochs=1, ckpt_save_every_step=0), "--warmup_length")
    result = conformer_inprocess(*args, "--config", config, "--lr", "0.02")
    assert result.rc == 0, result.output[-3000:]
    saved = load(checkpoints(run)[-1])["config"]
    assert (saved["base_lr"], saved["warmup_length"]) == (0.02, 0)
    assert not {"lr", "warmup_epochs"} & set(saved)

    other = tmp_path / "other"
    both = conformer_inprocess(*train_args(dataset, other), "--lr", "0.1", "--base_lr", "0.2")
    assert_user_error(both, "option 'base_lr' is given twice, as '--lr' [command line] and '--base_lr' [command line]")
    config.write_text("learning_rate: 0.1\nbase_lr: 0.2\n")
    both = conformer_inprocess(*train_args(dataset, other), "--config", config)
    assert_user_error(both, "option 'base_lr' is given twice, as 'learning_rate' [", f"'base_lr' [{config}:2]")
    assert not other.exists()


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["python -m conformer_vision", "conformer"])
def test_29_ctrl_c_during_start_up_prints_interrupted_and_exits_130(dataset, tmp_path, entry):
    """A real SIGINT while the command is still importing torch (its shared library is mapped into
    the process, the import is under way): one line, exit 130, no traceback, nothing written."""
    if entry == "conformer":
        script = shutil.which("conformer", path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip("the conformer console script is not installed beside this python")
        launch = [script]
    else:
        launch = [sys.executable, "-m", "conformer_vision"]
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*launch, *map(str, train_args(dataset, run))],
        cwd=REPO,
        env=child_env(),
        preexec_fn=interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        maps = Path(f"/proc/{proc.pid}/maps")
        wait_for(lambda: proc.poll() is not None or "libtorch" in maps.read_text(), 120, "torch to start loading")
        assert proc.poll() is None, "the command ended before it was interrupted"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines() == ["interrupted"], stderr[-3000:]
    assert not stdout and time.monotonic() - started < 60
    assert not run.exists()


def test_33_a_policy_string_timm_would_ignore_is_refused_before_any_work(tmp_path):
    """timm itself builds ``rand-bogus`` (it skips the section ``bogus``); the run is refused before
    the data (which does not exist) or any output folder is touched."""
    run = tmp_path / "run"
    result = conformer_inprocess(*train_args(tmp_path / "no_such_data", run), "--auto_augment", "rand-bogus")
    assert_user_error(
        result,
        "auto_augment: 'rand-bogus' is not a timm auto-augment policy: section 'bogus' holds "
        "no value, so timm would ignore it; e.g. rand-m9-mstd0.5-inc1",
    )
    assert "no_such_data" not in result.stderr and not run.exists()
