"""Output paths checked before any work starts.

Every command that writes (``train``'s run folders, ``export --output``, ``predict --output``,
``eval --output``) calls these first, so an impossible path (below a regular file, on a read-only or
pseudo file system such as ``/proc``, without permission) is one clear error before a model is
loaded or a run touched, instead of a traceback at the end. The check creates nothing that stays:
it writes and removes one hidden probe file in the nearest folder that already exists.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_output_dir", "check_output_file", "free_bytes", "nearest_existing"]


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor (absolute)."""
    current = Path(path).absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_output_dir(path: str | Path, what: str) -> Path:
    """Check that folder ``path`` exists or can be created, and that files can be written in it.

    ``what`` names the option in messages (e.g. ``"ckpt_root_dir"``). Returns ``path`` as a Path.
    Raises ConfigError saying what is in the way and what to do.
    """
    path = Path(path)
    _check_folder(path, f"{what} {path}", what)
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """Check that file ``path`` can be written: not a folder, its folder creatable and writable,
    and, when it exists, the file itself writable. Returns ``path`` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name inside it")
    _check_folder(path.parent, f"{what} {path}", what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path} exists and is not writable; choose another file or fix its permissions")
    return path


def free_bytes(path: str | Path) -> int | None:
    """Free space on the file system that holds ``path`` (or would hold it); None when unknown."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def _check_folder(folder: Path, label: str, what: str) -> None:
    """``folder`` exists or can be created (no regular file on the way) and is writable."""
    base = nearest_existing(folder)
    if not base.is_dir():
        raise ConfigError(f"{label} cannot be created: {base} is a file, not a folder; choose another {what}")
    _probe(base, label)


def _probe(folder: Path, label: str) -> None:
    """Create and remove a hidden file in ``folder``: the only reliable writability test (root
    passes ``os.access`` everywhere, and pseudo file systems refuse writes that access allows)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".conformer-write-check-", dir=folder)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{label} cannot be written ({reason} in {folder}); choose a writable location") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
