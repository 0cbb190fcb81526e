"""The ``conformer`` command: one thin module per subcommand under ``conformer_vision.cli``.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` converts the parsed arguments into plain values and calls one
library function. Expected user errors (``ConformerError``) are printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from ..errors import ConformerError

# command name -> module under conformer_vision.cli (imported only when that command runs)
COMMANDS: dict[str, str] = {
    "prepare": "prepare",
    "train": "train",
    "eval": "evaluate",
    "eval-onnx": "eval_onnx",
    "predict": "predict",
    "export": "export",
    "benchmark": "benchmark",
    "visualize": "visualize",
    "plot": "plot",
    "info": "info",
}


def _available() -> dict[str, str]:
    return {c: m for c, m in COMMANDS.items() if importlib.util.find_spec(f"{__name__}.{m}") is not None}


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] not in commands:
        parser = argparse.ArgumentParser(prog="conformer", description="Conformer image classifiers.")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, module in commands.items():
            sub.add_parser(name, help=importlib.import_module(f"{__name__}.{module}").HELP)
        parser.parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(f"{__name__}.{commands[argv[0]]}")
    parser = argparse.ArgumentParser(prog=f"conformer {argv[0]}", description=module.HELP)
    module.add_arguments(parser)
    args, unknown = parser.parse_known_args(argv[1:])
    if unknown and not hasattr(args, "config"):  # a command without configuration options
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _setup_logging()
    try:
        if unknown:  # a misspelt configuration option: "did you mean", as for a YAML key
            from ..config import load_config

            load_config(None, unknown)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return int(module.run(args) or 0)
    except ConformerError as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _message(error: ConformerError) -> str:
    """The error's message. A DataLoader worker's error reaches the main process re-raised with the
    worker's traceback as its text ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."): only the original message after that traceback is shown."""
    text = str(error)
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    if "Original Traceback (most recent call last):" in text and prefix in text:
        return text.rsplit(prefix, 1)[1].strip()
    return text

