"""The ``conformer`` command: one thin module per subcommand under ``conformer_vision.cli``.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` converts the parsed arguments into plain values and calls one
library function. Expected user errors (``ConformerError``) are printed without a traceback.

What every subcommand gets from :func:`main` without doing anything: no prefix abbreviations
(``--epoch`` is not taken for ``--epochs``), a "did you mean" for a misspelt option, usage errors
in one line instead of the whole usage, and Ctrl-C at any point before a command takes over the
signal printing ``interrupted`` and exiting 130 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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
    "serve": "serve",
    "plot": "plot",
    "info": "info",
}
EXIT_USAGE = 2  # a user error: bad option, bad value, missing file
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class _UsageError(Exception):
    """argparse rejected the command line (``message``) of the command ``prog``."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An argparse parser without prefix abbreviations, whose usage errors are raised (as
    :class:`_UsageError`) rather than printed after the whole usage text, so :func:`main` can
    explain them in one line, with a "did you mean" where an option is misspelt."""

    def __init__(self, **kwargs: object) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.prog, message)


def _available() -> dict[str, str]:
    return {c: m for c, m in COMMANDS.items() if importlib.util.find_spec(f"{__name__}.{m}") is not None}


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def version_line() -> str:
    """``conformer-vision X.Y.Z (torch A.B.C)``, from the installed distributions' metadata (the
    package's own ``__version__`` when it runs from a source tree that is not installed)."""
    try:
        ours = importlib.metadata.version("conformer-vision")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__ as ours
    try:
        torch = f" (torch {importlib.metadata.version('torch')})"
    except importlib.metadata.PackageNotFoundError:
        torch = ""
    return f"conformer-vision {ours}{torch}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conformer ARGV`` and return its exit code: 0 done, 2 a user error (one line on stderr,
    no traceback), 130 interrupted by Ctrl-C, or the command's own code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except ConformerError as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except _UsageError as e:
        print(f"error: {e} (see '{e.prog} --help')", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while torch loads, parsers are built, a model is read, ...
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    commands = _available()
    if not argv or argv[0] not in commands:
        return _top_level(argv, commands)
    command = argv[0]
    module = importlib.import_module(f"{__name__}.{commands[command]}")
    parser = _Parser(prog=f"conformer {command}", description=module.HELP)
    module.add_arguments(parser)
    args = _parse(parser, argv[1:])
    _setup_logging()
    return int(module.run(args) or 0)


def _top_level(argv: list[str], commands: dict[str, str]) -> int:
    """``conformer`` alone (the usage, exit 2), ``--help``, ``--version`` or an unknown command."""
    parser = _Parser(prog="conformer", description="Conformer image classifiers.")
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=version_line(),
        help="print the version of conformer-vision and torch, then exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in commands.items():
        sub.add_parser(name, help=importlib.import_module(f"{__name__}.{module}").HELP)
    if not argv:
        parser.print_help(sys.stderr)
        print("\nerror: a command is required", file=sys.stderr)
        return EXIT_USAGE
    _parse(parser, argv)  # exits for --help / --version; anything else here is an error
    raise _UsageError(parser.prog, "a command is required")


def _parse(parser: argparse.ArgumentParser, tokens: list[str]) -> argparse.Namespace:
    """Parse ``tokens``; an option no argument of ``parser`` takes is a :class:`ConfigError` with a
    "did you mean", also when argparse stumbled over something else first (a misspelt required
    ``--checkpoint`` makes argparse report the real one missing)."""
    try:
        args, leftover = parser.parse_known_args(tokens)
    except _UsageError:
        _reject_unknown_options(parser, tokens)
        raise
    if leftover:
        _reject_unknown_options(parser, leftover)
        raise _UsageError(parser.prog, f"unexpected argument(s): {' '.join(leftover)}")
    return args


def _reject_unknown_options(parser: argparse.ArgumentParser, tokens: list[str]) -> None:
    """Raise the "unknown option ... did you mean" error for the option-like tokens of ``tokens``
    that no argument of ``parser`` takes; return when there are none."""
    from ..config import unknown_options_error  # no torch: config imports it lazily

    known: dict[str, bool] = {}  # option name without dashes -> shown in --help
    for action in parser._actions:  # argparse has no public accessor for a parser's options
        for option in action.option_strings:
            known[option.lstrip("-")] = action.help != argparse.SUPPRESS
    unknown = []
    for token in tokens:
        name = token.split("=", 1)[0]
        if name.startswith("-") and name.strip("-") and not _is_number(name) and name.lstrip("-") not in known:
            unknown.append(name.lstrip("-"))
    if not unknown:
        return
    valid = [n.replace("-", "_") for n in known]
    listing = ", ".join(f"--{n}" for n, shown in known.items() if shown and len(n) > 1 and n != "help")
    unknown = list(dict.fromkeys(unknown))
    raise unknown_options_error(
        unknown,
        dict.fromkeys(unknown, "command line"),
        valid,
        header=f"unknown option(s) of {parser.prog}:",
        listing=f"{listing} (see '{parser.prog} --help')",
    )


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def exit_if_interrupted_command() -> None:
    """Called when Ctrl-C interrupts the import of the package (torch loads for seconds): when this
    process is the ``conformer`` command (the console script or ``python -m conformer_vision``),
    print ``interrupted`` and exit 130 instead of the KeyboardInterrupt traceback; otherwise
    return (an importing program gets the KeyboardInterrupt as usual)."""
    orig = list(getattr(sys, "orig_argv", []))
    as_module = "-m" in orig[:-1] and orig[orig.index("-m") + 1] == "conformer_vision"
    if as_module or Path(sys.argv[0]).name == "conformer":
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED)


def _message(error: ConformerError) -> str:
    """The error's message. A DataLoader worker's error reaches the main process re-raised with the
    worker's traceback as its text ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."): only the original message after that traceback is shown."""
    text = str(error)
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    if "Original Traceback (most recent call last):" in text and prefix in text:
        return text.rsplit(prefix, 1)[1].strip()
    return text
