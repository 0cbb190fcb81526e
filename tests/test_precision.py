"""One mixed-precision vocabulary (``precision.AMP_LEVELS``) in every command, and one device resolver
(``runtime.resolve_device``) with one-line errors."""

from __future__ import annotations

import importlib
import json

import inference_testlib as T
import pytest
import torch

from conformer_vision import cli
from conformer_vision.cli.options import config_from_args
from conformer_vision.errors import ConfigError
from conformer_vision.precision import AMP_LEVELS, amp_level
from conformer_vision.runtime import AMP_DTYPES as DTYPES
from conformer_vision.runtime import amp_dtype, resolve_device

F16, BF16 = torch.float16, torch.bfloat16
MEANING = {
    "O0": None,
    "fp32": None,
    "float32": None,
    "O1": F16,
    "O2": F16,
    "O3": F16,
    "fp16": F16,
    "float16": F16,
    "bf16": BF16,
    "bfloat16": BF16,
}
"""What each name must mean, written out here rather than read from the table under test."""

# command -> (the command line before the option, the option's spellings in that command)
COMMANDS = {
    "train": ([], ["--amp_level"]),
    "eval": (["--checkpoint", "m.pt"], ["--amp_level"]),
    "export": (["--checkpoint", "m.pt"], ["--amp_level"]),
    "eval-onnx": (["val", "--onnx_path", "m.onnx"], ["--amp_level"]),
    "predict": (["photos", "--checkpoint", "m.pt"], ["--amp_level", "--amp"]),
    "benchmark": (["--arch", "conformer_mini_test"], ["--amp_level", "--amp"]),
    "serve": (["m.pt"], ["--amp_level", "--precision"]),
}
CONFIG_COMMANDS = ("train", "eval", "export")  # amp_level is a configuration option there


def parsed_amp_level(command: str, argv: list[str]) -> str:
    """The amp_level ``conformer COMMAND ARGV`` runs with, parsed as ``cli.main`` parses it."""
    module = importlib.import_module(f"conformer_vision.cli.{cli.COMMANDS[command]}")
    parser = cli._Parser(prog=f"conformer {command}")
    module.add_arguments(parser)
    args = cli._parse(parser, argv)
    if command in CONFIG_COMMANDS:
        return config_from_args(vars(args)).amp_level
    return args.amp if command == "benchmark" else args.amp_level


def test_the_table_means_what_the_docs_say():
    assert set(AMP_LEVELS) == set(MEANING) and list(AMP_LEVELS)[:5] == ["O0", "O1", "O2", "O3", "bf16"]
    for name, dtype in MEANING.items():
        assert DTYPES[name] is dtype and amp_dtype(name) is dtype
        assert AMP_LEVELS[name].loss_scaling == (dtype is F16)  # float16 alone needs loss scaling


@pytest.mark.parametrize("name", [*MEANING, "o2", "BF16", "Float16", " fp32"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_every_amp_level_name(command, name):
    before, spellings = COMMANDS[command]
    expected = MEANING[amp_level(name)]
    for option in spellings:
        level = parsed_amp_level(command, [*before, option, name])
        assert level == amp_level(name) and DTYPES[level] is expected, (command, option, name)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_amp_level_is_one_line_in_every_command(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before, spellings = COMMANDS[command]
    assert cli.main([command, *before, spellings[-1], "fp61"]) == 2
    err = capsys.readouterr().err
    assert "amp_level" in err and "O0, O1, O2, O3, bf16, fp16, fp32" in err and "did you mean 'fp16'" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_eval_onnx_refuses_autocast_names_with_the_reason(tmp_path, capsys):
    assert cli.main(["eval-onnx", str(tmp_path), "--onnx_path", "m.onnx", "--amp_level", "fp16"]) == 2
    assert "an ONNX graph runs in the precision it was exported in" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_amp_O1_runs_for_real(base, tmp_path):
    """The spelling the specification uses, through the real entry point: float16 autocast."""
    out = tmp_path / "p.json"
    photos, checkpoint = str(T.photos(base)), str(T.checkpoint(base))
    proc = T.cli_process("predict", photos, "--checkpoint", checkpoint, "--amp", "O1", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text()) and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the device resolver


def test_device_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == resolve_device("CPU") == resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("GPU") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", index=1) == resolve_device("gpu:1") == torch.device("cuda", 1)  # LOCAL_RANK 1
    assert resolve_device("cuda:0", index=1) == torch.device("cuda", 0)  # an explicit index wins


DEVICE_ERRORS = [
    ("cuda", False, "--device cuda was requested but CUDA is not available here; use --device cpu (or auto)"),
    ("GPU:1", False, "CUDA is not available here"),
    ("cuda:2", True, "--device cuda:2: cuda:2 requested but only 2 CUDA device(s) are visible"),
    ("tpu", True, "--device tpu: unknown device; use cpu, cuda, cuda:N or auto"),
]


@pytest.mark.parametrize("device, cuda, message", DEVICE_ERRORS)
def test_device_errors_name_the_option_and_the_way_out(monkeypatch, device, cuda, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    with pytest.raises(ConfigError) as info:
        resolve_device(device)
    assert message in str(info.value)
    with pytest.raises(ConfigError, match="device_target"):
        resolve_device(device, option="device_target")


def test_config_commands_resolve_device_target_before_reading_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = cli.main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--device_target", "GPU"])
    err = capsys.readouterr().err
    assert rc == 2 and "device_target cuda was requested but CUDA is not available here" in err
    assert "use device_target cpu" in err and "missing.pt" not in err  # the device is checked first
