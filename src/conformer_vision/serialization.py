"""Files of tensors: safe reading, and atomic writing of every file the toolkit writes in place
(checkpoints, run manifests, metrics, JSON reports): the bottom floor under checkpoint.py.

Reading is always ``torch.load(weights_only=True)`` (or safetensors): a file holding anything
but tensors and plain Python values is refused, never loaded with the unsafe unpickler. The only
objects allowed beyond torch's own list are numpy's data types (scalars, dtypes, arrays: what
mmengine/mmpretrain files carry in their ``meta``), and only for the duration of the load.
A file that cannot be read is told apart before and after ``torch.load``: a damaged checkpoint
(truncated, corrupt), a file of another kind (text, YAML, an image, a plain pickle, a TorchScript
or other zip archive) and a file that references Python code, each with what to do.

Writing goes to a temporary file in the same folder, is fsync'ed, then renamed, so a crash or a
full disk never leaves a partial file under a final name. The file gets the usual permissions
(0666 minus the umask, like every other file the toolkit writes), not a temp file's 0600.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import pickletools
import re
import secrets
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError

__all__ = ["read_checkpoint", "atomic_save", "write_atomic", "write_text_atomic", "numpy_data_globals"]

log = logging.getLogger("conformer_vision.checkpoint")

# torch.save(..., _use_new_zipfile_serialization=False) starts with this number, pickled (LONG1).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Globals of a plain pickle that only rebuild data (as in torch's own weights-only allow-list).
_PLAIN_DATA_GLOBALS = {
    "collections.OrderedDict",
    "_codecs.encode",
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
    "builtins.bytearray",
    "builtins.slice",
    "builtins.range",
}
_SNIFF_BYTES = 4096
_TRUSTED_RESAVE = (
    "if you trust the file, load it with torch.load(weights_only=False) in a trusted environment and "
    "re-save its state dict with torch.save(state_dict, path), or convert it to .safetensors"
)


def numpy_data_globals() -> list[Any]:
    """numpy's data types as ``torch.serialization.safe_globals`` entries: the scalar and array
    re-constructors, ``ndarray``, ``dtype`` and every concrete dtype class, under both module names
    (``numpy.core`` of numpy 1 files, ``numpy._core`` of numpy 2). They only rebuild numbers and
    arrays (an object array's items go through the same allow-list), so they run no code."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency of torch's numpy bridge
        return []
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    entries: list[Any] = [np.ndarray, np.dtype]
    for fn in (multiarray.scalar, multiarray._reconstruct):
        entries += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    entries += list({type(np.dtype(code)) for code in np.typecodes["All"]})
    return entries


def _numpy_global_names() -> set[str]:
    """The dotted names ``numpy_data_globals`` allows (what a checkpoint's pickle refers to)."""
    names = set()
    for entry in numpy_data_globals():
        names.add(entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}")
    return names


def read_checkpoint(path: str | Path) -> Any:
    """Load a ``.pt/.pth/.ckpt`` (weights-only pickle, zip or legacy format) or ``.safetensors`` file
    onto the CPU.

    Raises CheckpointError with the path and what to do for: a missing path, a directory, an empty
    file, a damaged checkpoint ("is truncated or corrupt"), a file of another kind ("is not a
    checkpoint: it is ..."), and a file referencing Python objects other than tensors, plain values
    and numpy data ("was refused"; nothing in it is run).
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
    with open(p, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(_ZIP_MAGIC):
        _check_torch_zip(p)
    elif head[:1] == b"\x80" and not _is_legacy_checkpoint(p):
        _refuse_plain_pickle(p)
    elif head[:1] != b"\x80":
        raise CheckpointError(
            f"{p} is not a checkpoint: {_describe_foreign(p, head)}; pass a .pt/.pth file written "
            "by torch.save (or a .safetensors file)"
        )
    try:
        with torch.serialization.safe_globals(numpy_data_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the error below says it
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e) or "WeightsUnpickler" in str(e):
            raise CheckpointError(_refusal(p, _unsafe_globals(p, e), _weights_only_reason(e))) from None
        raise CheckpointError(_corrupt(p, e)) from None
    except Exception as e:  # anything else a damaged file makes the zip reader or unpickler raise
        raise CheckpointError(_corrupt(p, e)) from None


def _corrupt(p: Path, e: BaseException | str) -> str:
    detail = e if isinstance(e, str) else _first_line(e)
    return (
        f"{p} is truncated or corrupt: a PyTorch checkpoint whose content is incomplete or damaged ({detail}); "
        "copy it again from where it came from, or use another checkpoint"
    )


def _refusal(p: Path, names: list[str], reason: str | None) -> str:
    """Why a torch file was not loaded: the globals it references (code), or the weights-only
    loader's own reason when it references none."""
    opcode = re.fullmatch(r"Unsupported operand (\d+)", reason or "")
    if not names and opcode and chr(int(opcode.group(1))) in pickletools.code2op:
        name = pickletools.code2op[chr(int(opcode.group(1)))].name
        return (
            f"{p} could not be read: its pickle uses the opcode {name} (pickle protocol 4 or higher, e.g. "
            "torch.save(..., pickle_protocol=4)), which torch's weights-only loader does not support; "
            "nothing in it was run. If you trust the file, re-save it with torch.save's default protocol, or convert it to .safetensors"
        )
    what = f" ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})" if names else ""
    why = f" (torch's weights-only loader: {reason})" if reason and not names else ""
    return (
        f"{p} was refused: it contains Python objects other than tensors and plain values{what}{why}, which "
        "could run code when loaded (it may be malicious); nothing in it was run. Only weights-only checkpoints "
        f"are loaded: {_TRUSTED_RESAVE}"
    )


def _check_torch_zip(p: Path) -> None:
    """A zip file must be a readable torch.save archive (``<root>/data.pkl``); else CheckpointError
    saying whether it is damaged or another kind of archive (TorchScript, torch.export, other)."""
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(
            _corrupt(p, "its zip directory is missing or damaged: the end of the file was cut off or overwritten")
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(_corrupt(p, e)) from None
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        kind = (
            "a TorchScript model (torch.jit.save, e.g. conformer export --file_format TORCHSCRIPT): load it "
            "with torch.jit.load, or pass the checkpoint it was exported from"
        )
    elif any(n.endswith("/archive_format") for n in names):
        kind = (
            "a torch.export program (.pt2, e.g. conformer export --file_format EXPORTED_PROGRAM): load it "
            "with torch.export.load, or pass the checkpoint it was exported from"
        )
    elif len(roots) == 1 and f"{roots.pop()}/data.pkl" in names:
        return
    else:
        kind = f"a zip archive of {len(names)} file(s) without a PyTorch checkpoint inside (no data.pkl)"
    raise CheckpointError(f"{p} is not a checkpoint: it is {kind}")


def _pickle_ops(p: Path) -> Iterator[tuple[str, Any]]:
    """(opcode name, argument) of the first pickle in ``p``, read with ``pickletools`` (which only
    parses: nothing is constructed or run). Raises ValueError on bytes that are not a pickle."""
    with open(p, "rb") as f:
        for op, arg, _ in pickletools.genops(f):
            yield op.name, arg
            if op.name == "STOP":
                return


def _is_legacy_checkpoint(p: Path) -> bool:
    """True if ``p`` starts like torch.save's legacy (non-zip) format: a pickled magic number."""
    try:
        return any(name == "LONG1" and arg == _LEGACY_MAGIC for name, arg in _pickle_ops(p))
    except Exception:  # not even a complete first pickle: damaged (or random bytes)
        return False


def _pickle_globals(p: Path) -> list[str]:
    """Dotted names of the globals (classes, functions) the first pickle in ``p`` refers to;
    '<unresolved>' where a STACK_GLOBAL's names cannot be followed through the memo."""
    found: list[str] = []
    strings: list[str] = []  # strings pushed so far, in order (STACK_GLOBAL takes the last two)
    memo: dict[Any, Any] = {}
    last: Any = None  # the string the previous opcode pushed, if it pushed one
    for name, arg in _pickle_ops(p):
        pushed = None
        if name == "GLOBAL":
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            found.append(f"{strings[-2]}.{strings[-1]}" if len(strings) >= 2 else "<unresolved>")
        elif "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            pushed = str(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
            pushed = last
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = last
            pushed = last
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo.get(arg)
        if isinstance(pushed, str) and name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            strings.append(pushed)
        last = pushed
    return list(dict.fromkeys(found))


def _refuse_plain_pickle(p: Path) -> None:
    """A pickle that is not torch.save's: foreign data, or (with non-data globals) code. Always raises."""
    try:
        names = _pickle_globals(p)
    except Exception as e:
        raise CheckpointError(
            f"{p} is truncated or corrupt: a pickle that ends or breaks off early ({_first_line(e)}); "
            "copy it again from where it came from, or use another checkpoint"
        ) from None
    code = [n for n in names if n not in _PLAIN_DATA_GLOBALS and n not in _numpy_global_names()]
    if code:
        raise CheckpointError(_refusal(p, code, None))
    raise CheckpointError(
        f"{p} is not a checkpoint: it is a Python pickle of plain data (written by pickle.dump, not torch.save); "
        "if it holds weights, load it with pickle and re-save them with torch.save(state_dict, path)"
    )


def _unsafe_globals(p: Path, e: BaseException) -> list[str]:
    """The non-allowed globals a refused torch file refers to: listed from a zip archive without
    unpickling it, else read from the loader's message (legacy format)."""
    names: list[str] = []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception:  # legacy (non-zip) format or unreadable data.pkl
        names = re.findall(r"GLOBAL ([\w.]+)", str(e))
    allowed = _numpy_global_names()
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _weights_only_reason(e: BaseException) -> str | None:
    """The weights-only unpickler's own reason (e.g. 'Unsupported operand 149'), if it gave one."""
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
    return match.group(1).strip()[:200] if match else None


def _describe_foreign(p: Path, head: bytes) -> str:
    """What a file that is neither a zip nor a pickle seems to be: text (YAML?), an image, or unknown."""
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as e:
            text = head[: e.start].decode("utf-8") if e.start > len(head) - 4 else None
        if text is not None and text.strip():
            first = text.strip().splitlines()[0][:60]
            yaml = p.suffix in (".yaml", ".yml") or re.match(r"^[\w.-]+\s*:(\s|$)", first)
            return f"it is a {'YAML' if yaml else 'text'} file (first line {first!r})"
    image = _image_format(p)
    if image:
        return f"it is a {image} image"
    return (
        f"its bytes (starting {head[:8].hex(' ')}) are neither a PyTorch checkpoint (zip or pickle) nor a "
        "known kind of file: another kind of file, or damaged beyond recognition"
    )


def _image_format(p: Path) -> str | None:
    """Pillow's name for a common image format with a strong signature, else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as image:
            fmt = image.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return fmt if fmt in ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP", "MPO") else None


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


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(file)`` atomically: a hidden temporary file in the same folder
    (``.<name>.XXXX.tmp``, ``partial_writes``), fsync, rename, fsync the folder. Readers and a crash
    see the old content or the new one, never half of it. On any failure the temporary file is
    removed, ``path`` is untouched and the exception propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` through ``write_atomic``."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through ``write_atomic``.

    The file's permissions are 0666 minus the process umask (0644 under the usual 022), as for
    any file opened for writing. On any failure (disk full included) the temp file is removed,
    ``path`` is untouched, and a CheckpointError names the path.
    """
    path = Path(path)
    started = False  # torch.save began: a failure now is the write's, not the folder's

    def save(f: IO[bytes]) -> None:
        nonlocal started
        started = True
        torch.save(obj, f)

    try:
        return write_atomic(path, save)
    except (OSError, RuntimeError) as e:
        if not started and isinstance(e, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path}: {e.strerror or e}; check that {path.parent} is a writable folder"
            ) from None
        # torch.save reports a failed write (disk full, quota, file-size limit) as a RuntimeError
        # from its zip writer ("unexpected pos ..."), not as the OSError underneath.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}; {_free_space(path.parent)} - is the disk full, "
            "or a quota or file-size limit reached? Nothing was replaced; free space and resume with "
            "--checkpoint auto"
        ) from None


def _create_temp(path: Path) -> tuple[int, str]:
    """A new hidden file ``.<name>.<random>.tmp`` next to ``path``, opened for writing, created
    with mode 0666 so the kernel applies the umask (``tempfile.mkstemp`` would force 0600, and
    reading the umask to undo that is not thread-safe). Returns (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")  # pragma: no cover - 100 collisions of 32 bits


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
