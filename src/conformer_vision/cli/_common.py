"""Checks shared by the commands that read a model file (``eval``, ``eval-onnx``, ``predict``, ``export``).

Not a command (``cli.COMMANDS`` does not list it). Three things every such command does alike:

* counts (``--batch_size``, ``--workers``, ``--topk``, ``--prefetch``) are checked before any work,
  so ``--workers -1`` is one line, not a traceback from the DataLoader;
* where an option came from decides what a contradiction with the model file means
  (``request_levels``): given on the command line, a value the file cannot meet is an error; set by
  the config file (the run's recipe, e.g. the specification's ``conformer_tiny.yaml``), it is
  warned about and the file's value is used; a default is not a request at all;
* preprocessing options (``image_size``, ``interpolation``, ``crop_pct``) given on the command line
  are honoured (evaluating at another resolution is normal); the config file's apply to a model file
  that records no preprocessing, and are warned about when they differ from what it records.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger("conformer_vision.cli")

MODEL_KEYS = ("arch", "num_classes")
PREPROCESS_KEYS = {"image_size": "input_size", "interpolation": "interpolation", "crop_pct": "crop_pct"}
"""Config option -> ``Preprocess`` field."""


def check_counts(**counts: tuple[int | None, int]) -> None:
    """``name=(value, minimum)`` for each count option; ConfigError for the first value below its
    minimum (None = not given). Names are the options' (``workers`` -> ``--workers``)."""
    for name, (value, minimum) in counts.items():
        if value is not None and value < minimum:
            meaning = " (0 = in this process)" if minimum == 0 else ""
            raise ConfigError(f"--{name} must be >= {minimum}{meaning}, got {value}")


def add_amp_argument(parser: argparse.ArgumentParser, *spellings: str, dest: str = "amp_level", note: str = "") -> None:
    """``--amp_level`` (and the command's older ``spellings``, e.g. predict's ``--amp``): the one
    vocabulary of ``precision.AMP_LEVELS`` in every command, stored in its canonical spelling; an
    unknown name is a one-line ConfigError (exit 2) with the valid ones."""
    from ..precision import AMP_HELP, amp_level

    parser.add_argument(
        "--amp_level", *spellings, dest=dest, type=amp_level, default="O0", metavar="LEVEL", help=AMP_HELP + note
    )


def config_file_keys(path: str | None) -> set[str]:
    """The options the YAML file at ``path`` sets (None: no file). The file has already been read
    and validated by ``config_from_args``; aliases (``lr``) are mapped to their option (``base_lr``)."""
    if not path:
        return set()
    from ..config import OPTION_ALIASES, read_yaml

    data, _ = read_yaml(path)
    return {OPTION_ALIASES.get(str(k), str(k)) for k in data}


def request_levels(
    given: Iterable[str], in_file: set[str], config_path: str | None, keys: Iterable[str] = MODEL_KEYS
) -> tuple[dict[str, str], dict[str, str]]:
    """(contradiction level, source) per key for ``checkpoint.load_model`` / ``runtime.open_predictor``:
    "error" when given on the command line, "warn" when the config file sets it, else "ignore"."""
    given = set(given)
    levels: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in keys:
        if key in given:
            levels[key], sources[key] = "error", "command line"
        elif key in in_file:
            levels[key], sources[key] = "warn", f"config file {config_path}"
        else:
            levels[key], sources[key] = "ignore", "default"
    return levels, sources


def resolve_preprocess(
    cfg: Any,
    given: Iterable[str],
    in_file: set[str],
    config_path: str | None,
    recorded: Any | None,
    fallback: Any,
    model_file: str | Path,
) -> tuple[Any, str]:
    """The ``Preprocess`` to run a model with, and where its input size came from.

    ``recorded`` is what the model file records (None: nothing), ``fallback`` what is used then (the
    variant's defaults). Command-line options always apply. With a config file, a model file that
    records nothing takes all three options from the config (its defaults included, as training
    would have used them); one that records them keeps its own, with a warning for each value the
    config file sets differently.
    """
    given = set(given)
    values = {"input_size": tuple(cfg.image_hw), "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct}
    base = recorded if recorded is not None else fallback
    changes: dict[str, Any] = {}
    for key, field in PREPROCESS_KEYS.items():
        value = values[field]
        if key in given or (recorded is None and config_path):
            changes[field] = value
        elif key in in_file and value != getattr(recorded, field):
            log.warning(
                "%s %s (config file) differs from what %s records, %s: using the file's; pass --%s on the "
                "command line to override it",
                key,
                _show(value),
                model_file,
                _show(getattr(recorded, field)),
                key,
            )
    pre = dataclasses.replace(base, **changes)
    h, w = pre.input_size
    if "image_size" in given:
        origin = (
            f"--image_size; the model file records {_show(base.input_size)}"
            if recorded is not None
            else ("--image_size")
        )
    elif recorded is not None:
        origin = "recorded in the model file"
    elif config_path:
        origin = f"config file {config_path}"
    else:
        origin = "the variant's default"
    return pre, f"{h}x{w} ({origin})"


def _show(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)
