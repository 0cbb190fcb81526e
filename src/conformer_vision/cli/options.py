"""The configuration's options as command-line flags: one ``--<option>`` per field of
:class:`~conformer_vision.config.Config`, in the specification's sections, its doc as help.

``train``, ``eval`` and ``export`` add them with :func:`add_config_arguments` and turn what was
given into a Config with :func:`config_from_args` (the YAML of ``--config``, the flags on top).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from ..config import OPTION_ALIASES, Config, given_twice, load_config, option_rules
from ..errors import ConfigError

# The --help sections (the specification's YAML sections), by their first option.
SECTIONS = {
    "dataset": "Dataset",
    "auto_augment": "Augmentations",
    "optimizer": "Optimizer",
    "epochs": "Network training config",
    "arch": "Model arguments",
    "device_id": "Hardware setup",
    "summary_root_dir": "Callbacks setup",
    "checkpoint": "Options of the PyTorch port",
}
# Other spellings of a flag, hidden from --help: the aliases, and timm's train.py flags as spelt there.
SPELLINGS = OPTION_ALIASES | {"layer-decay": "layer_decay"}


class _OptionAction(argparse.Action):
    """Stores an option given as ``--name`` or another spelling (``--lr``), remembering the spelling:
    two names of one option on one command line are an error, as in one YAML file; repeating the
    same spelling keeps the last value, as argparse does."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        spellings: dict[str, str] = vars(namespace).setdefault("_option_spellings", {})
        first = spellings.setdefault(self.dest, option_string or self.dest)
        if option_string is not None and first != option_string:
            raise ConfigError(given_twice(self.dest, (first, option_string), ("command line", "command line")))
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config PATH`` and one ``--<option>`` per field, each with its doc, default and rules as
    help. Options not given stay out of the namespace, so the YAML's values are kept."""
    parser.add_argument(
        "--config", metavar="PATH", help="YAML file with the options (command-line options override it)"
    )
    hints, group = typing.get_type_hints(Config), parser
    for f in dataclasses.fields(Config):
        group = parser.add_argument_group(SECTIONS[f.name]) if f.name in SECTIONS else group
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        text = f"{f.metadata['help']} ({'; '.join([f'default: {default!r}', *option_rules(f)])})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "action": _OptionAction}
        tp = hints[f.name]
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")  # a bare --with_ema means true
        elif list in map(typing.get_origin, (tp, *typing.get_args(tp))):
            kwargs.update(nargs="+", metavar="V")
        else:
            kwargs.update(metavar=f.name.upper())
        group.add_argument(f"--{f.name}", help=text.replace("%", "%%"), **kwargs)
        for other in [s for s, name in SPELLINGS.items() if name == f.name]:
            group.add_argument(f"--{other}", help=argparse.SUPPRESS, **kwargs)
    return parser


def config_from_args(args: Mapping[str, Any]) -> Config:
    """The Config of a parsed command line (``vars(namespace)``): the YAML of ``--config`` with every
    option given on top (one value of a list option unwrapped). A command's own arguments are ignored."""
    names = {f.name for f in dataclasses.fields(Config)}
    given = {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in args.items() if k in names}
    return load_config(args.get("config"), given, source="command line")
