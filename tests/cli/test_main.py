"""The ``conformer`` front end itself (``conformer_vision.cli``): dispatch to the subcommand modules,
argument parsing without abbreviations and with a "did you mean", the one-line error contract
(exit 2, no traceback, no usage dump), ``conformer`` alone and ``--version``.

Commands run in this process through ``cli.main`` (``inference_testlib.cli``), except the one
check of the real entry point; what each subcommand does is tested beside its library module.
"""

from __future__ import annotations

import importlib
import importlib.metadata

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import pytest
import torch

import conformer_vision
from conformer_vision.cli import COMMANDS
from conformer_vision.errors import ConfigError, DataError


def assert_user_error(result: tuple[int, str, str], *fragments: str, one_line: bool = False) -> str:
    """The contract for a user error: exit code 2, nothing on stdout, stderr starting ``error: ``
    and holding every fragment, no traceback and no usage dump; ``one_line``: stderr is that line
    alone (an unknown option's error adds the valid options on lines of their own). Returns stderr."""
    rc, out, err = result
    assert rc == 2, f"exit code {rc}, expected 2\n{err[-3000:]}"
    assert not out and err.startswith("error: "), err[-3000:]
    assert "Traceback" not in err and "usage:" not in err, err[-3000:]
    if one_line:
        assert len(err.strip().splitlines()) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err[-3000:]!r}"
    return err.strip()


def _words(text: str) -> str:
    """``text`` without whitespace: argparse wraps long lines, also after a hyphen."""
    return "".join(text.split())


# ---- dispatch ---------------------------------------------------------------------------------- #


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_answers_help_with_its_description(command):
    """Each name in ``COMMANDS`` reaches its module: ``--help`` prints that module's usage and its
    one-line ``HELP``, exit 0."""
    module = importlib.import_module(f"conformer_vision.cli.{COMMANDS[command]}")
    rc, out, err = T.cli(command, "--help")
    assert rc == 0 and not err, err[-3000:]
    assert out.startswith(f"usage: conformer {command} ")
    assert _words(module.HELP) in _words(out)


def test_the_command_list_names_every_command_with_its_description():
    rc, out, err = T.cli("--help")
    assert rc == 0 and not err
    for command, name in COMMANDS.items():
        help_line = importlib.import_module(f"conformer_vision.cli.{name}").HELP
        assert f"{command} " in out and _words(help_line)[:30] in _words(out), command


def test_an_unknown_command_and_a_stray_argument_are_one_line_usage_errors():
    line = assert_user_error(T.cli("trian"), "'trian'", "(see 'conformer --help')", one_line=True)
    assert all(command in line for command in COMMANDS)  # the valid commands are named
    usage = "unexpected argument(s): extra (see 'conformer info --help')"
    assert_user_error(T.cli("info", "extra"), usage, one_line=True)


# ---- the one-line error contract --------------------------------------------------------------- #


def test_an_expected_error_of_a_command_is_one_line_and_exit_2(monkeypatch):
    """Whatever ``ConformerError`` a command raises is printed as ``error: MESSAGE`` alone."""
    info = importlib.import_module("conformer_vision.cli.info")

    def fail(args):
        raise ConfigError("--image_size must be >= 1, got 0")

    monkeypatch.setattr(info, "run", fail)
    line = assert_user_error(T.cli("info"), one_line=True)
    assert line == "error: --image_size must be >= 1, got 0"


class _UnreadableImages(torch.utils.data.Dataset):
    """A dataset whose every item is a DataError, as a bad-file budget raises it in a worker."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DataError("3 of 4 images are unreadable, over the budget; raise --max_bad_files_fraction")


def test_an_error_raised_in_a_loader_worker_is_shown_without_the_workers_traceback(monkeypatch):
    """A DataLoader re-raises a worker's error with the worker's traceback as its message: the
    command prints the original message only."""
    info = importlib.import_module("conformer_vision.cli.info")

    def load_in_a_worker(args):
        batches = iter(torch.utils.data.DataLoader(_UnreadableImages(), num_workers=1))
        try:
            next(batches)
        except DataError as error:
            # Without the frames of the loader's traceback the loader is freed now and its worker
            # stops at once, instead of in a later garbage collection that waits 5 s for it.
            del batches
            raise error.with_traceback(None) from None

    monkeypatch.setattr(info, "run", load_in_a_worker)
    line = assert_user_error(T.cli("info"), one_line=True)
    assert line == "error: 3 of 4 images are unreadable, over the budget; raise --max_bad_files_fraction"


def test_ctrl_c_in_a_command_is_interrupted_and_130_and_a_bug_keeps_its_traceback(monkeypatch):
    info = importlib.import_module("conformer_vision.cli.info")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert T.cli("info") == (130, "", "interrupted\n")

    def bug(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # not hidden behind a one-line message
        T.cli("info")


# ---- options: never abbreviated, "did you mean" in every command ------------------------------- #


@pytest.mark.parametrize(
    "command, typo, meant",
    [
        (["train"], "--bsae_lr", "base_lr"),
        (["eval", "--checkpoint", "m.pt"], "--outptu", "output"),
        (["predict", "photos"], "--chekpoint", "checkpoint"),  # argparse would report --checkpoint missing
        (["predict", "photos", "--checkpoint", "m.pt"], "--topK", "topk"),
        (["export", "--checkpoint", "m.pt"], "--file-format", "file_format"),
        (["eval-onnx", "val"], "--onnx_pth", "onnx_path"),
        (["plot", "run"], "--ouput", "output"),
        (["visualize", "a.jpg", "--checkpoint", "m.pt"], "--input-size", "input_size"),
        (["benchmark", "--arch", "conformer_mini_test"], "--thread", "threads"),
        (["info"], "--image-size", "image_size"),
        (["prepare", "fashion-mnist", "out"], "--limit", "limit_per_class"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_27_every_subcommand_says_which_option_was_meant(tmp_path, command, typo, meant):
    """Scenario 27 of docs/reliability.md, every command: exit 2, no usage dump, nothing written."""
    result = T.cli(*command, typo, "1", cwd=tmp_path)
    assert_user_error(
        result,
        f"unknown option '{typo[2:]}' [command line]: did you mean '{meant}'",
        f"see 'conformer {command[0]} --help'",
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "abbreviation, meant", [("--epoch", "epochs"), ("--batch", "batch_size"), ("--num_class", "num_classes")]
)
def test_27_a_prefix_is_never_taken_for_the_option(tmp_path, abbreviation, meant):
    """argparse would take ``--epoch 1`` for ``--epochs 1``: here it is an unknown option."""
    result = T.cli("train", "--data_url", str(tmp_path / "no_such_data"), abbreviation, "1", cwd=tmp_path)
    err = assert_user_error(result, f"unknown option '{abbreviation[2:]}' [command line]: did you mean '{meant}'")
    assert "ambiguous" not in err
    assert not list(tmp_path.iterdir())


# ---- conformer alone, --version ---------------------------------------------------------------- #


def test_33_conformer_alone_is_a_usage_error_and_help_names_version():
    rc, out, err = T.cli()
    assert rc == 2 and not out
    assert err.startswith("usage: conformer [-h] [-V] COMMAND ...") and "a command is required" in err
    assert all(name in err for name in ("train", "predict", "export", "eval-onnx"))
    rc, out, _ = T.cli("--help")
    assert rc == 0 and "--version" in out


def _version_line() -> str:
    return (
        f"conformer-vision {importlib.metadata.version('conformer-vision')} "
        f"(torch {importlib.metadata.version('torch')})"
    )


def test_33_version_is_the_installed_distributions():
    assert conformer_vision.__version__ == importlib.metadata.version("conformer-vision")  # one version
    assert T.cli("-V") == (0, _version_line() + "\n", "")
    assert T.cli("--version") == (0, _version_line() + "\n", "")


@pytest.mark.slow
def test_33_version_of_the_real_entry_point():
    """``python -m conformer_vision --version`` in a fresh process: the line alone, exit 0."""
    proc = T.cli_process("--version", cwd=T.REPO)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, _version_line() + "\n", "")
