"""The run directory of ``conformer train``: where a run's files go, the manifest of the files it
wrote, and the lock that keeps two processes out of one run.

Run directory
    The parent of ``ckpt_root_dir`` (``runs/x`` for ``runs/x/checkpoints``), unless that parent is
    the working directory or one of its ancestors (``--ckpt_root_dir ckpt``, ``.``): then
    ``ckpt_root_dir`` itself. A working directory holds the user's own files (their
    ``config.yaml``, notes, data), never a run's, so a run never writes its ``config.yaml`` or
    ``metrics.jsonl`` beside them.

Manifest (``<run_dir>/.conformer-run.json``)
    Every file the run wrote, wherever it lies: its copy of the config, the class list, the metrics,
    ``model.txt``, its rotating and best checkpoints and its TensorBoard event files. A run removes
    or overwrites only files listed there (checkpoint rotation, ``--overwrite true``, a restart): a
    user's file, or another run's checkpoint in a shared folder, is never taken for this run's. A
    file is listed before it is written and unlisted after it is removed, so the list is always a
    superset of the run's files on disk, also when the process is killed in between. Paths inside
    the run directory are stored relative to it (a copied or moved run directory keeps its files);
    paths outside it are absolute and trusted only while the manifest stays where it was written.

    ``{"format": "conformer-vision-run", "version": 1, "run_dir": str, "arch": str,
    "model_postfix": str, "prefix": str, "files": [str, ...]}`` (``prefix`` is
    ``<arch>_<model_postfix>``, the checkpoints' name prefix).

Lock (``<run_dir>/.conformer-run.lock``)
    Held (``flock``) by the process that writes the run, for as long as it runs: a second
    ``conformer train`` on the same run directory is refused instead of interleaving checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .serialization import write_text_atomic

__all__ = ["MANIFEST_NAME", "LOCK_NAME", "OwnedFiles", "RunManifest", "run_dir_for", "hold_run_lock"]

log = logging.getLogger("conformer_vision.train")

MANIFEST_NAME = ".conformer-run.json"
LOCK_NAME = ".conformer-run.lock"
FORMAT = "conformer-vision-run"
VERSION = 1


def absolute(path: str | Path) -> Path:
    """``path`` made absolute and normalised (``..`` folded), without resolving symbolic links."""
    return Path(os.path.abspath(path))


def run_dir_for(ckpt_root_dir: str | Path, cwd: str | Path | None = None) -> Path:
    """The run directory of a run whose checkpoints go to ``ckpt_root_dir`` (module docstring)."""
    here = absolute(cwd if cwd is not None else Path.cwd())
    ckpt = absolute(here / ckpt_root_dir)
    if ckpt.parent == here or ckpt.parent in here.parents:
        return ckpt
    return ckpt.parent


class OwnedFiles:
    """The set of files a run wrote (absolute paths), kept in memory only: what a
    ``CheckpointManager`` used as a library, or on a rank that writes nothing, may rotate away."""

    def __init__(self, files: Iterable[str | Path] = ()) -> None:
        self._files: set[Path] = {absolute(p) for p in files}

    def owns(self, path: str | Path) -> bool:
        return absolute(path) in self._files

    def add(self, path: str | Path) -> None:
        """List ``path`` (before it is written)."""
        self._files.add(absolute(path))

    def discard(self, path: str | Path) -> None:
        """Unlist ``path`` (after it is removed)."""
        self._files.discard(absolute(path))

    def files(self) -> list[Path]:
        """Every listed path, sorted (some may be gone: a write that failed, a user's deletion)."""
        return sorted(self._files)

    def existing(self) -> list[Path]:
        """The listed files that exist."""
        return [p for p in self.files() if p.is_file()]

    def existing_checkpoints(self) -> list[Path]:
        """The listed checkpoint files (``.pt``) that exist."""
        return [p for p in self.existing() if p.suffix == ".pt"]


class RunManifest(OwnedFiles):
    """The manifest of a run directory (module docstring); every change is written at once."""

    def __init__(
        self, run_dir: str | Path, arch: str, model_postfix: str, files: Iterable[str | Path] = (), *, save: bool = True
    ) -> None:
        super().__init__(files)
        self.run_dir = absolute(run_dir)
        self.arch, self.model_postfix = arch, str(model_postfix)
        self.path = self.run_dir / MANIFEST_NAME
        if save:
            self.save()

    @classmethod
    def read(cls, run_dir: str | Path) -> RunManifest | None:
        """The manifest in ``run_dir``; None when there is none. Raises ConfigError for a file that
        is not a manifest (nothing is removed on its say-so)."""
        run_dir = absolute(run_dir)
        path = run_dir / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"no 'format': {FORMAT!r}")
            arch, postfix = str(data["arch"]), str(data["model_postfix"])
            entries, written_in = [str(f) for f in data["files"]], str(data["run_dir"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{path} is not a readable run manifest ({e}); it lists the files a run may remove, so "
                "nothing is done without it: restore it, or choose another ckpt_root_dir"
            ) from None
        moved = absolute(written_in) != run_dir
        files = []
        for entry in entries:
            if not Path(entry).is_absolute():
                files.append(run_dir / entry)
            elif not moved:
                files.append(Path(entry))
            else:  # a copied run directory: absolute paths still name the original run's files
                log.info(
                    "%s was written in %s: %s (outside the run directory) is not taken as this run's",
                    path,
                    written_in,
                    entry,
                )
        return cls(run_dir, arch, postfix, files, save=False)

    @property
    def prefix(self) -> str:
        """``<arch>_<model_postfix>``: how the run's checkpoint names begin."""
        return f"{self.arch}_{self.model_postfix}"

    def add(self, path: str | Path) -> None:
        if not self.owns(path):
            super().add(path)
            self.save()

    def discard(self, path: str | Path) -> None:
        if self.owns(path):
            super().discard(path)
            self.save()

    def save(self) -> None:
        """Write the manifest atomically (a crash leaves the previous version)."""
        entries = [str(p.relative_to(self.run_dir)) if p.is_relative_to(self.run_dir) else str(p) for p in self.files()]
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "run_dir": str(self.run_dir),
            "arch": self.arch,
            "model_postfix": self.model_postfix,
            "prefix": self.prefix,
            "files": entries,
        }
        write_text_atomic(self.path, json.dumps(data, indent=1) + "\n")


@contextlib.contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock while the block runs; ConfigError when another process holds it.
    The lock file stays (empty); the lock itself ends with the process, even a killed one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another conformer train process is writing the run in {run_dir} (it holds "
                f"{run_dir / LOCK_NAME}); wait for it to end, or choose another ckpt_root_dir"
            ) from None
        yield
    finally:
        os.close(fd)
