"""``conformer_vision.cli.options``: every configuration option as a command-line flag of ``train``,
``eval`` and ``export`` (help from the field docs, aliases, values as strings, the YAML underneath).

The command line is parsed as ``conformer train`` parses it (the CLI's parser, no abbreviations,
"did you mean" for an unknown flag), without running the command.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from conformer_vision import cli
from conformer_vision.cli.options import add_config_arguments, config_from_args
from conformer_vision.config import Config
from conformer_vision.errors import ConfigError

FIELDS = [f.name for f in dataclasses.fields(Config)]


def make_parser() -> argparse.ArgumentParser:
    return add_config_arguments(cli._Parser(prog="conformer train"))


def parse(*tokens: str) -> Config:
    """The Config ``conformer train TOKENS`` would run with."""
    return config_from_args(vars(cli._parse(make_parser(), list(tokens))))


def error_of(*tokens: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(*tokens)
    return str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_help_lists_every_option_with_its_doc_default_and_rules():
    text = " ".join(make_parser().format_help().split())
    for name in ["config", *FIELDS]:
        assert f"--{name}" in text
    assert "default: 'cosine_lr'" in text and "choices: adamw, sgd (also momentum)" in text
    assert "Peak learning rate (after warm-up) for the global batch. (default: 0.001; must be > 0; alias" in text
    assert "Options of the PyTorch port:" in text and "Dataset:" in text  # the specification's sections


def test_aliases_are_hidden_flags_named_in_their_options_help():
    parser = add_config_arguments(argparse.ArgumentParser(allow_abbrev=False))
    args, unknown = parser.parse_known_args(["--epoch", "1", "--batch", "4", "--lr", "0.1", "--warmup_epochs", "0"])
    assert unknown == ["--epoch", "1", "--batch", "4"]
    assert (args.base_lr, args.warmup_length) == ("0.1", "0") and not hasattr(args, "epochs")
    help_text = " ".join(parser.format_help().split())
    assert "alias: --lr, --learning_rate" in help_text and "--lr BASE_LR" not in help_text


@pytest.mark.parametrize(
    "alias, option", [("lr", "base_lr"), ("learning_rate", "base_lr"), ("warmup_epochs", "warmup_length")]
)
def test_an_alias_is_stored_under_its_option(alias, option):
    cfg = parse(f"--{alias}", "1")
    assert getattr(cfg, option) == 1 and alias not in cfg.to_dict()


def test_an_option_given_under_two_names_is_an_error_and_one_name_twice_keeps_the_last():
    assert "given twice" in error_of("--lr", "0.1", "--learning_rate", "0.2")
    assert "'--lr' is an alias of 'base_lr'" in error_of("--base_lr", "0.1", "--lr", "0.2")
    assert parse("--lr", "0.1", "--lr", "0.2").base_lr == 0.2


@pytest.mark.parametrize(
    "tokens, suggestion",
    [
        (["--batchsize", "8"], "batch_size"),
        (["--sched", "cosine"], "lr_scheduler"),  # another codebase's name for the option
        (["--lerning-rate", "0.1"], "base_lr"),  # close to the alias learning_rate: its option is suggested
        (["--epoch", "1"], "epochs"),  # an abbreviation is not accepted, but suggested
        (["--drop_path_rate=0.2"], "drop_path"),
        (["--frozen_stages", "1"], "freeze_stages"),  # mmpretrain / mmdetection's name
        (["--trainable_layers", "3"], "freeze_stages"),  # torchvision's (counted from the top)
    ],
)
def test_an_unknown_flag_suggests_ours(tokens, suggestion):
    msg = error_of(*tokens)
    assert "did you mean" in msg and suggestion in msg and "command line" in msg


def test_timms_layer_decay_flag_is_taken_as_spelt_there():
    assert parse("--layer-decay", "0.75").layer_decay == 0.75


def test_the_command_line_wins_over_the_yaml_and_keeps_what_it_does_not_give(tmp_path):
    path = write(tmp_path, "epochs: 7\nbatch_size: 16\nseed: 5\nlr: 0.1\n")
    cfg = parse("--config", str(path), "--batch_size", "48", "--seed=9", "--base_lr", "0.3")
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.base_lr) == (7, 48, 9, 0.3)


def test_values_as_typed_on_a_command_line():
    cfg = parse("--with_ema", "--beta", "0.8", "0.9", "--image_size", "160", "--val_num_samples", "-1")
    assert (cfg.with_ema, cfg.beta, cfg.image_hw, cfg.val_num_samples) == (True, [0.8, 0.9], (160, 160), -1)
    assert parse("--with_ema", "no", "--beta", "0.8,0.9").with_ema is False  # a bare flag means true
    assert parse("--image_size", "[192, 256]", "--auto_augment", "null").auto_augment is None


def test_bad_values_are_named_with_their_source():
    msg = error_of("--epochs", "0", "--amp_level", "O9")
    assert "epochs: 0 is out of range" in msg and "amp_level: 'O9' is not a valid choice" in msg
    assert "[command line]" in msg


def test_a_commands_own_arguments_are_not_options():
    ns = make_parser().parse_args(["--epochs", "3"])
    assert config_from_args(vars(ns) | {"command": "train", "output": "x.json"}).epochs == 3
