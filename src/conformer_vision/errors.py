"""Expected, user-facing errors.

Every error a user can cause (a bad config value, a broken checkpoint, unreadable data) is a
`ConformerError`. Entry points catch it and print `str(error)` alone, without a traceback, and exit
non-zero; anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ConformerError", "ConfigError", "CheckpointError", "DataError", "ImageDecodeError", "did_you_mean"]


class ConformerError(Exception):
    """Base of all expected errors; the message is complete and meant to be printed as is."""


class ConfigError(ConformerError):
    """An option is unknown, of the wrong type or out of range."""


class CheckpointError(ConformerError):
    """A checkpoint or weights file is missing, truncated, foreign or does not fit the model."""


class DataError(ConformerError):
    """The dataset on disk cannot be used as given (layout, classes, too many bad files...)."""


class ImageDecodeError(DataError):
    """One file could not be decoded to an RGB image.

    Attributes:
        path: the file at fault.
        reason: a short, human-readable cause ("file is empty (0 bytes)", ...).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # Keep the two-argument constructor usable when pickled across processes.
        return type(self), (self.path, self.reason)


def did_you_mean(word: object, candidates: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``, up to ``n``) for the candidates closest to
    ``word``, to append to an error message; ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), list(candidates), n=n)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
