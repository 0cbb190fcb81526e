"""Files of tensors: safe reading and atomic writing (the bottom floor under checkpoint.py).

Reading is always ``torch.load(weights_only=True)`` (or safetensors): a file holding anything
but tensors and plain Python values is refused, never loaded with the unsafe unpickler.
Writing goes to a temporary file in the same folder, is fsync'ed, then renamed, so a crash or a
full disk never leaves a partial file under a final name.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["read_checkpoint", "atomic_save"]

log = logging.getLogger("conformer_vision.checkpoint")



def read_checkpoint(path: str | Path) -> Any:
    """Load a ``.pt/.pth/.ckpt`` (weights-only pickle) or ``.safetensors`` file onto the CPU.

    Raises CheckpointError with the path and what to do for: a missing path, a directory, an
    empty or truncated file, a file that is not a checkpoint, and a pickle holding code objects.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): truncated or not a checkpoint")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            raise CheckpointError(
                f"{p} was refused: it contains Python objects other than tensors and plain values, "
                "which could run code when loaded (it may be malicious). Only weights-only "
                "checkpoints are loaded; re-save the state dict with torch.save(model.state_dict()) "
                "in a trusted environment, or convert it to .safetensors."
            ) from None
        raise CheckpointError(f"{p} is truncated or not a checkpoint ({_first_line(e)})") from None
    except Exception as e:  # anything else a corrupt file makes the unpickler raise
        raise CheckpointError(f"{p} is truncated or not a checkpoint ({_first_line(e)})") from None


def _read_safetensors(p: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd: dict[str, Any] = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p} is truncated or not a safetensors file ({_first_line(e)})") from None
    return sd


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


TEMP_SUFFIX = ".tmp"


def partial_writes(folder: Path, name_glob: str) -> list[Path]:
    """The hidden temporary files ``atomic_save`` left in ``folder`` (``.<name>.XXXX.tmp``) for final
    names matching ``name_glob``: what a process killed in the middle of a write leaves behind."""
    return sorted(folder.glob(f".{name_glob}.*{TEMP_SUFFIX}")) if folder.is_dir() else []


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    On any failure (disk full included) the temp file is removed, ``path`` is untouched, and a
    CheckpointError names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write (disk full, quota, file-size limit) as a RuntimeError
        # from its zip writer ("unexpected pos ..."), not as the OSError underneath.
        if isinstance(e, (OSError, RuntimeError)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
            raise CheckpointError(
                f"could not write checkpoint {path}: {reason}; {_free_space(path.parent)} - is the disk full, "
                "or a quota or file-size limit reached? Nothing was replaced; free space and resume with "
                "--checkpoint auto") from None
        raise
    return path


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        return "free space unknown"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
